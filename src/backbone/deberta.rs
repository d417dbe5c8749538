//! DeBERTa-v2/v3 encoder with LoRA-capable projections, one struct per module of transformers'
//! `modeling_deberta_v2.py` (`DebertaV2Embeddings`, `DisentangledSelfAttention`, `DebertaV2SelfOutput`,
//! `DebertaV2Intermediate`, `DebertaV2Output`, `DebertaV2Layer`, `DebertaV2Encoder`), so each struct's
//! path is its key path: `deberta.embeddings.*`, `deberta.encoder.layer.N.attention.self.query_proj`,
//! `deberta.encoder.rel_embeddings`. Disentangled attention (c2p, p2c), log-bucketed relative
//! positions, `share_att_key`, `norm_rel_ebd`, `position_biased_input` and `embed_proj`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Deserializer};

use super::{Checkpoint, Encoder, EncoderConfig, Family, HeadLayout, PoolerLayout, ReadAt};
use crate::nn::attention::attention_probs;
use crate::nn::lora::LoraLinear;
use crate::nn::residual::{DenseActivation, DenseResidualNorm};
use crate::nn::{Adapters, Ctx, LayerNorm};
use crate::ops::relative_scores::{add_relative_scores, RelativeIndex, Side};

/// The DeBERTa-v2/v3 family (`model_type: deberta-v2`).
pub const FAMILY: Family = Family {
    model_type: "deberta-v2",
    prefix: "deberta",
    bare_modules: &["embeddings", "encoder"],
    classifier_class: "DebertaV2ForSequenceClassification",
    base_class: "DebertaV2Model",
    config: read_config,
};

fn read_config(checkpoint: &Checkpoint) -> anyhow::Result<Box<dyn EncoderConfig>> {
    let config: DebertaConfig = checkpoint.parse_config()?;
    let (h, heads) = (config.hidden_size, config.num_attention_heads);
    super::checkpoint::check_shape(h, heads, config.attention_head_size, config.num_hidden_layers, config.vocab_size)
        .map_err(|e| checkpoint.config_error(e))?;
    Ok(Box::new(config))
}

impl EncoderConfig for DebertaConfig {
    fn head(&self) -> HeadLayout {
        HeadLayout {
            read_at: ReadAt::First,
            pooler: Some(PoolerLayout {
                key: "pooler.dense".into(),
                in_dim: self.hidden_size,
                out_dim: self.pooler_size(),
                activation: self.pooler_hidden_act.clone(),
                dropout: self.pooler_dropout,
            }),
            classifier_key: "classifier".into(),
            classifier_in: self.pooler_size(),
            classifier_bias: true,
            classifier_dropout: self.cls_dropout.unwrap_or(self.hidden_dropout_prob),
            init_std: self.initializer_range,
            modules_to_save: vec!["classifier".into(), "pooler".into()],
        }
    }

    fn max_positions(&self) -> Option<usize> {
        // Relative positions are clamped to the span (or bucketed), so only an absolute table limits.
        self.position_biased_input.then_some(self.max_position_embeddings)
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(Deberta::load(vb, self)?))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DebertaConfig {
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
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    #[serde(default = "minus_one")]
    pub position_buckets: i64,
    #[serde(default = "default_true")]
    pub position_biased_input: bool,
    #[serde(default, deserialize_with = "pos_att_type")]
    pub pos_att_type: Vec<String>,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default)]
    pub norm_rel_ebd: Option<String>,
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    #[serde(default = "super::defaults::act")]
    pub pooler_hidden_act: String,
    #[serde(default)]
    pub pooler_dropout: f32,
    #[serde(default)]
    pub cls_dropout: Option<f32>,
    #[serde(default = "super::defaults::init")]
    pub initializer_range: f64,
}

fn default_eps() -> f64 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn default_true() -> bool {
    true
}

