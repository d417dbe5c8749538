//! Attention probabilities as one fused CPU op: `dropout(softmax(masked(scores / scale)))`, with its own
//! backward pass.
//!
//! Composed of candle ops this chain keeps six full `(batch, heads, seq, seq)` tensors alive for the
//! backward pass (the scaled scores, the masked ones, softmax's three intermediates and the dropout
//! mask), the largest share of a training step's memory; here the graph holds only the scores it was
//! given and the output, the dropout mask is kept as bits, and the backward recomputes the softmax from
//! the scores. Masked keys get the dtype's lowest value before the softmax, as transformers masks them
//! (a row with no key left is uniform, as there); their gradient is zero. The dropout mask is the
//! caller's (drawn for every score, as plain dropout draws it), so a seeded run keeps its masks. Other
//! devices and dtypes use the composed ops ([`composed`]), which are also the tests' oracle.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{contiguous, rows_per_task};
use super::dropout::DropoutMask;
use super::simd;

/// `dropout(softmax(scores / scale with masked keys at the lowest value))` over the last dimension.
///
/// `scores` is `(batch, heads, queries, keys)`; `keep` is `(batch, 1, 1, keys)` (a key mask) or
/// `(batch, 1, queries, keys)` (a mask per query), any type, non-zero where attention may go;
/// `dropout` masks the probabilities (one draw per score), none in evaluation.
pub fn attention_probs(scores: &Tensor, keep: &Tensor, scale: f64, dropout: Option<&DropoutMask>) -> Result<Tensor> {
    if !(scores.device().is_cpu() && scores.dtype() == DType::F32) {
        return composed(scores, keep, scale, dropout);
    }
    let (batch, heads, queries, keys) = scores.dims4()?;
    let (kb, one, kq, kk) = keep.dims4()?;
    if kb != batch || one != 1 || !(kq == 1 || kq == queries) || kk != keys {
        candle_core::bail!("attention mask {:?} for scores {:?}", keep.dims(), scores.dims());
    }
    if keys == 0 || batch * heads * queries == 0 {
        return scores.zeros_like();
    }
    let keep = keep.to_dtype(DType::U8)?.contiguous()?;
    let op =
        AttentionSoftmax { heads, queries, keys, per_query: kq > 1, scale: scale as f32, dropout: dropout.cloned() };
    scores.contiguous()?.apply_op2(&keep, op)
}

/// The same as candle ops: scale, mask, softmax, dropout.
pub fn composed(scores: &Tensor, keep: &Tensor, scale: f64, dropout: Option<&DropoutMask>) -> Result<Tensor> {
    let masked = masked_fill_min(&(scores / scale)?, keep)?;
    let probs = candle_nn::ops::softmax(&masked, D::Minus1)?;
    match dropout {
        Some(mask) => mask.apply(&probs),
        None => Ok(probs),
    }
}

/// Scores where `keep` is 0 become the dtype's lowest value, as transformers masks attention.
pub fn masked_fill_min(scores: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let keep = keep.broadcast_as(scores.shape())?;
    let min = Tensor::new(f32::MIN, scores.device())?.to_dtype(scores.dtype())?.broadcast_as(scores.shape())?;
    keep.where_cond(scores, &min)
}

#[derive(Clone)]
struct AttentionSoftmax {
    heads: usize,
    queries: usize,
    keys: usize,
    /// The mask has a row per query (else one row per batch item).
    per_query: bool,
    scale: f32,
    dropout: Option<DropoutMask>,
}

