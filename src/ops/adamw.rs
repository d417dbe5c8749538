//! AdamW's per-parameter update as three in-place CPU passes, and the gradient's sum of squares as one.
//!
//! Written with candle's tensor ops, one update takes about seventeen full passes over the parameter,
//! each allocating its output (scaling, the two moments, bias correction, the square root, the decay,
//! the subtraction, then `Var::set`'s copy), and the gradient norm two more. For DeBERTa-v3-base's 184M
//! parameters that is about 13 GB of memory traffic per step. Here the first moment, the second moment
//! and the parameter are each updated where they lie, by the composed ops' formula in f32 (as
//! `torch.optim.AdamW` on f32 parameters; not the same bits, since the composed ops multiply by
//! reciprocals). Other devices and dtypes keep the composed path in `train/optim.rs`.

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::contiguous;
use super::simd;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// Whether the fused passes apply: the parameter, its moments and its gradient all f32 on the CPU.
pub fn applies(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// `Σ g²` in f64, one read of `g`.
pub fn sum_of_squares(g: &Tensor) -> Result<f64> {
    let sum = g.contiguous()?.apply_op1_no_bwd(&SumOfSquares)?;
    sum.to_scalar::<f64>()
}

/// The coefficients of one step: `m ← β₁m + (1−β₁)·c·g`, `v ← β₂v + (1−β₂)·(c·g)²`,
/// `θ ← θ·decay − lr·(m/bc₁)/(√(v/bc₂) + ε)`, with `c` the clipping factor.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub clip: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// `1 − β₁` and `1 − β₂`, computed in f64 (`1 − 0.999f32` is not `0.001f32`).
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    pub eps: f32,
    pub lr: f32,
    /// `1 − lr·weight_decay`, or 1 for parameters without decay.
    pub decay: f32,
}

/// Updates `m`, `v` and `theta` in place from the gradient `g` (all the same shape, contiguous).
pub fn update(theta: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, step: Step) -> Result<()> {
    let g = g.contiguous()?;
    m.inplace_op2(&g, &Moment { decay: step.beta1, weight: step.one_minus_beta1, clip: step.clip, squared: false })?;
    v.inplace_op2(&g, &Moment { decay: step.beta2, weight: step.one_minus_beta2, clip: step.clip, squared: true })?;
    theta.inplace_op3(m, v, &Parameter(step))
}

struct SumOfSquares;

impl CustomOp1 for SumOfSquares {
    fn name(&self) -> &'static str {
        "rmroute-sum-of-squares"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous::<f32>(storage, layout, self.name())?;
        // Each chunk sums in f32 (in vector lanes), chunks add in f64, in a fixed order.
        let partial: Vec<f64> = g
            .par_chunks(CHUNK)
            .map(|c| {
                simd::vectorised(
                    #[inline(always)]
                    || simd::sum_by(c, |x| x * x),
                ) as f64
            })
            .collect();
        Ok((CpuStorage::F64(vec![partial.iter().sum()]), Shape::from(())))
    }
}

/// The mutable f32 slice `layout` covers, contiguous.
fn contiguous_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{op}: f32 only") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("{op}: the tensor must be contiguous"),
    }
}

/// Checks that an operand has as many elements as the tensor updated.
fn same_len(op: &str, dst: &[f32], src: &[f32]) -> Result<()> {
    if dst.len() != src.len() {
        candle_core::bail!("{op}: {} elements against {}", src.len(), dst.len());
    }
    Ok(())
}

/// One moment's update, `moment ← decay·moment + weight·(c·g)` with the square of `c·g` for the
/// second moment.
struct Moment {
    decay: f32,
    weight: f32,
    clip: f32,
    squared: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "rmroute-adamw-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let moment = contiguous_mut(s1, l1, self.name())?;
        let g = contiguous::<f32>(s2, l2, self.name())?;
        same_len(self.name(), moment, g)?;
        let Moment { decay, weight, clip, squared } = *self;
        moment.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(moment, g)| {
            for (m, &g) in moment.iter_mut().zip(g) {
                let g = g * clip;
                *m = *m * decay + (if squared { g * g } else { g }) * weight;
            }
        });
        Ok(())
    }
}

struct Parameter(Step);

impl InplaceOp3 for Parameter {
    fn name(&self) -> &'static str {
        "rmroute-adamw-parameter"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let theta = contiguous_mut(s1, l1, self.name())?;
        let m = contiguous::<f32>(s2, l2, self.name())?;
        let v = contiguous::<f32>(s3, l3, self.name())?;
        same_len(self.name(), theta, m)?;
        same_len(self.name(), theta, v)?;
        let Step { bias_correction1: bc1, bias_correction2: bc2, eps, lr, decay, .. } = self.0;
        theta.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK)).for_each(|((theta, m), v)| {
            for ((theta, &m), &v) in theta.iter_mut().zip(m).zip(v) {
                *theta = *theta * decay - (m / bc1) / ((v / bc2).sqrt() + eps) * lr;
            }
        });
        Ok(())
    }
}
