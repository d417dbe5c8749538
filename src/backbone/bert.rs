//! BERT encoder (BERT, MiniLM) with LoRA-capable projections, one struct per module of transformers'
//! `modeling_bert.py` (eager attention, absolute positions), so each struct's path is its key path:
//! `bert.embeddings.*`, `bert.encoder.layer.N.attention.self.query`, `….attention.output.dense`,
//! `….intermediate.dense`, `….output.dense`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::{Checkpoint, Encoder, EncoderConfig, Family, HeadLayout, PoolerLayout, ReadAt};
use crate::nn::attention::attention_probs;
use crate::nn::lora::LoraLinear;
use crate::nn::residual::{DenseActivation, DenseResidualNorm};
use crate::nn::{Ctx, LayerNorm};

/// The BERT family (`model_type: bert`).
pub const FAMILY: Family = Family {
    model_type: "bert",
    prefix: "bert",
    bare_modules: &["embeddings", "encoder", "pooler"],
    classifier_class: "BertForSequenceClassification",
    base_class: "BertModel",
    config: read_config,
};

fn read_config(checkpoint: &Checkpoint) -> anyhow::Result<Box<dyn EncoderConfig>> {
    let config: BertConfig = checkpoint.parse_config()?;
    let (h, heads) = (config.hidden_size, config.num_attention_heads);
    super::checkpoint::check_shape(h, heads, None, config.num_hidden_layers, config.vocab_size)
        .map_err(|e| checkpoint.config_error(e))?;
    Ok(Box::new(config))
}

impl EncoderConfig for BertConfig {
    fn head(&self) -> HeadLayout {
        HeadLayout {
            read_at: ReadAt::First,
            pooler: Some(PoolerLayout {
                key: "bert.pooler.dense".into(),
                in_dim: self.hidden_size,
                out_dim: self.hidden_size,
                activation: "tanh".into(),
                dropout: 0.0,
            }),
            classifier_key: "classifier".into(),
            classifier_in: self.hidden_size,
            classifier_bias: true,
            classifier_dropout: self.classifier_dropout.unwrap_or(self.hidden_dropout_prob),
            init_std: self.initializer_range,
            modules_to_save: vec!["classifier".into(), "pooler".into()],
        }
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.max_position_embeddings)
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(Bert::load(vb, self)?))
    }
}

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

/// `BertEmbeddings`: word, position and token-type embeddings, summed and normalised (RoBERTa's too,
/// with position ids of its own).
pub(super) struct BertEmbeddings {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    layer_norm: LayerNorm,
    dropout: f32,
}

impl BertEmbeddings {
    pub(super) fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let h = config.hidden_size;
        let embedding = |name: &str, n: usize| vb.pp(name).get((n, h), "weight");
        Ok(Self {
            word_embeddings: embedding("word_embeddings", config.vocab_size)?,
            position_embeddings: embedding("position_embeddings", config.max_position_embeddings)?,
            token_type_embeddings: embedding("token_type_embeddings", config.type_vocab_size.max(1))?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), h, config.layer_norm_eps)?,
            dropout: config.hidden_dropout_prob,
        })
    }

    /// With `position_ids` `(batch, seq)`, or `None` for positions 0, 1, … in every row.
    pub(super) fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        position_ids: Option<&Tensor>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let h = self.word_embeddings.dim(1)?;
        let lookup =
            |table: &Tensor, ids: &Tensor| table.index_select(&ids.flatten_all()?, 0)?.reshape((batch, seq, h));
        let summed =
            lookup(&self.word_embeddings, input_ids)?.add(&lookup(&self.token_type_embeddings, token_type_ids)?)?;
        let embeddings = match position_ids {
            Some(ids) => summed.add(&lookup(&self.position_embeddings, ids)?)?,
            None => {
                let positions = Tensor::arange(0u32, seq as u32, input_ids.device())?;
                summed.broadcast_add(&self.position_embeddings.index_select(&positions, 0)?)?
            }
        };
        ctx.dropout(&self.layer_norm.forward(&embeddings)?, self.dropout)
    }
}

/// `BertSelfAttention`: the query, key and value projections and scaled dot-product attention.
struct BertSelfAttention {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    heads: usize,
    dropout: f32,
}

impl BertSelfAttention {
    fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let h = config.hidden_size;
        Ok(Self {
            query: LoraLinear::load(vb.pp("query"), h, h, true)?,
            key: LoraLinear::load(vb.pp("key"), h, h, true)?,
            value: LoraLinear::load(vb.pp("value"), h, h, true)?,
            heads: config.num_attention_heads,
            dropout: config.attention_probs_dropout_prob,
        })
    }

    /// The attention's context `(batch, seq, hidden)`; `keep` is `(batch, 1, 1, seq)`.
    fn forward(&self, x: &Tensor, keep: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (batch, seq, h) = x.dims3()?;
        let head_dim = h / self.heads;
        let split = |t: Tensor| t.reshape((batch, seq, self.heads, head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(self.query.forward(x, ctx)?)?;
        let k = split(self.key.forward(x, ctx)?)?;
        let v = split(self.value.forward(x, ctx)?)?;
        let scores = q.matmul(&k.t()?)?;
        let scale = (head_dim as f64).sqrt();
        let probs = attention_probs(&scores, keep, scale, self.dropout, ctx)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq, h))
    }
}