/// `pos_att_type` is `"p2c|c2p"` in old configs and `["p2c", "c2p"]` in new ones.
fn pos_att_type<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        List(Vec<String>),
        Null(()),
    }
    Ok(match Either::deserialize(d)? {
        Either::Text(s) => s.split('|').map(|p| p.trim().to_lowercase()).filter(|p| !p.is_empty()).collect(),
        Either::List(l) => l.into_iter().map(|p| p.to_lowercase()).collect(),
        Either::Null(()) => vec![],
    })
}

impl DebertaConfig {
    fn head_size(&self) -> usize {
        self.attention_head_size.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    fn max_relative_positions(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings as i64
        } else {
            self.max_relative_positions
        }
    }

    /// Half the number of relative-position embeddings (`att_span` in transformers).
    fn att_span(&self) -> i64 {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative_positions()
        }
    }

    fn c2p(&self) -> bool {
        self.pos_att_type.iter().any(|p| p == "c2p")
    }

    fn p2c(&self) -> bool {
        self.pos_att_type.iter().any(|p| p == "p2c")
    }

    pub fn pooler_size(&self) -> usize {
        self.pooler_hidden_size.unwrap_or(self.hidden_size)
    }
}

/// `DebertaV2Embeddings`: word (and, where configured, position and token-type) embeddings, the
/// projection to the hidden size, layer norm, the padding mask, dropout.
struct DebertaEmbeddings {
    word_embeddings: Tensor,
    position_embeddings: Option<Tensor>,
    token_type_embeddings: Option<Tensor>,
    embed_proj: Option<LoraLinear>,
    layer_norm: LayerNorm,
    dropout: f32,
}

impl DebertaEmbeddings {
    fn load(vb: VarBuilder, config: &DebertaConfig) -> Result<Self> {
        let h = config.hidden_size;
        let e = config.embedding_size.unwrap_or(h);
        Ok(Self {
            word_embeddings: vb.pp("word_embeddings").get((config.vocab_size, e), "weight")?,
            position_embeddings: if config.position_biased_input {
                Some(vb.pp("position_embeddings").get((config.max_position_embeddings, e), "weight")?)
            } else {
                None
            },
            token_type_embeddings: if config.type_vocab_size > 0 {
                Some(vb.pp("token_type_embeddings").get((config.type_vocab_size, e), "weight")?)
            } else {
                None
            },
            embed_proj: if e != h { Some(LoraLinear::load(vb.pp("embed_proj"), e, h, false)?) } else { None },
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), h, config.layer_norm_eps)?,
            dropout: config.hidden_dropout_prob,
        })
    }

    /// `mask` is the attention mask as f32 `(batch, seq)`: padding positions come out as zeros.
    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let e = self.word_embeddings.dim(1)?;
        let lookup =
            |table: &Tensor, ids: &Tensor| table.index_select(&ids.flatten_all()?, 0)?.reshape((batch, seq, e));
        let mut embeddings = lookup(&self.word_embeddings, input_ids)?;
        if let Some(table) = &self.position_embeddings {
            let positions = Tensor::arange(0u32, seq as u32, input_ids.device())?;
            embeddings = embeddings.broadcast_add(&table.index_select(&positions, 0)?)?;
        }
        if let Some(table) = &self.token_type_embeddings {
            embeddings = (embeddings + lookup(table, token_type_ids)?)?;
        }
        if let Some(proj) = &self.embed_proj {
            embeddings = proj.forward(&embeddings, ctx)?;
        }
        let embeddings = self.layer_norm.forward(&embeddings)?;
        let embeddings = embeddings.broadcast_mul(&mask.unsqueeze(2)?.to_dtype(embeddings.dtype())?)?;
        ctx.dropout(&embeddings, self.dropout)
    }
}

/// The relative-position embeddings (normalised where configured) and the c2p/p2c gather indices of a
/// batch's sequence length, shared by every layer.
struct RelativePositions {
    table: Tensor,
    c2p: RelativeIndex,
    p2c: RelativeIndex,
}

