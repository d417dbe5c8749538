//! The forward pass: rewards, pooled vectors and classifier logits for an encoded batch, with one
//! adapter for the batch or one per row; and scoring and classifying in length-sorted batches.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::RewardModel;
use crate::backbone::Batch;
use crate::data::order::{input_order, restore, text_order};
use crate::heads::RewardHead;
use crate::nn::{Adapters, Ctx};

impl RewardModel {
    /// Rewards `(batch,)` for an encoded batch; the adapters in `ctx` pick the encoder adapters and heads.
    pub fn forward(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        self.per_head(batch, ctx, |head, hidden, ctx| Ok(head.forward(hidden, ctx)?))
    }

    /// The pooled vectors `(batch, pooler size)` the heads read, each row from its adapter's head.
    pub fn pooled(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        self.per_head(batch, ctx, |head, hidden, ctx| Ok(head.pooled(hidden, ctx)?))
    }

    /// `apply` of each row's head (the adapter's, or the model's own) to the encoder's output, the
    /// adapters in `ctx` picking the encoder adapters and heads.
    fn per_head(
        &self,
        batch: &Batch,
        ctx: &Ctx,
        apply: impl Fn(&RewardHead, &Tensor, &Ctx) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let known = |name: &String| -> Result<()> {
            if !self.adapters.contains_key(name) {
                bail!("no adapter named `{name}` (have: {})", self.adapter_names().join(", "));
            }
            Ok(())
        };
        match ctx.adapters() {
            Adapters::None => {
                self.base_head()?;
            }
            Adapters::One(name) => known(name)?,
            Adapters::PerRow(names) => {
                for name in names {
                    match name {
                        Some(name) => known(name)?,
                        None => {
                            self.base_head()?;
                        }
                    }
                }
            }
        }
        if let Adapters::PerRow(names) = ctx.adapters() {
            return self.forward_grouped(batch, names, ctx, apply);
        }
        let token = self.token_states(batch, ctx)?;
        match ctx.adapters() {
            Adapters::One(name) => apply(&self.adapters[name].head, &token, ctx),
            Adapters::None | Adapters::PerRow(_) => apply(&self.head, &token, ctx),
        }
    }

    /// `apply` with an adapter (or none) per row. The rows are grouped by adapter first (a stable sort),
    /// so every layer applies each adapter once, to one run of rows, and each run's head reads its
    /// rows; the outputs go back to the batch's order.
    fn forward_grouped(
        &self,
        batch: &Batch,
        names: &[Option<String>],
        ctx: &Ctx,
        apply: impl Fn(&RewardHead, &Tensor, &Ctx) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        let index = Tensor::from_vec(order.iter().map(|&i| i as u32).collect::<Vec<_>>(), order.len(), &self.device)?;
        let grouped = Batch {
            input_ids: batch.input_ids.index_select(&index, 0)?,
            token_type_ids: batch.token_type_ids.index_select(&index, 0)?,
            attention_mask: batch.attention_mask.index_select(&index, 0)?,
            truncated: batch.truncated,
        };
        let sorted_names: Vec<Option<String>> = order.iter().map(|&i| names[i].clone()).collect();
        let sorted = ctx.fork(Adapters::PerRow(sorted_names));
        let token = self.token_states(&grouped, &sorted)?;
        let mut outputs = Vec::new();
        for run in sorted.runs() {
            let head = match &run.adapter {
                Some(name) => &self.adapter(name)?.head,
                None => self.base_head()?,
            };
            outputs.push(apply(head, &token.narrow(0, run.start, run.len)?, &sorted)?);
        }
        ctx.set_rng_state(sorted.rng_state());
        let outputs = Tensor::cat(&outputs, 0)?;
        let mut back = vec![0u32; order.len()];
        for (position, &row) in order.iter().enumerate() {
            back[row] = position as u32;
        }
        Ok(outputs.index_select(&Tensor::from_vec(back, order.len(), &self.device)?, 0)?)
    }

    /// Classifier logits `(batch, labels)` for prompt-only batches: from the model's own head, or with
    /// one adapter in `ctx`, from that adapter and its head (a router adapter).
    pub fn logits(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let head = match ctx.adapters() {
            Adapters::None => self.base_head()?,
            Adapters::One(name) => &self.adapter(name)?.head,
            Adapters::PerRow(_) => bail!("classifier logits take one adapter for the whole batch"),
        };
        Ok(head.logits(&self.token_states(batch, ctx)?, ctx)?)
    }

    /// The most likely label of each prompt, in batches of `batch_size`, in evaluation mode, from the
    /// model's own head or from the classifier adapter `adapters` names.
    /// Batches are cut shortest first ([`crate::data::order`]); the labels come back in input order.
    pub fn classify(&self, prompts: &[&str], batch_size: usize, adapters: &Adapters) -> Result<Vec<usize>> {
        adapters.check_rows(prompts.len())?;
        let order = text_order(prompts);
        let mut sorted = Vec::with_capacity(prompts.len());
        for chunk in order.chunks(batch_size.max(1)) {
            let texts: Vec<&str> = chunk.iter().map(|&i| prompts[i]).collect();
            let ctx = Ctx::eval().with_adapters(adapters.of_rows(chunk)?);
            let logits = self.logits(&self.encode_prompts(&texts)?, &ctx)?;
            sorted.extend(logits.argmax(1)?.to_vec1::<u32>()?.into_iter().map(|i| i as usize));
        }
        Ok(restore(&sorted, &order)?)
    }

    /// Rewards for `(prompt, response)` pairs in batches of `batch_size`, in evaluation mode. Batches
    /// are cut shortest first ([`crate::data::order`]); the rewards come back in input order.
    pub fn score(&self, pairs: &[(&str, &str)], batch_size: usize, adapters: &Adapters) -> Result<Vec<f32>> {
        adapters.check_rows(pairs.len())?;
        let order = input_order(pairs);
        let mut sorted = Vec::with_capacity(pairs.len());
        for chunk in order.chunks(batch_size.max(1)) {
            let inputs: Vec<(&str, &str)> = chunk.iter().map(|&i| pairs[i]).collect();
            let ctx = Ctx::eval().with_adapters(adapters.of_rows(chunk)?);
            sorted.extend(self.forward(&self.encode(&inputs)?, &ctx)?.to_vec1::<f32>()?);
        }
        Ok(restore(&sorted, &order)?)
    }

    /// The encoder's output for a batch, `(batch, seq, hidden)`.
    pub fn hidden(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        Ok(self.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, ctx)?)
    }

    /// The hidden state of the token the heads read in each row, `(batch, hidden)`: the first token of
    /// an encoder, the last real token of a decoder ([`crate::backbone::ReadAt`]).
    pub fn token_states(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        Ok(self.head_layout.read_at.read(&self.hidden(batch, ctx)?, &batch.attention_mask)?)
    }
}
