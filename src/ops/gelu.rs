//! GELU in its exact (erf) form as one fused CPU op with its own backward pass.
//!
//! candle's `gelu_erf` evaluates a scalar, branchy erf per element and differentiates through about a
//! dozen full-tensor ops; both showed in the profile of a MiniLM step (issue 12). Here the forward is one
//! pass and the backward another, `grad · (Φ(x) + x·φ(x))`. erf is the Abramowitz–Stegun 7.1.26 rational
//! form (absolute error below 1.5e-7, a few f32 ulps near 1), which is also what PyTorch's vectorised
//! CPU erf computes; its exponential is [`simd::exp`], so both loops vectorise. The gradient has no
//! gradient of its own (no second derivatives). Other devices and dtypes keep candle's op.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::contiguous;
use super::simd;

/// Elements per parallel task: below this, threads cost more than they save.
const CHUNK: usize = 1 << 15;

/// `x · Φ(x)`, with the gradient for training.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// erf(x) to within 1.5e-7 (Abramowitz & Stegun 7.1.26).
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * simd::exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// d gelu / dx = Φ(x) + x·φ(x).
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * simd::exp(-0.5 * x * x)
}

/// `out = gelu(x)`, one task's slice.
#[inline(always)]
fn forward(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = gelu(v);
    }
}

/// `out = grad · gelu'(x)`, one task's slice.
#[inline(always)]
fn backward(out: &mut [f32], x: &[f32], grad: &[f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        *o = g * gelu_slope(v);
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "rmroute-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(storage, layout, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, x)| {
            simd::vectorised(
                #[inline(always)]
                || forward(out, x),
            )
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluErfGrad)?))
    }
}

/// `(x, grad) → grad · gelu'(x)`.
struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "rmroute-gelu-erf-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s1, l1, self.name())?;
        let grad = contiguous::<f32>(s2, l2, self.name())?;
        if x.len() != grad.len() {
            candle_core::bail!("{}: {} inputs and {} gradients", self.name(), x.len(), grad.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK))).for_each(|(out, (x, g))| {
            simd::vectorised(
                #[inline(always)]
                || backward(out, x, g),
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn inputs() -> Vec<f32> {
        // Both tails, zero, and the region where the approximation bends.
        (-400..=400).map(|i| i as f32 * 0.025).chain([-30.0, -9.0, 9.0, 30.0, 1e-6, -1e-6]).collect()
    }

    #[test]
    fn matches_candles_gelu_erf() -> Result<()> {
        let x = Tensor::new(inputs().as_slice(), &Device::Cpu)?;
        let ours = gelu_erf(&x)?.to_vec1::<f32>()?;
        let theirs = x.gelu_erf()?.to_vec1::<f32>()?;
        for ((a, b), v) in ours.iter().zip(&theirs).zip(inputs()) {
            assert!((a - b).abs() <= 5e-7 * v.abs().max(1.0), "gelu({v}): {a} vs {b}");
        }
        // A contiguous slice that starts past the beginning of its storage.
        let slice = x.narrow(0, 3, 10)?;
        let diff = (gelu_erf(&slice)? - slice.gelu_erf()?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        // A strided input (a transpose) is made contiguous first.
        let m = Tensor::new(&[[-1f32, 0.5, 2.0], [3.0, -0.25, 0.0]], &Device::Cpu)?.t()?;
        let diff = (gelu_erf(&m)? - m.gelu_erf()?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences_and_candles_autograd() -> Result<()> {
        let values = inputs();
        let var = Var::new(values.as_slice(), &Device::Cpu)?;
        let weights = Tensor::new(values.iter().map(|v| 1.0 + 0.1 * v).collect::<Vec<f32>>().as_slice(), &Device::Cpu)?;
        let loss = |x: &Tensor, fused: bool| -> Result<Tensor> {
            let y = if fused { gelu_erf(x)? } else { x.gelu_erf()? };
            (y * &weights)?.sum_all()
        };
        let ours = loss(var.as_tensor(), true)?.backward()?.get(&var).expect("a gradient").to_vec1::<f32>()?;
        let theirs = loss(var.as_tensor(), false)?.backward()?.get(&var).expect("a gradient").to_vec1::<f32>()?;
        let h = 1e-3f64;
        for (i, &v) in values.iter().enumerate() {
            assert!((ours[i] - theirs[i]).abs() < 1e-5, "d/dx at {v}: {} vs candle's {}", ours[i], theirs[i]);
            // Central difference in f64 of the same function (exact erf from the f64 path).
            let f = |x: f64| 0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2)) * (1.0 + 0.1 * f64::from(v));
            let numeric = (f(f64::from(v) + h) - f(f64::from(v) - h)) / (2.0 * h);
            assert!(
                (f64::from(ours[i]) - numeric).abs() < 1e-4,
                "d/dx at {v}: {} vs finite difference {numeric}",
                ours[i]
            );
        }
        Ok(())
    }

    /// erf in f64 through candle's own f64 GELU: erf(z) = 2·gelu(z√2)/(z√2) − 1.
    fn libm_erf(z: f64) -> f64 {
        if z == 0.0 {
            return 0.0;
        }
        let x = z * std::f64::consts::SQRT_2;
        let t = Tensor::new(&[x], &Device::Cpu).and_then(|t| t.gelu_erf()).and_then(|t| t.to_vec1::<f64>());
        2.0 * t.expect("f64 gelu")[0] / x - 1.0
    }
}