/// `DisentangledSelfAttention`: content-to-content attention plus the relative-position terms (c2p,
/// p2c) through the same or separate position projections.
struct DisentangledSelfAttention {
    query_proj: LoraLinear,
    key_proj: LoraLinear,
    value_proj: LoraLinear,
    /// Separate position projections, only when `share_att_key` is false.
    pos_key_proj: Option<LoraLinear>,
    pos_query_proj: Option<LoraLinear>,
    config: DebertaConfig,
}

impl DisentangledSelfAttention {
    fn load(vb: VarBuilder, config: &DebertaConfig) -> Result<Self> {
        let h = config.hidden_size;
        let all_head = config.num_attention_heads * config.head_size();
        let separate = config.relative_attention && !config.share_att_key;
        Ok(Self {
            query_proj: LoraLinear::load(vb.pp("query_proj"), h, all_head, true)?,
            key_proj: LoraLinear::load(vb.pp("key_proj"), h, all_head, true)?,
            value_proj: LoraLinear::load(vb.pp("value_proj"), h, all_head, true)?,
            pos_key_proj: if separate && config.c2p() {
                Some(LoraLinear::load(vb.pp("pos_key_proj"), h, all_head, true)?)
            } else {
                None
            },
            pos_query_proj: if separate && config.p2c() {
                Some(LoraLinear::load(vb.pp("pos_query_proj"), h, all_head, true)?)
            } else {
                None
            },
            config: config.clone(),
        })
    }

    /// The attention's context `(batch, seq, heads·head size)`; `keep` is `(batch, 1, seq, seq)`.
    fn forward(&self, x: &Tensor, keep: &Tensor, rel: Option<&RelativePositions>, ctx: &Ctx) -> Result<Tensor> {
        let cfg = &self.config;
        let (batch, seq, _) = x.dims3()?;
        let heads = cfg.num_attention_heads;
        let d = cfg.head_size();
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, l, _) = t.dims3()?;
            t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?.reshape((b * heads, l, d))
        };
        let q = split(self.query_proj.forward(x, ctx)?)?;
        let k = split(self.key_proj.forward(x, ctx)?)?;
        let v = split(self.value_proj.forward(x, ctx)?)?;
        let scale_factor = 1 + usize::from(cfg.c2p()) + usize::from(cfg.p2c());
        let scale = ((d * scale_factor) as f32).sqrt() as f64;
        let mut scores = q.matmul(&(k.t()? / scale)?)?;
        if let Some(rel) = rel {
            let table = ctx.dropout(&rel.table, cfg.hidden_dropout_prob)?.unsqueeze(0)?;
            // The position projection per head, `(heads, 2·span, d)`, shared by the batch; with per-row
            // adapters that differ, one per row, `(batch·heads, 2·span, d)`, computed once per run of rows
            // sharing an adapter (one adapter for every row gives the shared form).
            let project = |proj: &LoraLinear| -> Result<Tensor> {
                let Adapters::PerRow(_) = ctx.adapters() else {
                    return split(proj.forward(&table, ctx)?);
                };
                let mut runs = Vec::new();
                for run in ctx.runs() {
                    let one = ctx.fork(run.adapter.clone().map(Adapters::One).unwrap_or_default());
                    let pos = split(proj.forward(&table, &one)?)?;
                    ctx.set_rng_state(one.rng_state());
                    if run.len == batch {
                        return Ok(pos); // one adapter for the whole batch
                    }
                    let (_, n, d) = pos.dims3()?;
                    runs.push(pos.unsqueeze(0)?.broadcast_as((run.len, heads, n, d))?.reshape((
                        run.len * heads,
                        n,
                        d,
                    ))?);
                }
                Tensor::cat(&runs, 0)
            };
            if cfg.c2p() {
                let pos_key = project(self.pos_key_proj.as_ref().unwrap_or(&self.key_proj))?;
                scores = add_relative_scores(&scores, &q, &pos_key, &rel.c2p, Side::Query, scale)?;
            }
            if cfg.p2c() {
                let pos_query = project(self.pos_query_proj.as_ref().unwrap_or(&self.query_proj))?;
                scores = add_relative_scores(&scores, &k, &pos_query, &rel.p2c, Side::Key, scale)?;
            }
        }
        let scores = scores.reshape((batch, heads, seq, seq))?;
        let probs = attention_probs(&scores, keep, 1.0, cfg.attention_probs_dropout_prob, ctx)?;
        let context = probs.reshape((batch * heads, seq, seq))?.matmul(&v)?;
        context.reshape((batch, heads, seq, d))?.transpose(1, 2)?.reshape((batch, seq, heads * d))
    }
}

