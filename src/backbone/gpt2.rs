//! GPT-2, the first decoder, one struct per module of transformers' `modeling_gpt2.py` (`GPT2Attention`,
//! `GPT2MLP`, `GPT2Block`, `GPT2Model`), so each struct's path is its key path: `transformer.wte`,
//! `transformer.h.N.attn.c_attn`, `….mlp.c_fc`, `transformer.ln_f`. Pre-norm blocks, learned absolute
//! positions, causal attention on the fused attention softmax (a mask per query), and `Conv1D` weights,
//! which the checkpoint stores `(in, out)` ([`LoraLinear::load_conv1d`]).
//!
//! A decoder reads its input left to right, so the reward is read at the last real token, found from
//! the attention mask ([`ReadAt::LastReal`]), and positions count real tokens from the mask: the same
//! reward with padding on either side and with any pad id.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::{Checkpoint, Encoder, EncoderConfig, Family, HeadLayout, ReadAt};
use crate::nn::attention::attention_probs;
use crate::nn::lora::LoraLinear;
use crate::nn::{activation, Ctx, LayerNorm};

/// The GPT-2 family (`model_type: gpt2`).
pub const FAMILY: Family = Family {
    model_type: "gpt2",
    prefix: "transformer",
    bare_modules: &["wte", "wpe", "h", "ln_f"],
    classifier_class: "GPT2ForSequenceClassification",
    base_class: "GPT2Model",
    config: read_config,
};

fn read_config(checkpoint: &Checkpoint) -> anyhow::Result<Box<dyn EncoderConfig>> {
    let config: Gpt2Config = checkpoint.parse_config()?;
    super::checkpoint::check_shape(config.n_embd, config.n_head, None, config.n_layer, config.vocab_size)
        .map_err(|e| checkpoint.config_error(e))?;
    if config.n_positions == 0 {
        return Err(checkpoint.config_error("`n_positions` must be positive"));
    }
    // transformers refuses batches of a GPT-2 without either; rmroute would pad with a guess that a saved
    // config then names, and Python would skip that token wherever it ends an input.
    let Some(pad) = config.pad_id() else {
        return Err(checkpoint.config_error(
            "neither `pad_token_id` nor `eos_token_id` is set: add `\"pad_token_id\"` (GPT-2's is its eos, 50256)",
        ));
    };
    if pad as usize >= config.vocab_size {
        return Err(checkpoint.config_error(format!(
            "the pad id {pad} (`pad_token_id`, else `eos_token_id`) is not below `vocab_size` {}",
            config.vocab_size
        )));
    }
    Ok(Box::new(config))
}

/// A GPT-2 `config.json` (transformers' `GPT2Config` defaults for keys left out).
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_positions")]
    pub n_positions: usize,
    #[serde(default = "default_embd")]
    pub n_embd: usize,
    #[serde(default = "default_layers")]
    pub n_layer: usize,
    #[serde(default = "default_layers")]
    pub n_head: usize,
    /// The MLP's inner size; `None` is `4 × n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "super::defaults::dropout")]
    pub resid_pdrop: f32,
    #[serde(default = "super::defaults::dropout")]
    pub embd_pdrop: f32,
    #[serde(default = "super::defaults::dropout")]
    pub attn_pdrop: f32,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "super::defaults::init")]
    pub initializer_range: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Scores also divided by the layer's number (1-based), as some GPT-2 variants train.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<u32>,
}

fn default_vocab() -> usize {
    50257
}
fn default_positions() -> usize {
    1024
}
fn default_embd() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_eos() -> Option<u32> {
    Some(50256)
}

impl Gpt2Config {
    /// transformers' rule: `pad_token_id`, else the eos token (GPT-2 has no pad token).
    fn pad_id(&self) -> Option<u32> {
        self.pad_token_id.or(self.eos_token_id)
    }

    fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

impl EncoderConfig for Gpt2Config {
    fn head(&self) -> HeadLayout {
        HeadLayout {
            read_at: ReadAt::LastReal,
            pooler: None,
            classifier_key: "score".into(),
            classifier_in: self.n_embd,
            classifier_bias: false,
            classifier_dropout: 0.0,
            init_std: self.initializer_range,
            modules_to_save: vec!["score".into()],
        }
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.n_positions)
    }

