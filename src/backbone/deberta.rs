//! DeBERTa-v2/v3 encoder with LoRA-capable projections, in Hugging Face's key layout
//! (`deberta.embeddings.*`, `deberta.encoder.layer.N.attention.self.query_proj`, `deberta.encoder.rel_embeddings`).
//! Port of transformers' `modeling_deberta_v2.py`: disentangled attention (c2p, p2c), log-bucketed
//! relative positions, `share_att_key`, `norm_rel_ebd`, `position_biased_input` and `embed_proj`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Deserializer};

use crate::attention_softmax::attention_probs;
use crate::lora::LoraLinear;
use crate::nn::{activation, Adapters, Ctx, LayerNorm};
use crate::relative_scores::{add_relative_scores, RelativeIndex, Side};

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

struct DebertaLayer {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    /// Separate position projections, only when `share_att_key` is false.
    pos_key: Option<LoraLinear>,
    pos_query: Option<LoraLinear>,
    attention_output: LoraLinear,
    attention_norm: LayerNorm,
    intermediate: LoraLinear,
    output: LoraLinear,
    output_norm: LayerNorm,
}

pub struct Deberta {
    word_embeddings: Tensor,
    position_embeddings: Option<Tensor>,
    token_type_embeddings: Option<Tensor>,
    embed_proj: Option<LoraLinear>,
    embedding_norm: LayerNorm,
    rel_embeddings: Option<Tensor>,
    rel_norm: Option<LayerNorm>,
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
        let e = config.embedding_size.unwrap_or(h);
        let all_head = config.num_attention_heads * config.head_size();
        let emb = vb.pp("embeddings");
        let eps = config.layer_norm_eps;
        let layer = |i: usize| -> Result<DebertaLayer> {
            let vb = vb.pp(format!("encoder.layer.{i}"));
            let att = vb.pp("attention");
            let separate = config.relative_attention && !config.share_att_key;
            Ok(DebertaLayer {
                query: LoraLinear::load(att.pp("self.query_proj"), h, all_head, true)?,
                key: LoraLinear::load(att.pp("self.key_proj"), h, all_head, true)?,
                value: LoraLinear::load(att.pp("self.value_proj"), h, all_head, true)?,
                pos_key: if separate && config.c2p() {
                    Some(LoraLinear::load(att.pp("self.pos_key_proj"), h, all_head, true)?)
                } else {
                    None
                },
                pos_query: if separate && config.p2c() {
                    Some(LoraLinear::load(att.pp("self.pos_query_proj"), h, all_head, true)?)
                } else {
                    None
                },
                attention_output: LoraLinear::load(att.pp("output.dense"), all_head, h, true)?,
                attention_norm: LayerNorm::load(att.pp("output.LayerNorm"), h, eps)?,
                intermediate: LoraLinear::load(vb.pp("intermediate.dense"), h, config.intermediate_size, true)?,
                output: LoraLinear::load(vb.pp("output.dense"), config.intermediate_size, h, true)?,
                output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), h, eps)?,
            })
        };
        let uses_rel_norm =
            config.norm_rel_ebd.as_deref().unwrap_or("none").split('|').any(|p| p.trim() == "layer_norm");
        Ok(Self {
            word_embeddings: emb.pp("word_embeddings").get((config.vocab_size, e), "weight")?,
            position_embeddings: if config.position_biased_input {
                Some(emb.pp("position_embeddings").get((config.max_position_embeddings, e), "weight")?)
            } else {
                None
            },
            token_type_embeddings: if config.type_vocab_size > 0 {
                Some(emb.pp("token_type_embeddings").get((config.type_vocab_size, e), "weight")?)
            } else {
                None
            },
            embed_proj: if e != h { Some(LoraLinear::load(emb.pp("embed_proj"), e, h, false)?) } else { None },
            embedding_norm: LayerNorm::load(emb.pp("LayerNorm"), h, eps)?,
            rel_embeddings: if config.relative_attention {
                Some(vb.pp("encoder.rel_embeddings").get((2 * config.att_span() as usize, h), "weight")?)
            } else {
                None
            },
            rel_norm: if config.relative_attention && uses_rel_norm {
                Some(LayerNorm::load(vb.pp("encoder.LayerNorm"), h, eps)?)
            } else {
                None
            },
            layers: (0..config.num_hidden_layers).map(layer).collect::<Result<_>>()?,
            config: config.clone(),
        })
    }

    pub fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut out: Vec<&mut LoraLinear> = Vec::new();
        for l in &mut self.layers {
            out.extend([&mut l.query, &mut l.key, &mut l.value]);
            out.extend(l.pos_key.iter_mut().chain(l.pos_query.iter_mut()));
            out.extend([&mut l.attention_output, &mut l.intermediate, &mut l.output]);
        }
        out.extend(self.embed_proj.iter_mut());
        out
    }

    pub fn lora_linears(&self) -> Vec<&LoraLinear> {
        let mut out: Vec<&LoraLinear> = Vec::new();
        for l in &self.layers {
            out.extend([&l.query, &l.key, &l.value]);
            out.extend(l.pos_key.iter().chain(l.pos_query.iter()));
            out.extend([&l.attention_output, &l.intermediate, &l.output]);
        }
        out.extend(self.embed_proj.iter());
        out
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
        let cfg = &self.config;
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
        let mask = attention_mask.to_dtype(DType::F32)?;
        let embeddings = self.embedding_norm.forward(&embeddings)?;
        let embeddings = embeddings.broadcast_mul(&mask.unsqueeze(2)?.to_dtype(embeddings.dtype())?)?;
        let mut hidden = ctx.dropout(&embeddings, cfg.hidden_dropout_prob)?;

        // (batch, 1, seq, seq): token i may attend to token j when both are real tokens.
        let keep = mask.unsqueeze(2)?.broadcast_mul(&mask.unsqueeze(1)?)?.unsqueeze(1)?.to_dtype(DType::U8)?;
        let rel = match &self.rel_embeddings {
            Some(table) => {
                let table = match &self.rel_norm {
                    Some(norm) => norm.forward(table)?,
                    None => table.clone(),
                };
                let (c2p, p2c) = relative_indices(seq, cfg, input_ids.device())?;
                Some((table, c2p, p2c))
            }
            None => None,
        };
        for layer in &self.layers {
            hidden = self.layer_forward(layer, &hidden, &keep, rel.as_ref(), ctx)?;
        }
        Ok(hidden)
    }

    fn layer_forward(
        &self,
        layer: &DebertaLayer,
        x: &Tensor,
        keep: &Tensor,
        rel: Option<&(Tensor, RelativeIndex, RelativeIndex)>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (batch, seq, _) = x.dims3()?;
        let heads = cfg.num_attention_heads;
        let d = cfg.head_size();
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, l, _) = t.dims3()?;
            t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?.reshape((b * heads, l, d))
        };
        let q = split(layer.query.forward(x, ctx)?)?;
        let k = split(layer.key.forward(x, ctx)?)?;
        let v = split(layer.value.forward(x, ctx)?)?;
        let scale_factor = 1 + usize::from(cfg.c2p()) + usize::from(cfg.p2c());
        let scale = ((d * scale_factor) as f32).sqrt() as f64;
        let mut scores = q.matmul(&(k.t()? / scale)?)?;
        if let Some((table, c2p_index, p2c_index)) = rel {
            let table = ctx.dropout(table, cfg.hidden_dropout_prob)?.unsqueeze(0)?;
            // The position projection per head, `(heads, 2·span, d)`, shared by the batch; with per-row
            // adapters that differ, one per row, `(batch·heads, 2·span, d)`, computed once per run of rows
            // sharing an adapter (one adapter for every row gives the shared form).
            let project = |proj: &LoraLinear| -> Result<Tensor> {
                let Adapters::PerRow(names) = &ctx.adapters else {
                    return split(proj.forward(&table, ctx)?);
                };
                let mut runs = Vec::new();
                let mut start = 0;
                while start < names.len() {
                    let len = names[start..].iter().take_while(|n| *n == &names[start]).count();
                    let one = ctx.fork(names[start].clone().map(Adapters::One).unwrap_or_default());
                    let pos = split(proj.forward(&table, &one)?)?;
                    ctx.set_rng_state(one.rng_state());
                    if len == names.len() {
                        return Ok(pos); // one adapter for the whole batch
                    }
                    let (_, n, d) = pos.dims3()?;
                    runs.push(pos.unsqueeze(0)?.broadcast_as((len, heads, n, d))?.reshape((len * heads, n, d))?);
                    start += len;
                }
                Tensor::cat(&runs, 0)
            };
            if cfg.c2p() {
                let pos_key = project(layer.pos_key.as_ref().unwrap_or(&layer.key))?;
                scores = add_relative_scores(&scores, &q, &pos_key, c2p_index, Side::Query, scale)?;
            }
            if cfg.p2c() {
                let pos_query = project(layer.pos_query.as_ref().unwrap_or(&layer.query))?;
                scores = add_relative_scores(&scores, &k, &pos_query, p2c_index, Side::Key, scale)?;
            }
        }
        let scores = scores.reshape((batch, heads, seq, seq))?;
        let probs = attention_probs(&scores, keep, 1.0, cfg.attention_probs_dropout_prob, ctx)?;
        let context = probs.reshape((batch * heads, seq, seq))?.matmul(&v)?;
        let context = context.reshape((batch, heads, seq, d))?.transpose(1, 2)?.reshape((batch, seq, heads * d))?;
        let attended = ctx.dropout(&layer.attention_output.forward(&context, ctx)?, cfg.hidden_dropout_prob)?;
        let attended = layer.attention_norm.forward(&(attended + x)?)?;
        let inner = activation(&cfg.hidden_act, &layer.intermediate.forward(&attended, ctx)?)?;
        let out = ctx.dropout(&layer.output.forward(&inner, ctx)?, cfg.hidden_dropout_prob)?;
        layer.output_norm.forward(&(out + attended)?)
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
