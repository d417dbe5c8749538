//! bf16 scoring (`--dtype bf16`): each linear layer's weight is rounded to bf16 once, and `x·Wᵀ + b` is
//! computed from bf16-rounded inputs with f32 sums, on the AVX-512 BF16 kernel (`ops::bf16`) where the
//! CPU has it, else from candle's f32 matmul on the rounded values. Everything else (attention, layer
//! norm, the reward head) stays f32. Scoring only: no gradient.

use candle_core::{DType, Device, Result, Tensor};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::linear::linear;
use crate::ops::bf16::{kernel_available, matmul_packed, pack, round_to_bf16, Packed};

/// The number format linear layers score in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 weights and inputs, f32 sums: rewards within about 1e-2 of f32.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// A linear layer's weight and bias for bf16 scoring.
#[derive(Debug, Clone)]
pub struct Bf16Linear {
    in_dim: usize,
    out_dim: usize,
    /// The weight as given, `(out, in)` (shared with the layer, not a copy).
    weight: Tensor,
    /// The weight rounded to bf16 and widened back: the portable path, kept only without the kernel.
    rounded: Option<Tensor>,
    bias: Option<Tensor>,
    /// For the AVX-512 BF16 kernel, when this CPU has it.
    packed: Option<Packed>,
}

impl Bf16Linear {
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let (rounded, packed) = if weight.device().is_cpu() && kernel_available() {
            let rows = round_to_bf16(weight)?.to_vec2::<f32>()?;
            (None, Some(pack(&rows, bias.map(|b| b.to_vec1::<f32>()).transpose()?, in_dim)?))
        } else {
            (Some(round_to_bf16(weight)?), None)
        };
        Ok(Self { in_dim, out_dim, weight: weight.clone(), rounded, bias: bias.cloned(), packed })
    }

    /// `round(x)·round(W)ᵀ + b` for `x` of any rank with `in` as its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The kernel's output has no gradient: an input that needs one is training, which runs in f32.
        if x.track_op() {
            candle_core::bail!("bf16 is a scoring mode: train in f32");
        }
        match &self.packed {
            Some(packed) if x.dtype() == DType::F32 && x.device().is_cpu() => self.forward_packed(x, packed),
            _ => self.forward_portable(x),
        }
    }

    /// The same numbers from candle's matmul (up to the order of the sums): the path without the
    /// kernel, and the kernel's oracle in tests.
    pub fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        let rounded = match &self.rounded {
            Some(rounded) => rounded.clone(),
            None => round_to_bf16(&self.weight)?,
        };
        linear(&round_to_bf16(x)?, &rounded, self.bias.as_ref())
    }

    fn forward_packed(&self, x: &Tensor, packed: &Packed) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let Some(last) = dims.last_mut() else { candle_core::bail!("bf16 linear: a scalar input") };
        if *last != self.in_dim {
            candle_core::bail!("bf16 linear: input of {} features for a layer of {}", last, self.in_dim);
        }
        *last = self.out_dim;
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        let rows = x.len() / self.in_dim.max(1);
        let out = matmul_packed(&x, rows, self.in_dim, packed, self.out_dim);
        Tensor::from_vec(out, dims, &Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The kernel against candle's matmul on the rounded values, over shapes that leave partial tiles
    /// (rows not a multiple of 6, columns not of 16 or 64, an odd input width).
    #[test]
    fn kernel_matches_matmul_of_rounded_values() {
        if !kernel_available() {
            eprintln!("no AVX-512 BF16 on this CPU: the portable path is all there is");
            return;
        }
        for (rows, in_dim, out_dim) in [(1, 8, 16), (7, 33, 70), (13, 64, 129), (40, 384, 384), (3, 5, 3)] {
            let x = random(&[rows, in_dim], 1);
            let w = random(&[out_dim, in_dim], 2);
            let b = random(&[out_dim], 3);
            let layer = Bf16Linear::new(&w, Some(&b)).unwrap();
            assert!(layer.packed.is_some());
            let got = layer.forward(&x).unwrap();
            let want = layer.forward_portable(&x).unwrap();
            assert_eq!(got.dims(), &[rows, out_dim]);
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-4, "{rows}x{in_dim}x{out_dim}: differs by {diff}");
        }
    }

    /// Rounding is where bf16's error comes from: the layer differs from f32 by about what bf16's
    /// 8-bit mantissa allows, and not by more.
    #[test]
    fn close_to_f32_as_bf16_allows() {
        let x = random(&[2, 5, 64], 4);
        let w = random(&[32, 64], 5);
        let layer = Bf16Linear::new(&w, None).unwrap();
        let exact = linear(&x, &w, None).unwrap();
        let diff = max_diff(&layer.forward(&x).unwrap(), &exact);
        // Each product is off by at most about 2·2⁻⁹ relative; 64 terms of size ≤ 1.
        assert!(diff > 0.0 && diff < 64.0 * 2.0 * 2f32.powi(-9), "differs by {diff}");
        assert_eq!(layer.forward(&x).unwrap().dims(), &[2, 5, 32]);
    }
}
