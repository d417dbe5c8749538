//! AdamW (decoupled weight decay, as `torch.optim.AdamW`) with global gradient-norm clipping, over
//! exactly the trainable variables, with state that checkpoints can save and restore.
//! NOTE: candle-nn's AdamW keeps its state private and has no clipping (STYLE.md §8).

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};

use serde::{Deserialize, Serialize};

use crate::ops::adamw as fused_adamw;

/// AdamW's settings (the learning rate is the schedule's, in the trainer's settings).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    /// Biases and LayerNorm weights get no weight decay.
    decay: bool,
}

pub struct AdamW {
    params: Vec<Param>,
    /// Optimizer steps taken.
    pub step: usize,
    config: AdamWConfig,
    /// The global gradient norm gradients are clipped to; 0 turns clipping off.
    max_grad_norm: f64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                // Two tensors, not two handles on one: the fused step updates each in place.
                let (m, v) = (var.as_tensor().zeros_like()?, var.as_tensor().zeros_like()?);
                let decay = !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("norm."));
                Ok(Param { name, var, m, v, decay })
            })
            .collect::<Result<_>>()?;
        Ok(Self { params, step: 0, config, max_grad_norm: 0.0 })
    }

    /// Clips each step's gradients to a global norm of `max_grad_norm` (0: no clipping, the default).
    pub fn with_clipping(mut self, max_grad_norm: f64) -> Self {
        self.max_grad_norm = max_grad_norm;
        self
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// Adds this micro-batch's gradients into `acc` (one slot per parameter).
    pub fn accumulate(&self, grads: &candle_core::backprop::GradStore, acc: &mut [Option<Tensor>]) -> Result<()> {
        for (slot, p) in acc.iter_mut().zip(&self.params) {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn empty_grads(&self) -> Vec<Option<Tensor>> {
        vec![None; self.params.len()]
    }

    /// One update with learning rate `lr`. Returns the gradient norm before clipping when clipping is
    /// on, and `None` when it is off (the norm is then not computed: it is a full pass over the
    /// gradients that nothing would use).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<Option<f64>> {
        let norm = if self.max_grad_norm > 0.0 {
            let mut sq = 0f64;
            for g in grads.iter().flatten() {
                sq += if fused_adamw::applies(&[g]) {
                    fused_adamw::sum_of_squares(g)?
                } else {
                    g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?
                };
            }
            Some(sq.sqrt())
        } else {
            None
        };
        let clip = match norm {
            Some(norm) if norm > self.max_grad_norm => self.max_grad_norm / (norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let theta = p.var.as_tensor();
            if g.dims() != theta.dims() {
                candle_core::bail!("gradient of `{}` is {:?}, the parameter {:?}", p.name, g.dims(), theta.dims());
            }
            if fused_adamw::applies(&[theta, &p.m, &p.v, g]) && theta.is_contiguous() {
                let step = fused_adamw::Step {
                    clip: clip as f32,
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    one_minus_beta1: (1.0 - c.beta1) as f32,
                    one_minus_beta2: (1.0 - c.beta2) as f32,
                    bias_correction1: bc1 as f32,
                    bias_correction2: bc2 as f32,
                    eps: c.eps as f32,
                    lr: lr as f32,
                    decay: if p.decay { (1.0 - lr * c.weight_decay) as f32 } else { 1.0 },
                };
                fused_adamw::update(theta, &p.m, &p.v, g, step)?;
                continue;
            }
            let g = (g * clip)?;
            p.m = ((&p.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            p.v = ((&p.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&p.m / bc1)? / ((&p.v / bc2)?.sqrt()? + c.eps)?)?;
            let decayed = if p.decay { (theta * (1.0 - lr * c.weight_decay))? } else { theta.clone() };
            p.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(norm)
    }

    /// First and second moments by parameter name, for checkpoints. The tensors are the live state
    /// (the next step updates them in place): save them before stepping again.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.m.clone());
            out.insert(format!("v.{}", p.name), p.v.clone());
        }
        out
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            let get = |k: String| {
                state.get(&k).cloned().ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks `{k}`")))
            };
            // Copies: the fused step updates the moments in place, and `state` may share their storage.
            let get = |k: String| {
                let t = get(k.clone())?;
                if t.dims() != p.var.dims() {
                    candle_core::bail!("optimizer state `{k}` is {:?}, the parameter {:?}", t.dims(), p.var.dims());
                }
                t.to_device(p.var.device())?.copy()
            };
            p.m = get(format!("m.{}", p.name))?;
            p.v = get(format!("v.{}", p.name))?;
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warm-up over `warmup` steps, then linear decay to 0 at `total` (transformers'
/// `get_linear_schedule_with_warmup`); `step` is 0-based.
pub fn linear_schedule(base_lr: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        base_lr * step as f64 / warmup.max(1) as f64
    } else {
        base_lr * (total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// torch.optim.AdamW's update written out in f64 for one scalar parameter (decoupled decay, bias
    /// correction, eps outside the square root).
    fn torch_adamw(theta: f64, grads: &[f64], lr: f64, wd: f64, (b1, b2, eps): (f64, f64, f64)) -> f64 {
        let (mut theta, mut m, mut v) = (theta, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            theta *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let (m_hat, v_hat) = (m / (1.0 - b1.powi(t)), v / (1.0 - b2.powi(t)));
            theta -= lr * m_hat / (v_hat.sqrt() + eps);
        }
        theta
    }

    /// Three steps with changing gradients: a lost or reset moment would give a different answer
    /// from the second step on (one step cannot tell: its update is ±lr whatever the moments).
    #[test]
    fn three_steps_match_torch_adamw() {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).unwrap()).unwrap();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
        let grads = [[0.5, -0.25, 0.1], [-0.3, 0.8, 0.1], [0.05, 0.4, -2.0]];
        for g in &grads {
            let g: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            opt.step(&[Some(Tensor::new(g.as_slice(), &Device::Cpu).unwrap())], 0.01).unwrap();
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for (i, start) in [1.0, -2.0, 0.5].into_iter().enumerate() {
            let g: Vec<f64> = grads.iter().map(|step| step[i]).collect();
            let want = torch_adamw(start, &g, 0.01, 0.1, (0.9, 0.999, 1e-8));
            assert!((got[i] as f64 - want).abs() < 1e-6, "element {i}: {} vs {want}", got[i]);
        }
        // and with no decay for a bias: the name decides
        let bias = Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("layer.bias".into(), bias.clone())], cfg).unwrap();
        opt.step(&[Some(Tensor::new(&[0.5f32], &Device::Cpu).unwrap())], 0.01).unwrap();
        let want = torch_adamw(1.0, &[0.5], 0.01, 0.0, (0.9, 0.999, 1e-8));
        assert!((bias.as_tensor().to_vec1::<f32>().unwrap()[0] as f64 - want).abs() < 1e-6);
    }

    /// Clipping is visible in the moments (Adam's update itself hides the gradient's scale).
    #[test]
    fn clipping_scales_the_gradient_to_the_max_norm() {
        let var = Var::from_tensor(&Tensor::new(&[0.0f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(vec![("w".into(), var)], cfg).unwrap().with_clipping(1.0);
        let norm = opt.step(&[Some(Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap())], 0.1).unwrap();
        assert!((norm.unwrap() - 5.0).abs() < 1e-6);
        let m = opt.state()["m.w"].to_vec1::<f32>().unwrap();
        let v = opt.state()["v.w"].to_vec1::<f32>().unwrap();
        // clipped gradient (0.6, 0.8): m = 0.1·g, v = 0.001·g²
        for (got, want) in m.iter().zip([0.06, 0.08]).chain(v.iter().zip([0.00036, 0.00064])) {
            assert!((*got as f64 - want).abs() < 1e-7, "{m:?} {v:?}");
        }
        // below the limit, nothing changes
        let var = Var::from_tensor(&Tensor::new(&[0.0f32], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var)], cfg).unwrap().with_clipping(1.0);
        opt.step(&[Some(Tensor::new(&[0.5f32], &Device::Cpu).unwrap())], 0.1).unwrap();
        assert!((opt.state()["m.w"].to_vec1::<f32>().unwrap()[0] - 0.05).abs() < 1e-7);
    }

    /// The fused in-place step (f32 on the CPU) against the composed tensor ops (taken here by f64
    /// parameters, as other devices take them): the same parameters and moments, to f32 rounding, after
    /// three clipped steps with and without decay, on a parameter longer than one parallel task; and the
    /// moments are separate tensors (an in-place update of one must not move the other).
    #[test]
    fn fused_step_equals_the_composed_ops() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let n = 70_001;
        let mut rng = StdRng::seed_from_u64(3);
        let start: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let grads: Vec<Vec<f32>> = (0..3).map(|_| (0..n).map(|_| rng.random_range(-0.01f32..0.01)).collect()).collect();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let run = |dtype: candle_core::DType, name: &str| {
            let theta = Tensor::new(start.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let var = Var::from_tensor(&theta).unwrap();
            let mut opt = AdamW::new(vec![(name.to_string(), var.clone())], cfg).unwrap().with_clipping(1.0);
            let mut norms = Vec::new();
            for g in &grads {
                let g = Tensor::new(g.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                norms.push(opt.step(&[Some(g)], 0.05).unwrap().unwrap());
            }
            let read = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
            let state = opt.state();
            (read(var.as_tensor()), read(&state[&format!("m.{name}")]), read(&state[&format!("v.{name}")]), norms)
        };
        for name in ["w", "layer.bias"] {
            let (fused, composed) = (run(candle_core::DType::F32, name), run(candle_core::DType::F64, name));
            assert!(fused.3[0] > 1.0, "the first step is clipped: norm {}", fused.3[0]);
            for (a, b) in fused.3.iter().zip(&composed.3) {
                assert!((a - b).abs() < 1e-5 * b, "{name}: norm {a} vs {b}");
            }
            for (what, a, b) in
                [("theta", &fused.0, &composed.0), ("m", &fused.1, &composed.1), ("v", &fused.2, &composed.2)]
            {
                // relative to each quantity's own size (v is about 1e-7 here)
                let scale = b.iter().fold(0f64, |s, x| s.max(x.abs()));
                let diff = a.iter().zip(b).fold(0f64, |d, (x, y)| d.max((x - y).abs()));
                assert!(diff < 1e-5 * scale, "{name} {what}: off by {diff} (scale {scale})");
            }
            assert_ne!(fused.1, fused.2, "{name}: m and v moved together");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(linear_schedule(1.0, 0, 10, 2), 0.0);
        assert_eq!(linear_schedule(1.0, 1, 10, 2), 0.5);
        assert_eq!(linear_schedule(1.0, 2, 10, 2), 1.0);
        assert_eq!(linear_schedule(1.0, 6, 10, 2), 0.5);
        assert_eq!(linear_schedule(1.0, 10, 10, 2), 0.0);
        assert_eq!(linear_schedule(1.0, 0, 10, 0), 1.0);
    }
}