    fn hidden_size(&self) -> usize {
        self.n_embd
    }

    fn pad_token_id(&self) -> Option<u32> {
        self.pad_id()
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Encoder>> {
        // Checked before any tensor is read, so a config naming an unknown activation says so first.
        activation(&self.activation_function, &Tensor::zeros(1, DType::F32, vb.device())?)?;
        let h = self.n_embd;
        Ok(Box::new(Gpt2 {
            wte: vb.pp("wte").get((self.vocab_size, h), "weight")?,
            wpe: vb.pp("wpe").get((self.n_positions, h), "weight")?,
            blocks: (0..self.n_layer)
                .map(|i| Gpt2Block::load(vb.pp(format!("h.{i}")), self, i))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::load(vb.pp("ln_f"), h, self.layer_norm_epsilon)?,
            embd_pdrop: self.embd_pdrop,
        }))
    }
}

/// `GPT2Attention`: `c_attn` (query, key and value in one `Conv1D`), causal attention, `c_proj`.
struct Gpt2Attention {
    c_attn: LoraLinear,
    c_proj: LoraLinear,
    heads: usize,
    /// What the scores are divided by: √head_dim (when `scale_attn_weights`), times the layer's number
    /// (when `scale_attn_by_inverse_layer_idx`).
    scale: f64,
    attn_pdrop: f32,
    resid_pdrop: f32,
}

impl Gpt2Attention {
    fn load(vb: VarBuilder, config: &Gpt2Config, layer: usize) -> Result<Self> {
        let h = config.n_embd;
        let head_dim = h / config.n_head;
        let mut scale = if config.scale_attn_weights { (head_dim as f64).sqrt() } else { 1.0 };
        if config.scale_attn_by_inverse_layer_idx {
            scale *= (layer + 1) as f64;
        }
        Ok(Self {
            c_attn: LoraLinear::load_conv1d(vb.pp("c_attn"), h, 3 * h)?,
            c_proj: LoraLinear::load_conv1d(vb.pp("c_proj"), h, h)?,
            heads: config.n_head,
            scale,
            attn_pdrop: config.attn_pdrop,
            resid_pdrop: config.resid_pdrop,
        })
    }

    /// `keep` is `(batch, 1, seq, seq)`: the causal mask with padded keys removed.
    fn forward(&self, x: &Tensor, keep: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (batch, seq, h) = x.dims3()?;
        let head_dim = h / self.heads;
        let qkv = self.c_attn.forward(x, ctx)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * h, h)?.reshape((batch, seq, self.heads, head_dim))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = q.matmul(&k.t()?)?;
        let probs = attention_probs(&scores, keep, self.scale, self.attn_pdrop, ctx)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq, h))?;
        ctx.dropout(&self.c_proj.forward(&context, ctx)?, self.resid_pdrop)
    }
}

/// `GPT2MLP`: `c_fc`, the activation, `c_proj`.
struct Gpt2Mlp {
    c_fc: LoraLinear,
    c_proj: LoraLinear,
    activation: String,
    resid_pdrop: f32,
}

impl Gpt2Mlp {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let inner = activation(&self.activation, &self.c_fc.forward(x, ctx)?)?;
        ctx.dropout(&self.c_proj.forward(&inner, ctx)?, self.resid_pdrop)
    }
}

/// `GPT2Block`: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
struct Gpt2Block {
    ln_1: LayerNorm,
    attn: Gpt2Attention,
    ln_2: LayerNorm,
    mlp: Gpt2Mlp,
}