/// `BertAttention`: self-attention and its output.
struct BertAttention {
    self_attention: BertSelfAttention,
    /// `…SelfOutput`.
    output: DenseResidualNorm,
}

/// `BertLayer`: attention, then the feed-forward network.
struct BertLayer {
    attention: BertAttention,
    intermediate: DenseActivation,
    output: DenseResidualNorm,
}

impl BertLayer {
    fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let (h, inter) = (config.hidden_size, config.intermediate_size);
        let (eps, dropout) = (config.layer_norm_eps, config.hidden_dropout_prob);
        let att = vb.pp("attention");
        Ok(Self {
            attention: BertAttention {
                self_attention: BertSelfAttention::load(att.pp("self"), config)?,
                output: DenseResidualNorm::load(att.pp("output"), h, h, eps, dropout)?,
            },
            intermediate: DenseActivation::load(vb.pp("intermediate"), h, inter, &config.hidden_act)?,
            output: DenseResidualNorm::load(vb.pp("output"), inter, h, eps, dropout)?,
        })
    }

    fn forward(&self, x: &Tensor, keep: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let context = self.attention.self_attention.forward(x, keep, ctx)?;
        let attended = self.attention.output.forward(&context, x, ctx)?;
        let inner = self.intermediate.forward(&attended, ctx)?;
        self.output.forward(&inner, &attended, ctx)
    }

    fn lora_linears(&self) -> [&LoraLinear; 6] {
        let a = &self.attention;
        [
            &a.self_attention.query,
            &a.self_attention.key,
            &a.self_attention.value,
            &a.output.dense,
            &self.intermediate.dense,
            &self.output.dense,
        ]
    }

    fn lora_linears_mut(&mut self) -> [&mut LoraLinear; 6] {
        let a = &mut self.attention;
        let s = &mut a.self_attention;
        [
            &mut s.query,
            &mut s.key,
            &mut s.value,
            &mut a.output.dense,
            &mut self.intermediate.dense,
            &mut self.output.dense,
        ]
    }
}

/// `BertEncoder`: the stack of layers (`encoder.layer.N`), shared by BERT and RoBERTa.
pub(super) struct BertLayers(Vec<BertLayer>);

impl BertLayers {
    /// Loads `config.num_hidden_layers` layers from `vb` rooted at the model's prefix.
    pub(super) fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<Result<_>>()?;
        Ok(Self(layers))
    }

    /// The last hidden states; `attention_mask` is `(batch, seq)`, 1 for tokens.
    pub(super) fn forward(&self, mut hidden: Tensor, attention_mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (batch, seq) = attention_mask.dims2()?;
        // (batch, 1, 1, seq): which keys each query may attend to.
        let keep = attention_mask.to_dtype(DType::U8)?.reshape((batch, 1, 1, seq))?;
        for layer in &self.0 {
            hidden = layer.forward(&hidden, &keep, ctx)?;
        }
        Ok(hidden)
    }

    pub(super) fn lora_linears(&self) -> Vec<&LoraLinear> {
        self.0.iter().flat_map(BertLayer::lora_linears).collect()
    }

    pub(super) fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        self.0.iter_mut().flat_map(BertLayer::lora_linears_mut).collect()
    }
}

/// `BertModel` without its pooler (the pooler belongs to the reward head).
pub struct Bert {
    embeddings: BertEmbeddings,
    layers: BertLayers,
    pub config: BertConfig,
}

impl Bert {
    /// Loads the encoder from `vb` rooted at the model's prefix (`bert`).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        check_absolute_positions(config)?;
        Ok(Self {
            embeddings: BertEmbeddings::load(vb.pp("embeddings"), config)?,
            layers: BertLayers::load(vb, config)?,
            config: config.clone(),
        })
    }
}

/// Refuses the relative position embeddings some BERT configs name (only `absolute` is implemented).
pub(super) fn check_absolute_positions(config: &BertConfig) -> Result<()> {
    if let Some(kind) = config.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
        candle_core::bail!("position_embedding_type `{kind}` is not supported (only `absolute`)");
    }
    Ok(())
}

impl Encoder for Bert {
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let hidden = self.embeddings.forward(input_ids, token_type_ids, None, ctx)?;
        self.layers.forward(hidden, attention_mask, ctx)
    }

    fn lora_linears(&self) -> Vec<&LoraLinear> {
        self.layers.lora_linears()
    }

    fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        self.layers.lora_linears_mut()
    }
}