/// `DebertaV2Attention`: disentangled self-attention and its output.
struct DebertaAttention {
    self_attention: DisentangledSelfAttention,
    /// `…SelfOutput`.
    output: DenseResidualNorm,
}

/// `DebertaV2Layer`: attention, then the feed-forward network.
struct DebertaLayer {
    attention: DebertaAttention,
    intermediate: DenseActivation,
    output: DenseResidualNorm,
}

impl DebertaLayer {
    fn load(vb: VarBuilder, config: &DebertaConfig) -> Result<Self> {
        let all_head = config.num_attention_heads * config.head_size();
        let (h, inter) = (config.hidden_size, config.intermediate_size);
        let (eps, dropout) = (config.layer_norm_eps, config.hidden_dropout_prob);
        let att = vb.pp("attention");
        Ok(Self {
            attention: DebertaAttention {
                self_attention: DisentangledSelfAttention::load(att.pp("self"), config)?,
                output: DenseResidualNorm::load(att.pp("output"), all_head, h, eps, dropout)?,
            },
            intermediate: DenseActivation::load(vb.pp("intermediate"), h, inter, &config.hidden_act)?,
            output: DenseResidualNorm::load(vb.pp("output"), inter, h, eps, dropout)?,
        })
    }

    fn forward(&self, x: &Tensor, keep: &Tensor, rel: Option<&RelativePositions>, ctx: &Ctx) -> Result<Tensor> {
        let context = self.attention.self_attention.forward(x, keep, rel, ctx)?;
        let attended = self.attention.output.forward(&context, x, ctx)?;
        let inner = self.intermediate.forward(&attended, ctx)?;
        self.output.forward(&inner, &attended, ctx)
    }

    fn lora_linears(&self) -> Vec<&LoraLinear> {
        let s = &self.attention.self_attention;
        let mut out = vec![&s.query_proj, &s.key_proj, &s.value_proj];
        out.extend(s.pos_key_proj.iter().chain(s.pos_query_proj.iter()));
        out.extend([&self.attention.output.dense, &self.intermediate.dense, &self.output.dense]);
        out
    }

    fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let s = &mut self.attention.self_attention;
        let mut out = vec![&mut s.query_proj, &mut s.key_proj, &mut s.value_proj];
        out.extend(s.pos_key_proj.iter_mut().chain(s.pos_query_proj.iter_mut()));
        out.extend([&mut self.attention.output.dense, &mut self.intermediate.dense, &mut self.output.dense]);
        out
    }
}

/// `DebertaV2Model`: embeddings, then the encoder's layers over the relative positions
/// (`encoder.rel_embeddings`, normalised by `encoder.LayerNorm` where `norm_rel_ebd` says so).
pub struct Deberta {
    embeddings: DebertaEmbeddings,
    rel_embeddings: Option<Tensor>,
    rel_norm: Option<LayerNorm>,
    /// `encoder.layer`.
    layers: Vec<DebertaLayer>,
    pub config: DebertaConfig,
}

