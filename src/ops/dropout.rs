//! Inverted dropout as a fused CPU op whose mask is kept as bits.
//!
//! `x * mask` of candle ops keeps a full f32 mask alive for the backward pass beside the output; here
//! the mask is one bit per element inside the op (32 times smaller), and the backward multiplies the
//! gradient by it. The draws are the pass's seeded RNG's, in the same order as before, so a seeded
//! run keeps its masks and its numbers.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::contiguous;
use super::simd;

/// Which elements are kept (as bits), and what a kept element is multiplied by: `1 / (1 − p)`.
#[derive(Debug, Clone)]
pub struct DropoutMask {
    bits: Arc<Vec<u64>>,
    scale: f32,
}

impl DropoutMask {
    /// A mask for `n` elements from raw 32-bit draws: an element is kept when its draw is below
    /// `(1 − p)·2³²`.
    pub fn from_draws(draws: &[u32], p: f32) -> Self {
        let threshold = (f64::from(1.0 - p) * 4_294_967_296.0) as u64;
        let bits = draws
            .chunks(64)
            .map(|draws| {
                draws.iter().enumerate().fold(0u64, |w, (k, &d)| w | (u64::from(u64::from(d) < threshold) << k))
            })
            .collect();
        Self { bits: Arc::new(bits), scale: 1.0 / (1.0 - p) }
    }

    /// What element `i` is multiplied by: `1 / (1 − p)` or 0.
    #[inline]
    pub fn factor(&self, i: usize) -> f32 {
        if self.bits[i / 64] >> (i % 64) & 1 == 1 {
            self.scale
        } else {
            0.0
        }
    }

    /// `x` times the mask, with the gradient: fused on the CPU for f32, candle's product elsewhere.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return x.contiguous()?.apply_op1(Dropout(self.clone()));
        }
        let n = x.elem_count();
        let mask: Vec<f32> = (0..n).map(|i| self.factor(i)).collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
    }
}

/// Elements per parallel task (a multiple of 64, so tasks start on a whole word of bits).
const CHUNK: usize = 1 << 15;

/// `out = x · factor` for one task, a word of mask bits per 64 elements (the same products as
/// [`DropoutMask::factor`] gives, without its per-element indexing).
#[inline(always)]
fn multiply_words(words: &[u64], scale: f32, x: &[f32], out: &mut [f32]) {
    for ((out, x), &word) in out.chunks_mut(64).zip(x.chunks(64)).zip(words) {
        for (k, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            *o = v * if (word >> k) & 1 == 1 { scale } else { 0.0 };
        }
    }
}

struct Dropout(DropoutMask);

impl Dropout {
    fn multiply(&self, x: &[f32]) -> Result<Vec<f32>> {
        if x.len() > self.0.bits.len() * 64 {
            candle_core::bail!("dropout: a mask of {} bits for {} elements", self.0.bits.len() * 64, x.len());
        }
        let mut out = vec![0f32; x.len()];
        let mask = &self.0;
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).enumerate().for_each(|(task, (out, x))| {
            let words = &mask.bits[task * CHUNK / 64..];
            simd::vectorised(
                #[inline(always)]
                || multiply_words(words, mask.scale, x, out),
            )
        });
        Ok(out)
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "rmroute-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(storage, layout, self.name())?;
        Ok((CpuStorage::F32(self.multiply(x)?), layout.shape().clone()))
    }

    /// The gradient is the incoming one times the same mask.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&DropoutGrad(self.0.clone()))?))
    }
}

struct DropoutGrad(DropoutMask);

impl CustomOp1 for DropoutGrad {
    fn name(&self) -> &'static str {
        "rmroute-dropout-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = contiguous::<f32>(storage, layout, self.name())?;
        Ok((CpuStorage::F32(Dropout(self.0.clone()).multiply(grad)?), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same numbers as multiplying by the f32 mask, forward and backward, across task boundaries.
    #[test]
    fn equals_the_product_with_the_mask_and_so_does_its_gradient() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let n = CHUNK + 1000;
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<u32> = (0..n).map(|_| rng.random()).collect();
        let mask = DropoutMask::from_draws(&draws, 0.3);
        let x = Var::new((0..n).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>().as_slice(), &Device::Cpu).unwrap();
        let dense: Vec<f32> = (0..n).map(|i| mask.factor(i)).collect();
        for (i, (&f, &d)) in dense.iter().zip(&draws).enumerate() {
            // the threshold as documented, (1 − p)·2³² ((1 − 0.3f32) is 0.69999999, not 0.7): the bit of
            // element i is draw i's
            let threshold = (f64::from(1.0 - 0.3f32) * 4_294_967_296.0) as u64;
            assert_eq!(f > 0.0, u64::from(d) < threshold, "element {i}: draw {d}");
        }
        let kept = dense.iter().filter(|&&f| f > 0.0).count() as f64 / n as f64;
        assert!((kept - 0.7).abs() < 0.02, "kept {kept}");
        let dense = Tensor::from_vec(dense, n, &Device::Cpu).unwrap();
        let weights = x.as_tensor().detach().cos().unwrap();
        let fused = mask.apply(x.as_tensor()).unwrap();
        let product = (x.as_tensor() * &dense).unwrap();
        assert_eq!(fused.to_vec1::<f32>().unwrap(), product.to_vec1::<f32>().unwrap());
        let grad = |y: Tensor| {
            let g = (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(grad(fused), grad(product));
    }
}
