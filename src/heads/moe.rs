//! The sparse mixture of reward experts of MoRE (router-reward-models.txt §3.1, Figure 1(b)), on the
//! encoder's pooled vector: LayerNorm → noisy top-k gating (Shazeer et al. 2017) over feed-forward
//! experts → LayerNorm → regression layer. Only the selected experts run on a row. The gate's
//! load-balancing loss (importance and load, each a squared coefficient of variation) is returned
//! with the rewards so the objective can add it.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::nn::{activation, Ctx, LayerNorm, Linear};

/// MoRE's settings (the config's `more` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoreConfig {
    /// Number of experts; default: the number of domains.
    pub experts: Option<usize>,
    /// Experts each input is sent to.
    pub top_k: usize,
    /// Hidden size of each expert's feed-forward network; default: the encoder's hidden size.
    pub expert_hidden: Option<usize>,
    /// Noisy gating in training (no noise in evaluation either way).
    pub noise: bool,
    /// Weight of the load-balancing loss (importance + load) added to the pairwise loss.
    pub balance_coef: f64,
}

impl Default for MoreConfig {
    fn default() -> Self {
        Self { experts: None, top_k: 2, expert_hidden: None, noise: true, balance_coef: 0.01 }
    }
}

/// Added to the noise's standard deviation (Shazeer et al.'s `noise_epsilon`).
pub const NOISE_EPSILON: f64 = 1e-2;

struct Expert {
    fc1: Linear,
    fc2: Linear,
}

/// The MoE head; tensors under `more.` in `more.safetensors`.
pub struct MoeHead {
    norm_in: LayerNorm,
    gate: Linear,
    noise: Linear,
    experts: Vec<Expert>,
    norm_out: LayerNorm,
    regression: Linear,
    top_k: usize,
    noisy: bool,
}

/// What the head computes for a batch.
pub struct MoeOutput {
    /// `(batch,)`.
    pub rewards: Tensor,
    /// `(batch, experts)`: each row's gate weights (zero outside its top k).
    pub gates: Tensor,
    /// The load-balancing loss (a scalar), unweighted.
    pub balance: Tensor,
}

impl MoeHead {
    /// Loads (or, for a new model, initialises: gate and noise weights at zero, as Shazeer et al. do)
    /// a head of `experts` experts over vectors of size `hidden`.
    pub fn load(vb: VarBuilder, hidden: usize, experts: usize, expert_hidden: usize, cfg: &MoreConfig) -> Result<Self> {
        if cfg.top_k == 0 || cfg.top_k > experts {
            candle_core::bail!("`more.top_k` must be between 1 and the number of experts ({experts})");
        }
        let zero = |vb: VarBuilder, name: &str| -> Result<Linear> {
            let weight = vb.pp(name).get_with_hints((experts, hidden), "weight", candle_nn::init::ZERO)?;
            Ok(Linear { weight, bias: None })
        };
        let experts = (0..experts)
            .map(|i| {
                let vb = vb.pp(format!("experts.{i}"));
                Ok(Expert {
                    fc1: Linear::load(vb.pp("fc1"), hidden, expert_hidden, 0.02)?,
                    fc2: Linear::load(vb.pp("fc2"), expert_hidden, hidden, 0.02)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm_in: LayerNorm::load(vb.pp("norm_in"), hidden, 1e-5)?,
            gate: zero(vb.clone(), "gate")?,
            noise: zero(vb.clone(), "noise")?,
            experts,
            norm_out: LayerNorm::load(vb.pp("norm_out"), hidden, 1e-5)?,
            regression: Linear::load(vb.pp("regression"), hidden, 1, 0.02)?,
            top_k: cfg.top_k,
            noisy: cfg.noise,
        })
    }

    pub fn experts(&self) -> usize {
        self.experts.len()
    }

    /// Rewards, gates and balance loss for pooled vectors `x (batch, hidden)`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<MoeOutput> {
        let (batch, _) = x.dims2()?;
        let experts = self.experts.len();
        let x = candle_core::Module::forward(&self.norm_in, x)?;
        let clean = candle_core::Module::forward(&self.gate, &x)?;
        let noisy = ctx.train && self.noisy;
        let (logits, noise_std) = if noisy {
            // Shazeer et al.'s noise_epsilon keeps the smooth load's division finite.
            let std = (softplus(&candle_core::Module::forward(&self.noise, &x)?)? + NOISE_EPSILON)?;
            let draws = Tensor::from_vec(ctx.standard_normal(batch * experts), (batch, experts), x.device())?;
            ((&clean + (&draws * &std)?)?, Some(std))
        } else {
            (clean.clone(), None)
        };
        // Top k per row on the host (ties go to the lower index); the gates are a softmax over those.
        let values = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let ranked: Vec<Vec<usize>> = values
            .iter()
            .map(|row| {
                let mut order: Vec<usize> = (0..experts).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                order
            })
            .collect();
        let mut mask = vec![0f32; batch * experts];
        for (r, order) in ranked.iter().enumerate() {
            for &e in &order[..self.top_k] {
                mask[r * experts + e] = 1.0;
            }
        }
        let mask = Tensor::from_vec(mask, (batch, experts), x.device())?;
        let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
        let kept = (shifted.exp()? * &mask)?;
        let gates = kept.broadcast_div(&kept.sum_keepdim(D::Minus1)?)?;

        // Each expert runs on its rows only; outputs are added back weighted by the gate.
        let mut mixed = x.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            let rows: Vec<u32> =
                (0..batch).filter(|&r| ranked[r][..self.top_k].contains(&e)).map(|r| r as u32).collect();
            if rows.is_empty() {
                continue;
            }
            let index = Tensor::new(rows.as_slice(), x.device())?;
            let input = x.index_select(&index, 0)?;
            let hidden = activation("gelu", &candle_core::Module::forward(&expert.fc1, &input)?)?;
            let out = candle_core::Module::forward(&expert.fc2, &hidden)?;
            let weight = gates.index_select(&index, 0)?.narrow(1, e, 1)?;
            mixed = mixed.index_add(&index, &out.broadcast_mul(&weight)?, 0)?;
        }
        let normed = candle_core::Module::forward(&self.norm_out, &mixed)?;
        let rewards = candle_core::Module::forward(&self.regression, &normed)?.squeeze(1)?;

        let importance = gates.sum(0)?;
        let load = match &noise_std {
            Some(std) => smooth_load(&clean, &logits, std, &ranked, self.top_k)?,
            None => mask.sum(0)?,
        };
        let balance = (cv_squared(&importance)? + cv_squared(&load)?)?;
        Ok(MoeOutput { rewards, gates, balance })
    }
}