impl Deberta {
    /// Loads the encoder from `vb` rooted at the model's prefix (`deberta`).
    pub fn load(vb: VarBuilder, config: &DebertaConfig) -> Result<Self> {
        if config.conv_kernel_size > 0 {
            candle_core::bail!("conv_kernel_size > 0 (DeBERTa-v2 xlarge/xxlarge) is not supported");
        }
        let h = config.hidden_size;
        let uses_rel_norm =
            config.norm_rel_ebd.as_deref().unwrap_or("none").split('|').any(|p| p.trim() == "layer_norm");
        let encoder = vb.pp("encoder");
        Ok(Self {
            embeddings: DebertaEmbeddings::load(vb.pp("embeddings"), config)?,
            rel_embeddings: if config.relative_attention {
                Some(encoder.pp("rel_embeddings").get((2 * config.att_span() as usize, h), "weight")?)
            } else {
                None
            },
            rel_norm: if config.relative_attention && uses_rel_norm {
                Some(LayerNorm::load(encoder.pp("LayerNorm"), h, config.layer_norm_eps)?)
            } else {
                None
            },
            layers: (0..config.num_hidden_layers)
                .map(|i| DebertaLayer::load(encoder.pp(format!("layer.{i}")), config))
                .collect::<Result<_>>()?,
            config: config.clone(),
        })
    }
}

impl Encoder for Deberta {
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let seq = input_ids.dim(1)?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        let mut hidden = self.embeddings.forward(input_ids, token_type_ids, &mask, ctx)?;
        // (batch, 1, seq, seq): token i may attend to token j when both are real tokens.
        let keep = mask.unsqueeze(2)?.broadcast_mul(&mask.unsqueeze(1)?)?.unsqueeze(1)?.to_dtype(DType::U8)?;
        let rel = match &self.rel_embeddings {
            Some(table) => {
                let table = match &self.rel_norm {
                    Some(norm) => norm.forward(table)?,
                    None => table.clone(),
                };
                let (c2p, p2c) = relative_indices(seq, &self.config, input_ids.device())?;
                Some(RelativePositions { table, c2p, p2c })
            }
            None => None,
        };
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &keep, rel.as_ref(), ctx)?;
        }
        Ok(hidden)
    }

    /// Every layer's projections, then the embeddings' projection.
    fn lora_linears(&self) -> Vec<&LoraLinear> {
        let mut out: Vec<&LoraLinear> = self.layers.iter().flat_map(DebertaLayer::lora_linears).collect();
        out.extend(self.embeddings.embed_proj.iter());
        out
    }

    fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut out: Vec<&mut LoraLinear> = self.layers.iter_mut().flat_map(DebertaLayer::lora_linears_mut).collect();
        out.extend(self.embeddings.embed_proj.iter_mut());
        out
    }
}

/// transformers' `make_log_bucket_position`: positions beyond ±bucket/2 share log-spaced buckets.
/// Computed in f32 as PyTorch does, so bucket boundaries match.
pub fn log_bucket_position(relative: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    let abs = if relative < mid && relative > -mid { mid - 1 } else { relative.abs() };
    if abs <= mid {
        return relative;
    }
    let ratio = (abs as f32 / mid as f32).ln() / ((max_position - 1) as f32 / mid as f32).ln();
    let log_pos = (ratio * (mid - 1) as f32).ceil() as i64 + mid;
    log_pos * relative.signum()
}

/// The gather indices of c2p and p2c attention for a sequence of `seq` tokens, each `(seq, seq)` rows of
/// the `2·span` relative-position embeddings.
fn relative_indices(seq: usize, cfg: &DebertaConfig, device: &Device) -> Result<(RelativeIndex, RelativeIndex)> {
    let span = cfg.att_span();
    let mut c2p = Vec::with_capacity(seq * seq);
    let mut p2c = Vec::with_capacity(seq * seq);
    for i in 0..seq as i64 {
        for j in 0..seq as i64 {
            let mut rel = i - j;
            if cfg.position_buckets > 0 && cfg.max_relative_positions() > 0 {
                rel = log_bucket_position(rel, cfg.position_buckets, cfg.max_relative_positions());
            }
            c2p.push((rel + span).clamp(0, 2 * span - 1) as u32);
            p2c.push((-rel + span).clamp(0, 2 * span - 1) as u32);
        }
    }
    let positions = 2 * span as usize;
    Ok((RelativeIndex::new(c2p, seq, positions, device)?, RelativeIndex::new(p2c, seq, positions, device)?))
}
