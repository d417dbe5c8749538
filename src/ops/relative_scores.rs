//! DeBERTa's disentangled attention terms (content-to-position and position-to-content) added onto the
//! attention scores as one fused CPU op, with its own backward pass.
//!
//! transformers computes each term as a batched product against the position projection repeated for
//! every batch row, `(batch·heads, seq, 2·span)`, then gathers `seq` of its `2·span` columns per query.
//! Composed of candle ops that keeps, per layer and term, the repeated projection, the full product,
//! the gather index broadcast to every row, the gathered and the scaled scores: about 250 MB per term
//! for DeBERTa-v3-base at 16 pairs × 128 tokens, which made its training take 1.46× PyTorch's memory
//! (issue 12). Here the graph keeps only the scores it was given, the content rows and the projection
//! once per head; each row's product is formed in a scratch buffer over the columns the index can
//! reach (255 of 512 at 128 tokens), gathered, and dropped. The backward scatters the incoming gradient
//! back into such a buffer and multiplies it out. Other devices and dtypes use the composed ops.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::contiguous;

/// Which side of the attention the content rows are, and so how the index is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Content-to-position: `term[i, j] = query[i] · pos[index[i, j]]`.
    Query,
    /// Position-to-content: `term[i, j] = key[j] · pos[index[j, i]]`.
    Key,
}

impl Side {
    /// The (content row, index column) that score `(i, j)` reads.
    #[inline(always)]
    fn pick(self, i: usize, j: usize) -> (usize, usize) {
        match self {
            Side::Query => (i, j),
            Side::Key => (j, i),
        }
    }
}

/// A `(seq, seq)` table of relative-position rows, with the window of rows it reaches.
#[derive(Clone, Debug)]
pub struct RelativeIndex {
    seq: usize,
    values: Arc<[u32]>,
    /// The lowest position row any entry names, and how many rows from there the entries span.
    lo: usize,
    width: usize,
    tensor: Tensor,
}

impl RelativeIndex {
    /// `values` holds `seq × seq` row numbers, each below `positions` (the projection's row count).
    pub fn new(values: Vec<u32>, seq: usize, positions: usize, device: &Device) -> Result<Self> {
        if values.len() != seq * seq {
            candle_core::bail!("relative index: {} values for {seq} × {seq}", values.len());
        }
        let (lo, hi) = values.iter().fold((u32::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if !values.is_empty() && hi as usize >= positions {
            candle_core::bail!("relative index: row {hi} of a projection with {positions} rows");
        }
        let (lo, width) = if values.is_empty() { (0, 0) } else { (lo as usize, (hi - lo) as usize + 1) };
        let tensor = Tensor::from_slice(&values, (seq, seq), device)?;
        Ok(Self { seq, values: values.into(), lo, width, tensor })
    }

    /// The index as a `(seq, seq)` u32 tensor.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }
}

/// `scores + term / scale`, where for row `r` of `scores (rows, seq, seq)` and `content (rows, seq, d)`
/// the term reads the projection `pos (groups, positions, d)` at group `r % groups` as [`Side`] says.
/// `groups` is the number of heads when the projection is shared by the batch, or `rows` when each
/// row has its own (per-row adapters).
pub fn add_relative_scores(
    scores: &Tensor,
    content: &Tensor,
    pos: &Tensor,
    index: &RelativeIndex,
    side: Side,
    scale: f64,
) -> Result<Tensor> {
    let (rows, seq, seq_k) = scores.dims3()?;
    let (c_rows, c_seq, d) = content.dims3()?;
    let (groups, positions, p_d) = pos.dims3()?;
    let fits = seq == seq_k && c_rows == rows && c_seq == seq && p_d == d && index.seq == seq;
    if !fits || groups == 0 || rows % groups != 0 || index.lo + index.width > positions {
        candle_core::bail!(
            "relative scores: scores {:?}, content {:?}, positions {:?}, index {seq}²",
            scores.dims(),
            content.dims(),
            pos.dims()
        );
    }
    let fused = scores.device().is_cpu() && [scores, content, pos].iter().all(|t| t.dtype() == DType::F32);
    if !fused {
        return composed(scores, content, pos, index, side, scale);
    }
    if rows * seq * d == 0 {
        return Ok(scores.clone()); // nothing to add (a zero head size gives zero terms)
    }
    let op = RelativeScores { index: index.clone(), side, scale: scale as f32, groups, positions, d };
    scores.contiguous()?.apply_op3(&content.contiguous()?, &pos.contiguous()?, op)
}

/// The same with candle's ops, as transformers writes it: the projection repeated for every row, the
/// full product, a gather. The fused op's oracle, and the path for other devices.
fn composed(
    scores: &Tensor,
    content: &Tensor,
    pos: &Tensor,
    index: &RelativeIndex,
    side: Side,
    scale: f64,
) -> Result<Tensor> {
    let (rows, seq, _) = scores.dims3()?;
    let (groups, positions, d) = pos.dims3()?;
    let pos = pos.unsqueeze(0)?.broadcast_as((rows / groups, groups, positions, d))?.reshape((rows, positions, d))?;
    let full = content.matmul(&pos.t()?)?.contiguous()?;
    let gathered = full.gather(&index.tensor.broadcast_as((rows, seq, seq))?.contiguous()?, D::Minus1)?;
    let term = match side {
        Side::Query => gathered,
        Side::Key => gathered.transpose(1, 2)?,
    };
    scores + (term / scale)?
}

#[derive(Clone)]
struct RelativeScores {
    index: RelativeIndex,
    side: Side,
    scale: f32,
    groups: usize,
    positions: usize,
    d: usize,
}

impl RelativeScores {
    fn seq(&self) -> usize {
        self.index.seq
    }

    /// The window of group `group`'s projection the index reaches: `width × d` rows from `lo`.
    fn window<'a>(&self, pos: &'a [f32], group: usize) -> &'a [f32] {
        let start = (group * self.positions + self.index.lo) * self.d;
        &pos[start..start + self.index.width * self.d]
    }

