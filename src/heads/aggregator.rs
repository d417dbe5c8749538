//! DMoERM's inner-layer aggregator (dmoerm.txt, Figure 3): an MLP over the capability-point experts' pooled
//! vectors, `Linear(K·h, h) → PReLU → Linear(h, 1)`, saved as `aggregator.safetensors` beside
//! `aggregator.json` (which experts it reads, in which order).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::io::save_safetensors;
use crate::nn::params::ParamStore;
use crate::nn::{linear, Linear};

/// The aggregator's weights in its stage directory.
pub const AGGREGATOR_FILE: &str = "aggregator.safetensors";
/// Which experts, in which order, the aggregator reads.
pub const AGGREGATOR_CONFIG: &str = "aggregator.json";

/// `aggregator.json`: the experts the aggregator reads, in the order of its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// The capability points, in input order.
    pub aspects: Vec<String>,
    /// Each point's expert adapter (its stage name).
    pub adapters: Vec<String>,
    /// The size of each expert's pooled vector, and of the MLP's hidden layer.
    pub hidden: usize,
}

/// The inner layer's MLP: `Linear(K·h, h) → PReLU → Linear(h, 1)` over the experts' pooled vectors.
pub struct Aggregator {
    fc1: Linear,
    /// PReLU's one slope (torch's `nn.PReLU()`, starting at 0.25).
    slope: Tensor,
    fc2: Linear,
    store: Arc<ParamStore>,
}

impl Aggregator {
    /// A new aggregator over `experts` pooled vectors of size `hidden`, initialised from `seed`.
    pub fn new(experts: usize, hidden: usize, seed: u64, device: &Device) -> Result<Self> {
        Self::build(ParamStore::trainable(HashMap::new(), "a new aggregator", seed), experts, hidden, device)
    }

    /// Loads `aggregator.safetensors` (frozen); a missing or misshapen tensor is an error naming it.
    pub fn load(path: &Path, config: &AggregatorConfig, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading the aggregator {}", path.display()))?;
        let names: Vec<String> = tensors.keys().cloned().collect();
        let store = ParamStore::from_tensors(tensors, path.display().to_string(), false);
        let aggregator = Self::build(store, config.adapters.len(), config.hidden, device)
            .with_context(|| format!("{} does not fit its {AGGREGATOR_CONFIG}", path.display()))?;
        let used: Vec<String> = aggregator.store.used().into_iter().map(|(n, _)| n).collect();
        if let Some(extra) = names.iter().find(|n| !used.contains(n)) {
            bail!("{} holds `{extra}`, which is not part of the aggregator: not an rmroute aggregator", path.display());
        }
        Ok(aggregator)
    }

    fn build(store: Arc<ParamStore>, experts: usize, hidden: usize, device: &Device) -> Result<Self> {
        let vb = store.var_builder(DType::F32, device);
        Ok(Self {
            fc1: Linear::load(vb.pp("fc1"), experts * hidden, hidden, 0.02)?,
            slope: vb.get_with_hints(1, "prelu.weight", candle_nn::Init::Const(0.25))?,
            fc2: Linear::load(vb.pp("fc2"), hidden, 1, 0.02)?,
            store,
        })
    }

    /// Rewards `(n,)` for features `(n, K·h)`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(features)?;
        // PReLU: max(0, x) + a·min(0, x).
        let h = (h.relu()? - h.neg()?.relu()?.broadcast_mul(&self.slope)?)?;
        Ok(linear(&h, &self.fc2.weight, self.fc2.bias.as_ref())?.squeeze(1)?)
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        self.store.vars()
    }

    pub fn parameter_count(&self) -> usize {
        self.store.used().iter().map(|(_, t)| t.elem_count()).sum()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self.store.used().into_iter().collect();
        save_safetensors(&tensors, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The aggregator written out in f64: `fc2 · prelu(fc1 · x + b1) + b2` for each row.
    fn by_hand(p: &[Vec<f64>], x: &[Vec<f64>], hidden: usize) -> Vec<f64> {
        let (w1, b1, a, w2, b2) = (&p[0], &p[1], p[2][0], &p[3], p[4][0]);
        let inputs = x[0].len();
        x.iter()
            .map(|row| {
                (0..hidden)
                    .map(|j| {
                        let z: f64 = b1[j] + (0..inputs).map(|i| w1[j * inputs + i] * row[i]).sum::<f64>();
                        w2[j] * if z > 0.0 { z } else { a * z }
                    })
                    .sum::<f64>()
                    + b2
            })
            .collect()
    }

    #[test]
    fn aggregator_matches_its_formula_and_every_parameter_gets_its_gradient() {
        let (experts, hidden) = (2, 3);
        let aggregator = Aggregator::new(experts, hidden, 7, &Device::Cpu).unwrap();
        let vars = aggregator.vars();
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fc1.weight", "fc1.bias", "prelu.weight", "fc2.weight", "fc2.bias"]);
        // Weights large enough that some pre-activations are negative, so the PReLU slope matters.
        let mut params: Vec<Vec<f64>> = Vec::new();
        for (k, (_, var)) in vars.iter().enumerate() {
            let n = var.elem_count();
            let values: Vec<f64> = (0..n).map(|i| ((i * 7 + k * 3) % 11) as f64 / 5.0 - 1.0).collect();
            let values = if k == 2 { vec![0.3] } else { values };
            let t = Tensor::from_vec(values.iter().map(|&v| v as f32).collect::<Vec<_>>(), var.shape(), &Device::Cpu);
            var.set(&t.unwrap()).unwrap();
            params.push(values);
        }
        let x: Vec<Vec<f64>> =
            (0..4).map(|r| (0..experts * hidden).map(|i| ((r * 5 + i * 3) % 7) as f64 / 3.0 - 1.0).collect()).collect();
        let flat: Vec<f32> = x.iter().flatten().map(|&v| v as f32).collect();
        let input = Tensor::from_vec(flat, (4, experts * hidden), &Device::Cpu).unwrap();
        let got = aggregator.forward(&input).unwrap();
        let want = by_hand(&params, &x, hidden);
        for (g, w) in got.to_vec1::<f32>().unwrap().iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w}");
        }

        // Gradients of the summed rewards against central differences of the f64 formula.
        let grads = got.sum_all().unwrap().backward().unwrap();
        for (k, (name, var)) in vars.iter().enumerate() {
            let analytic: Vec<f32> = grads.get(var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(analytic.iter().any(|g| g.abs() > 1e-6), "`{name}` gets no gradient");
            for (i, a) in analytic.iter().enumerate() {
                let eps = 1e-6;
                let mut up = params.clone();
                up[k][i] += eps;
                let mut down = params.clone();
                down[k][i] -= eps;
                let numeric = (by_hand(&up, &x, hidden).iter().sum::<f64>()
                    - by_hand(&down, &x, hidden).iter().sum::<f64>())
                    / (2.0 * eps);
                assert!((f64::from(*a) - numeric).abs() < 1e-3, "`{name}`[{i}]: {a} vs {numeric}");
            }
        }
    }
}