impl Gpt2Block {
    fn load(vb: VarBuilder, config: &Gpt2Config, layer: usize) -> Result<Self> {
        let (h, eps) = (config.n_embd, config.layer_norm_epsilon);
        let mlp = vb.pp("mlp");
        Ok(Self {
            ln_1: LayerNorm::load(vb.pp("ln_1"), h, eps)?,
            attn: Gpt2Attention::load(vb.pp("attn"), config, layer)?,
            ln_2: LayerNorm::load(vb.pp("ln_2"), h, eps)?,
            mlp: Gpt2Mlp {
                c_fc: LoraLinear::load_conv1d(mlp.pp("c_fc"), h, config.inner())?,
                c_proj: LoraLinear::load_conv1d(mlp.pp("c_proj"), config.inner(), h)?,
                activation: config.activation_function.clone(),
                resid_pdrop: config.resid_pdrop,
            },
        })
    }

    fn forward(&self, x: &Tensor, keep: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let x = (self.attn.forward(&self.ln_1.forward(x)?, keep, ctx)? + x)?;
        self.mlp.forward(&self.ln_2.forward(&x)?, ctx)? + x
    }

    fn lora_linears(&self) -> [&LoraLinear; 4] {
        [&self.attn.c_attn, &self.attn.c_proj, &self.mlp.c_fc, &self.mlp.c_proj]
    }

    fn lora_linears_mut(&mut self) -> [&mut LoraLinear; 4] {
        [&mut self.attn.c_attn, &mut self.attn.c_proj, &mut self.mlp.c_fc, &mut self.mlp.c_proj]
    }
}

/// `GPT2Model`: token and position embeddings, the blocks, the final layer norm.
struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    /// `h`.
    blocks: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    embd_pdrop: f32,
}

/// Position ids counting each row's real tokens from 0 (pads get 0), and the causal mask with padded
/// keys removed, `(batch, 1, seq, seq)`, from an attention mask `(batch, seq)` padded on either side.
fn positions_and_causal_mask(attention_mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let (batch, seq) = attention_mask.dims2()?;
    let mask = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let mut positions = Vec::with_capacity(batch * seq);
    let mut keep = vec![0u8; batch * seq * seq];
    for (b, row) in mask.iter().enumerate() {
        let mut count = 0u32;
        for &m in row {
            positions.push(if m != 0 { count } else { 0 });
            count += u32::from(m != 0);
        }
        for q in 0..seq {
            for k in 0..=q {
                keep[(b * seq + q) * seq + k] = u8::from(row[k] != 0);
            }
        }
    }
    let device = attention_mask.device();
    Ok((Tensor::from_vec(positions, (batch, seq), device)?, Tensor::from_vec(keep, (batch, 1, seq, seq), device)?))
}

impl Encoder for Gpt2 {
    fn forward(
        &self,
        input_ids: &Tensor,
        _token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let h = self.wte.dim(1)?;
        let (positions, keep) = positions_and_causal_mask(attention_mask)?;
        let lookup =
            |table: &Tensor, ids: &Tensor| table.index_select(&ids.flatten_all()?, 0)?.reshape((batch, seq, h));
        let embeddings = lookup(&self.wte, input_ids)?.add(&lookup(&self.wpe, &positions)?)?;
        let mut hidden = ctx.dropout(&embeddings, self.embd_pdrop)?;
        for block in &self.blocks {
            hidden = block.forward(&hidden, &keep, ctx)?;
        }
        self.ln_f.forward(&hidden)
    }

    fn lora_linears(&self) -> Vec<&LoraLinear> {
        self.blocks.iter().flat_map(Gpt2Block::lora_linears).collect()
    }

    fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        self.blocks.iter_mut().flat_map(Gpt2Block::lora_linears_mut).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_mask_follow_the_real_tokens_on_either_side() {
        let mask = Tensor::new(&[[1u32, 1, 1, 0], [0, 0, 1, 1]], &candle_core::Device::Cpu).unwrap();
        let (positions, keep) = positions_and_causal_mask(&mask).unwrap();
        assert_eq!(positions.to_vec2::<u32>().unwrap(), [[0, 1, 2, 0], [0, 0, 0, 1]]);
        let keep = keep.squeeze(1).unwrap().to_vec3::<u8>().unwrap();
        // Row 0: causal over the three real tokens; the pad key is never kept.
        assert_eq!(keep[0], [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]);
        // Row 1 (left padded): real queries see real keys up to themselves only.
        assert_eq!(keep[1], [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]);
    }
}