impl AttentionSoftmax {
    /// The mask row for score row `row`.
    fn keep_row<'a>(&self, keep: &'a [u8], row: usize) -> &'a [u8] {
        let item = row / (self.heads * self.queries);
        let mask_row = if self.per_query { item * self.queries + row % self.queries } else { item };
        &keep[mask_row * self.keys..(mask_row + 1) * self.keys]
    }

    /// The softmax of one row of scores into `out` (before dropout). Vectorised when run inside
    /// [`simd::vectorised`].
    #[inline(always)]
    fn softmax_row(&self, scores: &[f32], keep: &[u8], out: &mut [f32]) {
        for ((o, &s), &k) in out.iter_mut().zip(scores).zip(keep) {
            *o = if k != 0 { s / self.scale } else { f32::MIN };
        }
        let max = simd::max(out);
        for o in out.iter_mut() {
            *o = simd::exp(*o - max);
        }
        let sum = simd::sum(out);
        for o in out.iter_mut() {
            *o /= sum;
        }
    }

    /// The output rows from `first` on (as many as `out` holds): the softmax, then the dropout mask.
    #[inline(always)]
    fn forward_rows(&self, first: usize, scores: &[f32], keep: &[u8], out: &mut [f32]) {
        let n = self.keys;
        for (r, out) in out.chunks_exact_mut(n).enumerate() {
            let row = first + r;
            self.softmax_row(&scores[row * n..(row + 1) * n], self.keep_row(keep, row), out);
            if let Some(dropout) = &self.dropout {
                for (j, o) in out.iter_mut().enumerate() {
                    *o *= dropout.factor(row * n + j);
                }
            }
        }
    }

    /// The scores' gradient rows from `first` on: `p ⊙ (g − Σ p·g) / scale`.
    #[inline(always)]
    fn backward_rows(&self, first: usize, scores: &[f32], keep: &[u8], grad: &[f32], out: &mut [f32]) {
        let n = self.keys;
        let mut p = vec![0f32; n];
        for (r, out) in out.chunks_exact_mut(n).enumerate() {
            let row = first + r;
            let keep = self.keep_row(keep, row);
            self.softmax_row(&scores[row * n..(row + 1) * n], keep, &mut p);
            let g = &grad[row * n..(row + 1) * n];
            // The gradient through dropout lands in `out` first.
            for (j, (o, &g)) in out.iter_mut().zip(g).enumerate() {
                *o = match &self.dropout {
                    Some(dropout) => g * dropout.factor(row * n + j),
                    None => g,
                };
            }
            let dot = simd::dot(out, &p);
            // A masked key's score never reaches the output (even in a row with no key left).
            for ((o, &p), &k) in out.iter_mut().zip(&p).zip(keep) {
                *o = if k != 0 { p * (*o - dot) / self.scale } else { 0.0 };
            }
        }
    }
}

