//! GELU as one fused CPU op with its own backward pass, in its exact (erf) form (BERT, DeBERTa) and in
//! its tanh form (`gelu_new`: GPT-2).
//!
//! candle's `gelu_erf` evaluates a scalar, branchy erf per element and differentiates through about a
//! dozen full-tensor ops; both showed in the profile of a MiniLM step (issue 12), and candle's tanh
//! `gelu` differentiates through as many. Here the forward is one pass and the backward another,
//! `grad · gelu'(x)`. erf is the Abramowitz–Stegun 7.1.26 rational form (absolute error below 1.5e-7, a
//! few f32 ulps near 1), which is also what PyTorch's vectorised CPU erf computes; tanh is
//! `1 − 2/(e^{2u} + 1)`; both exponentials are [`simd::exp`], so the loops vectorise. The gradient has no
//! gradient of its own (no second derivatives). Other devices and dtypes keep candle's ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::contiguous;
use super::simd;

/// Elements per parallel task: below this, threads cost more than they save.
const CHUNK: usize = 1 << 15;

/// `x · Φ(x)`, with the gradient for training.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Gelu::<false>)
    } else {
        x.gelu_erf()
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, transformers' `gelu_new` (candle's `gelu`), with the
/// gradient for training.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Gelu::<true>)
    } else {
        x.gelu()
    }
}

/// √(2/π) and the cubic coefficient of the tanh form.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const CUBIC: f32 = 0.044_715;

#[inline(always)]
fn tanh(u: f32) -> f32 {
    // e^{2u} overflows to infinity for large u, which still gives 1; very negative u gives −1.
    1.0 - 2.0 / (simd::exp(2.0 * u) + 1.0)
}

#[inline(always)]
fn gelu_tanh_value(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + CUBIC * x * x * x)))
}

/// d/dx of the tanh form: `0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)`.
#[inline(always)]
fn gelu_tanh_slope(x: f32) -> f32 {
    let t = tanh(SQRT_2_OVER_PI * (x + CUBIC * x * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * x * x)
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

/// `out = gelu(x)`, one task's slice; `TANH` picks the form.
#[inline(always)]
fn forward<const TANH: bool>(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = if TANH { gelu_tanh_value(v) } else { gelu(v) };
    }
}

/// `out = grad · gelu'(x)`, one task's slice.
#[inline(always)]
fn backward<const TANH: bool>(out: &mut [f32], x: &[f32], grad: &[f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        *o = g * if TANH { gelu_tanh_slope(v) } else { gelu_slope(v) };
    }
}

/// The op: the erf form, or the tanh form when `TANH`.
struct Gelu<const TANH: bool>;

impl<const TANH: bool> CustomOp1 for Gelu<TANH> {
    fn name(&self) -> &'static str {
        if TANH {
            "rmroute-gelu-tanh"
        } else {
            "rmroute-gelu-erf"
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(storage, layout, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, x)| {
            simd::vectorised(
                #[inline(always)]
                || forward::<TANH>(out, x),
            )
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluGrad::<TANH>)?))
    }
}

/// `(x, grad) → grad · gelu'(x)`.
struct GeluGrad<const TANH: bool>;

impl<const TANH: bool> CustomOp2 for GeluGrad<TANH> {
    fn name(&self) -> &'static str {
        if TANH {
            "rmroute-gelu-tanh-grad"
        } else {
            "rmroute-gelu-erf-grad"
        }
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
                || backward::<TANH>(out, x, g),
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

    /// The tanh form against candle's `gelu` (the same formula) and, for the gradient, candle's autograd
    /// and central differences of the formula in f64.
    #[test]
    fn tanh_form_matches_candles_gelu_and_its_gradient_finite_differences() -> Result<()> {
        let values = inputs();
        let x = Tensor::new(values.as_slice(), &Device::Cpu)?;
        let ours = gelu_tanh(&x)?.to_vec1::<f32>()?;
        let theirs = x.gelu()?.to_vec1::<f32>()?;
        for ((a, b), v) in ours.iter().zip(&theirs).zip(&values) {
            assert!((a - b).abs() <= 5e-7 * v.abs().max(1.0), "gelu_new({v}): {a} vs {b}");
        }
        let strided = Tensor::new(&[[-1f32, 0.5, 2.0], [3.0, -0.25, 0.0]], &Device::Cpu)?.t()?;
        let diff = (gelu_tanh(&strided)? - strided.gelu()?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");

        let var = Var::new(values.as_slice(), &Device::Cpu)?;
        let weights = Tensor::new(values.iter().map(|v| 1.0 + 0.1 * v).collect::<Vec<f32>>().as_slice(), &Device::Cpu)?;
        let loss = |x: &Tensor, fused: bool| -> Result<Tensor> {
            let y = if fused { gelu_tanh(x)? } else { x.gelu()? };
            (y * &weights)?.sum_all()
        };
        let ours = loss(var.as_tensor(), true)?.backward()?.get(&var).expect("a gradient").to_vec1::<f32>()?;
        let theirs = loss(var.as_tensor(), false)?.backward()?.get(&var).expect("a gradient").to_vec1::<f32>()?;
        let f = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
        let h = 1e-3f64;
        for (i, &v) in values.iter().enumerate() {
            assert!((ours[i] - theirs[i]).abs() < 1e-5, "d/dx at {v}: {} vs candle's {}", ours[i], theirs[i]);
            let v = f64::from(v);
            let numeric = (f(v + h) - f(v - h)) / (2.0 * h) * (1.0 + 0.1 * v);
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