/// `log(1 + e^x)`, stable.
fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// The standard normal CDF, `Φ(z) = (1 + erf(z/√2)) / 2`.
pub fn normal_cdf(z: &Tensor) -> Result<Tensor> {
    ((z / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5
}

/// Shazeer et al.'s smooth load: for each row and expert, the probability that the expert is in the
/// row's top k under a new draw of its noise, `Φ((clean − threshold) / std)`, where the threshold is
/// the k-th largest of the other experts' noisy logits; summed over rows.
fn smooth_load(clean: &Tensor, noisy: &Tensor, std: &Tensor, ranked: &[Vec<usize>], k: usize) -> Result<Tensor> {
    let (batch, experts) = clean.dims2()?;
    if k >= experts {
        return Tensor::ones(experts, DType::F32, clean.device())?.affine(batch as f64, 0.0);
    }
    // For an expert inside the top k the threshold is the (k+1)-th noisy logit; outside, the k-th.
    let (mut in_index, mut out_index, mut inside) = (Vec::new(), Vec::new(), vec![0f32; batch * experts]);
    for (r, order) in ranked.iter().enumerate() {
        in_index.push(order[k] as u32);
        out_index.push(order[k - 1] as u32);
        for &e in &order[..k] {
            inside[r * experts + e] = 1.0;
        }
    }
    let device = clean.device();
    let pick = |index: Vec<u32>| -> Result<Tensor> { noisy.gather(&Tensor::from_vec(index, (batch, 1), device)?, 1) };
    let (threshold_in, threshold_out) = (pick(in_index)?, pick(out_index)?);
    let inside = Tensor::from_vec(inside, (batch, experts), device)?;
    let p_in = normal_cdf(&clean.broadcast_sub(&threshold_in)?.div(std)?)?;
    let p_out = normal_cdf(&clean.broadcast_sub(&threshold_out)?.div(std)?)?;
    let outside = (1.0 - &inside)?;
    ((p_in * &inside)? + (p_out * outside)?)?.sum(0)
}

/// Squared coefficient of variation `var(v) / mean(v)²` (population variance; 0 for one expert).
pub fn cv_squared(v: &Tensor) -> Result<Tensor> {
    let mean = v.mean_all()?;
    let var = v.broadcast_sub(&mean)?.sqr()?.mean_all()?;
    var / (mean.sqr()? + 1e-10)?
}