impl CustomOp2 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "rmroute-attention-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous::<f32>(s1, l1, self.name())?;
        let keep = contiguous::<u8>(s2, l2, self.name())?;
        let n = self.keys;
        let per_task = rows_per_task(n);
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(per_task * n).enumerate().for_each(|(task, out)| {
            simd::vectorised(
                #[inline(always)]
                || self.forward_rows(task * per_task, scores, keep, out),
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        keep: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = scores.apply_op3_no_bwd(keep, &grad.contiguous()?, &AttentionSoftmaxGrad(self.clone()))?;
        Ok((Some(grad), None))
    }
}

/// `(scores, keep, grad of the output) → grad of the scores`: with `p` the softmax recomputed and `g`
/// the incoming gradient through the dropout mask, `p ⊙ (g − Σ p·g) / scale`.
struct AttentionSoftmaxGrad(AttentionSoftmax);

impl CustomOp3 for AttentionSoftmaxGrad {
    fn name(&self) -> &'static str {
        "rmroute-attention-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let scores = contiguous::<f32>(s1, l1, self.name())?;
        let keep = contiguous::<u8>(s2, l2, self.name())?;
        let grad = contiguous::<f32>(s3, l3, self.name())?;
        if grad.len() != scores.len() {
            candle_core::bail!("{}: {} gradients for {} scores", self.name(), grad.len(), scores.len());
        }
        let n = op.keys;
        let per_task = rows_per_task(n);
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(per_task * n).enumerate().for_each(|(task, out)| {
            simd::vectorised(
                #[inline(always)]
                || op.backward_rows(task * per_task, scores, keep, grad, out),
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A key mask with the last keys of the second item masked; a per-query mask with a row that masks
    /// every key; and a decoder's causal mask (query q sees keys up to q + 2, as after two earlier
    /// tokens) with the second item left-padded by one key, as GPT-2 builds it.
    fn masks() -> [Tensor; 3] {
        let keys = Tensor::new(&[[1u8, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &Device::Cpu).unwrap().reshape((2, 1, 1, 5));
        let mut per_query = vec![1u8; 2 * 3 * 5];
        per_query[5..10].fill(0);
        per_query[20] = 0;
        let per_query = Tensor::from_vec(per_query, (2, 1, 3, 5), &Device::Cpu).unwrap();
        let mut causal = vec![0u8; 2 * 3 * 5];
        for (item, q, k) in (0..2).flat_map(|i| (0..3).flat_map(move |q| (0..5).map(move |k| (i, q, k)))) {
            causal[(item * 3 + q) * 5 + k] = u8::from(k <= q + 2 && !(item == 1 && k == 0));
        }
        let causal = Tensor::from_vec(causal, (2, 1, 3, 5), &Device::Cpu).unwrap();
        [keys.unwrap(), per_query, causal]
    }

    /// A dropout mask for every score of `shape`, drawn from `seed` (none for `p` = 0).
    fn mask(shape: &[usize], p: f32, seed: u64) -> Option<DropoutMask> {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut draws = vec![0u32; shape.iter().product()];
        StdRng::seed_from_u64(seed).fill(&mut draws[..]);
        (p > 0.0).then(|| DropoutMask::from_draws(&draws, p))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Equal to candle's ops, masks and dropout included (the same seed draws the same mask).
    #[test]
    fn matches_the_composed_ops() {
        let scores = random(&[2, 2, 3, 5], 1);
        for keep in masks() {
            for (dropout, train) in [(0.0, false), (0.3, true)] {
                let drop = mask(scores.dims(), if train { dropout } else { 0.0 }, 9);
                let fused = attention_probs(&scores, &keep, 2.0, drop.as_ref()).unwrap();
                let want = composed(&scores, &keep, 2.0, drop.as_ref()).unwrap();
                let diff = max_diff(&fused, &want);
                assert!(diff < 1e-6, "dropout {dropout}: differs by {diff}");
            }
        }
    }

    /// The gradient against candle's autograd of the composed ops and against central differences.
    #[test]
    fn gradient_matches_autograd_and_finite_differences() {
        let scores = Var::from_tensor(&random(&[2, 2, 3, 5], 2)).unwrap();
        let weights = random(&[2, 2, 3, 5], 3);
        for keep in masks() {
            for dropout in [0.0, 0.4] {
                let loss = |s: &Tensor, fused: bool| {
                    let drop = mask(s.dims(), dropout, 5);
                    let p = if fused {
                        attention_probs(s, &keep, 1.5, drop.as_ref()).unwrap()
                    } else {
                        composed(s, &keep, 1.5, drop.as_ref()).unwrap()
                    };
                    (p * &weights).unwrap().sum_all().unwrap()
                };
                let ours = loss(scores.as_tensor(), true).backward().unwrap();
                let ours = ours.get(scores.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let theirs = loss(scores.as_tensor(), false).backward().unwrap();
                let theirs = theirs.get(scores.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let values = scores.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let h = 1e-2f32;
                for i in 0..values.len() {
                    assert!((ours[i] - theirs[i]).abs() < 1e-5, "element {i}: {} vs autograd {}", ours[i], theirs[i]);
                    let at = |delta: f32| {
                        let mut v = values.clone();
                        v[i] += delta;
                        let t = Tensor::from_vec(v, scores.shape(), &Device::Cpu).unwrap();
                        loss(&t, true).to_scalar::<f32>().unwrap()
                    };
                    let numeric = (at(h) - at(-h)) / (2.0 * h);
                    assert!(
                        (ours[i] - numeric).abs() < 2e-3,
                        "element {i}: {} vs finite difference {numeric}",
                        ours[i]
                    );
                }
            }
        }
    }
}
