//! BERT encoder (BERT, MiniLM) with LoRA-capable projections, in Hugging Face's key layout
//! (`bert.embeddings.*`, `bert.encoder.layer.N.attention.self.query`, …).
//! Port of transformers' `modeling_bert.py` (eager attention, absolute positions).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::attention_softmax::attention_probs;
use crate::lora::LoraLinear;
use crate::nn::{activation, Ctx, LayerNorm};

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "super::defaults::act")]
    pub hidden_act: String,
    #[serde(default = "super::defaults::dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "super::defaults::dropout")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default = "super::defaults::positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub classifier_dropout: Option<f32>,
    #[serde(default = "super::defaults::init")]
    pub initializer_range: f64,
}

fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

struct BertLayer {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    attention_output: LoraLinear,
    attention_norm: LayerNorm,
    intermediate: LoraLinear,
    output: LoraLinear,
    output_norm: LayerNorm,
}

pub struct Bert {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<BertLayer>,
    pub config: BertConfig,
}

impl Bert {
    /// Loads the encoder from `vb` rooted at the model's prefix (`bert`).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        if let Some(kind) = config.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            candle_core::bail!("position_embedding_type `{kind}` is not supported (only `absolute`)");
        }
        let h = config.hidden_size;
        let emb = vb.pp("embeddings");
        let embedding = |name: &str, n: usize| emb.pp(name).get((n, h), "weight");
        let layer = |i: usize| -> Result<BertLayer> {
            let vb = vb.pp(format!("encoder.layer.{i}"));
            let att = vb.pp("attention");
            Ok(BertLayer {
                query: LoraLinear::load(att.pp("self.query"), h, h, true)?,
                key: LoraLinear::load(att.pp("self.key"), h, h, true)?,
                value: LoraLinear::load(att.pp("self.value"), h, h, true)?,
                attention_output: LoraLinear::load(att.pp("output.dense"), h, h, true)?,
                attention_norm: LayerNorm::load(att.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
                intermediate: LoraLinear::load(vb.pp("intermediate.dense"), h, config.intermediate_size, true)?,
                output: LoraLinear::load(vb.pp("output.dense"), config.intermediate_size, h, true)?,
                output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
            })
        };
        Ok(Self {
            word_embeddings: embedding("word_embeddings", config.vocab_size)?,
            position_embeddings: embedding("position_embeddings", config.max_position_embeddings)?,
            token_type_embeddings: embedding("token_type_embeddings", config.type_vocab_size.max(1))?,
            embedding_norm: LayerNorm::load(emb.pp("LayerNorm"), h, config.layer_norm_eps)?,
            layers: (0..config.num_hidden_layers).map(layer).collect::<Result<_>>()?,
            config: config.clone(),
        })
    }

    pub fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                [&mut l.query, &mut l.key, &mut l.value, &mut l.attention_output, &mut l.intermediate, &mut l.output]
            })
            .collect()
    }

    pub fn lora_linears(&self) -> Vec<&LoraLinear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.query, &l.key, &l.value, &l.attention_output, &l.intermediate, &l.output])
            .collect()
    }

    /// The last hidden states `(batch, seq, hidden)`; `attention_mask` is 1 for tokens, 0 for padding.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let h = self.config.hidden_size;
        let lookup =
            |table: &Tensor, ids: &Tensor| table.index_select(&ids.flatten_all()?, 0)?.reshape((batch, seq, h));
        let positions = Tensor::arange(0u32, seq as u32, input_ids.device())?;
        let embeddings = lookup(&self.word_embeddings, input_ids)?
            .add(&lookup(&self.token_type_embeddings, token_type_ids)?)?
            .broadcast_add(&self.position_embeddings.index_select(&positions, 0)?)?;
        let mut hidden = ctx.dropout(&self.embedding_norm.forward(&embeddings)?, self.config.hidden_dropout_prob)?;
        // (batch, 1, 1, seq): which keys each query may attend to.
        let keep = attention_mask.to_dtype(DType::U8)?.reshape((batch, 1, 1, seq))?;
        for layer in &self.layers {
            hidden = self.layer_forward(layer, &hidden, &keep, ctx)?;
        }
        Ok(hidden)
    }

    fn layer_forward(&self, layer: &BertLayer, x: &Tensor, keep: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (batch, seq, h) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let head_dim = h / heads;
        let split = |t: Tensor| t.reshape((batch, seq, heads, head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(layer.query.forward(x, ctx)?)?;
        let k = split(layer.key.forward(x, ctx)?)?;
        let v = split(layer.value.forward(x, ctx)?)?;
        let scores = q.matmul(&k.t()?)?;
        let scale = (head_dim as f64).sqrt();
        let probs = attention_probs(&scores, keep, scale, self.config.attention_probs_dropout_prob, ctx)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq, h))?;
        let attended = ctx.dropout(&layer.attention_output.forward(&context, ctx)?, self.config.hidden_dropout_prob)?;
        let attended = layer.attention_norm.forward(&(attended + x)?)?;
        let inner = activation(&self.config.hidden_act, &layer.intermediate.forward(&attended, ctx)?)?;
        let out = ctx.dropout(&layer.output.forward(&inner, ctx)?, self.config.hidden_dropout_prob)?;
        layer.output_norm.forward(&(out + attended)?)
    }
}

/// Scores where `keep` is 0 become the dtype's lowest value, as transformers masks attention.
pub fn masked_fill_min(scores: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let keep = keep.broadcast_as(scores.shape())?;
    let min = Tensor::new(f32::MIN, scores.device())?.to_dtype(scores.dtype())?.broadcast_as(scores.shape())?;
    keep.where_cond(scores, &min)
}