    /// Scatters one row's score gradient `grad (seq, seq)` into `m (seq, width)`, divided by the scale:
    /// the gradient of the row's product over the window.
    fn scatter(&self, grad: &[f32], m: &mut [f32]) {
        let (seq, w, lo) = (self.seq(), self.index.width, self.index.lo);
        m.fill(0.0);
        for i in 0..seq {
            for j in 0..seq {
                let (a, b) = self.side.pick(i, j);
                m[a * w + self.index.values[a * seq + b] as usize - lo] += grad[i * seq + j] / self.scale;
            }
        }
    }
}

/// `dst (m × n) = lhs (m × k) · rhs (k × n)` (or `+=` with `accumulate`), single-threaded (callers run
/// one per task), with each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let reach = |rs: usize, cs: usize, rows: usize, cols: usize| (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
    assert!(m * n == 0 || reach(dst_rs, 1, m, n) < dst.len(), "product: destination too short");
    assert!(m <= 1 || dst_rs >= n, "product: destination rows overlap");
    assert!(m * k == 0 || reach(lhs_rs, lhs_cs, m, k) < lhs.len(), "product: left operand too short");
    assert!(k * n == 0 || reach(rhs_rs, rhs_cs, k, n) < rhs.len(), "product: right operand too short");
    if m * n == 0 {
        return;
    }
    // SAFETY: the asserts above check that every element the strides address lies inside its slice,
    // and that no two destination elements share an address.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl CustomOp3 for RelativeScores {
    fn name(&self) -> &'static str {
        "rmroute-relative-scores"
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
        let scores = contiguous::<f32>(s1, l1, self.name())?;
        let content = contiguous::<f32>(s2, l2, self.name())?;
        let pos = contiguous::<f32>(s3, l3, self.name())?;
        let (seq, w, lo, d) = (self.seq(), self.index.width, self.index.lo, self.d);
        let rows = scores.len() / (seq * seq);
        if content.len() != rows * seq * d || pos.len() != self.groups * self.positions * d {
            candle_core::bail!("{}: sizes do not match", self.name());
        }
        let mut out = scores.to_vec();
        out.par_chunks_mut(seq * seq).enumerate().for_each_init(
            || vec![0f32; seq * w],
            |m, (r, out)| {
                let rhs = self.window(pos, r % self.groups);
                product((seq, w, d), m, w, false, &content[r * seq * d..(r + 1) * seq * d], (d, 1), rhs, (1, d));
                for i in 0..seq {
                    for j in 0..seq {
                        let (a, b) = self.side.pick(i, j);
                        out[i * seq + j] += m[a * w + self.index.values[a * seq + b] as usize - lo] / self.scale;
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        content: &Tensor,
        pos: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_scores = scores.track_op().then(|| grad.clone());
        let d_content =
            content.track_op().then(|| grad.apply_op2_no_bwd(&pos.detach(), &ContentGrad(self.clone()))).transpose()?;
        let d_pos = pos
            .track_op()
            .then(|| grad.apply_op2_no_bwd(&content.detach(), &PositionGrad(self.clone())))
            .transpose()?;
        Ok((d_scores, d_content, d_pos))
    }
}

/// `(grad of the scores, pos) → grad of the content rows`: each row's scattered gradient times the
/// projection's window.
struct ContentGrad(RelativeScores);

impl CustomOp2 for ContentGrad {
    fn name(&self) -> &'static str {
        "rmroute-relative-scores-content-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let grad = contiguous::<f32>(s1, l1, self.name())?;
        let pos = contiguous::<f32>(s2, l2, self.name())?;
        let (seq, w, d) = (op.seq(), op.index.width, op.d);
        let rows = grad.len() / (seq * seq);
        let mut out = vec![0f32; rows * seq * d];
        out.par_chunks_mut(seq * d).enumerate().for_each_init(
            || vec![0f32; seq * w],
            |m, (r, out)| {
                op.scatter(&grad[r * seq * seq..(r + 1) * seq * seq], m);
                product((seq, d, w), out, d, false, m, (w, 1), op.window(pos, r % op.groups), (d, 1));
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((rows, seq, d))))
    }
}

/// `(grad of the scores, content) → grad of the projection`: for each group, the sum over its rows of
/// the scattered gradient (transposed) times the row's content, in the window's rows; zero elsewhere.
/// Each group's rows are summed in order, so the result does not depend on the thread count.
struct PositionGrad(RelativeScores);

impl CustomOp2 for PositionGrad {
    fn name(&self) -> &'static str {
        "rmroute-relative-scores-position-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let grad = contiguous::<f32>(s1, l1, self.name())?;
        let content = contiguous::<f32>(s2, l2, self.name())?;
        let (seq, w, lo, d) = (op.seq(), op.index.width, op.index.lo, op.d);
        let rows = grad.len() / (seq * seq);
        let mut out = vec![0f32; op.groups * op.positions * d];
        out.par_chunks_mut(op.positions * d).enumerate().for_each(|(group, out)| {
            let mut m = vec![0f32; seq * w];
            let window = &mut out[lo * d..(lo + w) * d];
            for r in (group..rows).step_by(op.groups) {
                op.scatter(&grad[r * seq * seq..(r + 1) * seq * seq], &mut m);
                product((w, d, seq), window, d, true, &m, (1, w), &content[r * seq * d..(r + 1) * seq * d], (d, 1));
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((op.groups, op.positions, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// DeBERTa's index for `seq` tokens over `2·span` rows: `i − j + span` for c2p, `j − i + span` for
    /// p2c, clamped; here with a coarse bucketing so that some rows repeat and the window is narrower
    /// than the projection.
    fn index(seq: usize, span: i64, side: Side) -> RelativeIndex {
        let mut values = Vec::new();
        for i in 0..seq as i64 {
            for j in 0..seq as i64 {
                let rel = (i - j) / 2 * 2; // buckets of two
                let rel = if side == Side::Query { rel } else { -rel };
                values.push((rel + span).clamp(0, 2 * span - 1) as u32);
            }
        }
        RelativeIndex::new(values, seq, 2 * span as usize + 3, &Device::Cpu).unwrap()
    }

    /// Output and every gradient against the composed candle ops (the transformers formulation), for
    /// both sides, a projection shared by heads and one per row, on shapes that exercise gemm's edges.
    #[test]
    fn matches_the_composed_ops_forward_and_backward() {
        for side in [Side::Query, Side::Key] {
            for (rows, groups, seq, d, span) in
                [(1, 1, 1, 1, 1), (6, 3, 7, 5, 4), (4, 2, 7, 5, 20), (8, 8, 19, 16, 6), (24, 12, 33, 8, 20)]
            {
                let index = index(seq, span, side);
                let positions = 2 * span as usize + 3;
                let scores = Var::from_tensor(&random(&[rows, seq, seq], 1)).unwrap();
                let content = Var::from_tensor(&random(&[rows, seq, d], 2)).unwrap();
                let pos = Var::from_tensor(&random(&[groups, positions, d], 3)).unwrap();
                let mix = random(&[rows, seq, seq], 4);
                let fused = add_relative_scores(&scores, &content, &pos, &index, side, 2.5).unwrap();
                let plain = composed(&scores, &content, &pos, &index, side, 2.5).unwrap();
                let case = format!("{side:?} rows {rows} groups {groups} seq {seq} d {d}");
                assert!(max_abs(&(&fused - &plain).unwrap()) < 1e-5, "{case}");
                let loss = |y: &Tensor| (y.sqr().unwrap() * &mix).unwrap().sum_all().unwrap();
                let (ours, theirs) = (loss(&fused).backward().unwrap(), loss(&plain).backward().unwrap());
                for var in [&scores, &content, &pos] {
                    let (a, t) = (ours.get(var.as_tensor()).unwrap(), theirs.get(var.as_tensor()).unwrap());
                    let diff = max_abs(&(a - t).unwrap());
                    assert!(diff < 1e-5 * max_abs(t).max(1.0), "{case}: {:?} off by {diff}", var.dims());
                }
            }
        }
    }

    /// The content's and the projection's gradients against central differences, on both sides, with
    /// a shared projection summed over rows and an index whose window starts past row 0 (as DeBERTa's
    /// does for sequences shorter than the span).
    #[test]
    fn gradients_match_finite_differences() {
        let (rows, groups, seq, d, span) = (4, 2, 5, 3, 6);
        let positions = 2 * span as usize + 3;
        for side in [Side::Query, Side::Key] {
            let index = index(seq, span, side);
            assert!(index.lo > 0, "the window starts at row {}", index.lo);
            let scores = random(&[rows, seq, seq], 5);
            let inputs = [random(&[rows, seq, d], 6), random(&[groups, positions, d], 7)];
            for which in 0..2 {
                let loss = |t: &Tensor| {
                    let (content, pos) = if which == 0 { (t, &inputs[1]) } else { (&inputs[0], t) };
                    let y = add_relative_scores(&scores, content, pos, &index, side, 1.5).unwrap();
                    (y.sqr().unwrap() * 0.5).unwrap().sum_all().unwrap()
                };
                let var = Var::from_tensor(&inputs[which]).unwrap();
                let grad =
                    loss(var.as_tensor()).backward().unwrap().get(var.as_tensor()).unwrap().flatten_all().unwrap();
                let grad = grad.to_vec1::<f32>().unwrap();
                let values = inputs[which].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for i in 0..values.len() {
                    let at = |delta: f32| {
                        let mut v = values.clone();
                        v[i] += delta;
                        let t = Tensor::from_vec(v, inputs[which].shape(), &Device::Cpu).unwrap();
                        loss(&t).to_scalar::<f32>().unwrap()
                    };
                    let numeric = (at(1e-2) - at(-1e-2)) / 2e-2;
                    let case = format!("{side:?} input {which} element {i}: {} vs {numeric}", grad[i]);
                    assert!((grad[i] - numeric).abs() < 2e-2 * numeric.abs().max(1.0), "{case}");
                    if which == 1 {
                        // exactly the rows the index names have a gradient
                        let row = (i / d) % positions;
                        assert_eq!(grad[i] != 0.0, index.values.contains(&(row as u32)), "{case} (row {row})");
                    }
                }
            }
        }
    }

    /// An index naming a row past the projection is refused, not read out of bounds.
    #[test]
    fn an_index_past_the_projection_is_refused() {
        assert!(RelativeIndex::new(vec![0, 1, 2, 9], 2, 9, &Device::Cpu).is_err());
        let index = RelativeIndex::new(vec![0, 1, 2, 8], 2, 9, &Device::Cpu).unwrap();
        let (scores, content, pos) = (random(&[2, 2, 2], 1), random(&[2, 2, 3], 2), random(&[1, 8, 3], 3));
        assert!(add_relative_scores(&scores, &content, &pos, &index, Side::Query, 1.0).is_err());
    }
}
