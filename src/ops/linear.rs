//! `x·Wᵀ + b` as one fused CPU op with its own backward pass.
//!
//! As two candle ops (a matmul, then a broadcast add) the layer keeps its bias-less product alive for
//! the backward pass beside its output, one more activation-sized tensor per layer, and makes one more
//! pass over memory. Here gemm writes the product onto rows that already hold the bias, and the graph
//! keeps only the input and the output. The backward is two matmuls and a column sum:
//! `dx = dy·W`, `dW = dyᵀ·x`, `db = Σ dy`. Other devices and dtypes use candle's ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{contiguous, rows_per_task};

/// `x (rows, in) · weight (out, in)ᵀ + bias (out)` for a 2-D `x`.
pub fn linear_2d(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let fused = x.device().is_cpu() && [x, weight, bias].iter().all(|t| t.dtype() == DType::F32);
    if !fused {
        return x.matmul(&weight.t()?)?.broadcast_add(bias);
    }
    let (_, in_dim) = x.dims2()?;
    let (out_dim, w_in) = weight.dims2()?;
    if w_in != in_dim || bias.dims() != [out_dim] {
        candle_core::bail!("linear: input {:?}, weight {:?}, bias {:?}", x.dims(), weight.dims(), bias.dims());
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "rmroute-linear"
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
        let x = contiguous::<f32>(s1, l1, self.name())?;
        let weight = contiguous::<f32>(s2, l2, self.name())?;
        let bias = contiguous::<f32>(s3, l3, self.name())?;
        let (rows, k) = l1.shape().dims2()?;
        let n = bias.len();
        if x.len() != rows * k || weight.len() != n * k {
            candle_core::bail!("{}: sizes do not match", self.name());
        }
        let mut out = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            out.extend_from_slice(bias);
        }
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        if rows > 0 && n > 0 {
            // SAFETY: `out` is rows × n, `x` rows × k and `weight` n × k, all row-major and contiguous;
            // the strides below describe exactly those (Wᵀ read from W's rows).
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    true, // onto the bias already in `out`
                    x.as_ptr(),
                    1,
                    k as isize,
                    weight.as_ptr(),
                    k as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Only what the graph tracks: a frozen weight (LoRA's base) costs no matmul and gets no gradient.
        let grad = grad.contiguous()?;
        let dx = x.track_op().then(|| grad.matmul(&weight.detach())).transpose()?;
        let dw = weight.track_op().then(|| grad.t()?.matmul(&x.detach())).transpose()?;
        let db = bias.track_op().then(|| grad.apply_op1_no_bwd(&ColumnSums)).transpose()?;
        Ok((dx, dw, db))
    }
}

/// The sums of a `(rows, n)` matrix's columns, `(n)`: the bias gradient. candle's `sum(0)` walks the
/// matrix element by element with index arithmetic (about 5% of a MiniLM training step in `perf`);
/// here each task adds its rows into a vector of partial sums, and the partials add in task order, so
/// the result does not depend on the thread count.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "rmroute-column-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = contiguous::<f32>(storage, layout, self.name())?;
        let (_, n) = layout.shape().dims2()?;
        let mut sums = vec![0f32; n];
        if n > 0 {
            let partials: Vec<Vec<f32>> = m
                .par_chunks(rows_per_task(n) * n)
                .map(|rows| {
                    let mut partial = vec![0f32; n];
                    for row in rows.chunks_exact(n) {
                        partial.iter_mut().zip(row).for_each(|(p, x)| *p += x);
                    }
                    partial
                })
                .collect();
            for partial in partials {
                sums.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
            }
        }
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Output and every gradient against candle's matmul and broadcast add, on shapes large enough for
    /// gemm's threads and odd enough for its edges, and tall enough for two column-sum tasks; and the
    /// gradient against central differences.
    #[test]
    fn matches_matmul_plus_bias_forward_and_backward() {
        for (rows, k, n) in [(1, 3, 2), (37, 19, 23), (130, 64, 96), (1000, 8, 40)] {
            let x = Var::from_tensor(&random(&[rows, k], 1)).unwrap();
            let w = Var::from_tensor(&random(&[n, k], 2)).unwrap();
            let b = Var::from_tensor(&random(&[n], 3)).unwrap();
            let mix = random(&[rows, n], 4);
            let fused = linear_2d(&x, &w, &b).unwrap();
            let plain = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
            assert!(max_diff(&fused, &plain) < 1e-5, "{rows}x{k}x{n}");
            let loss = |y: &Tensor| (y.sqr().unwrap() * &mix).unwrap().sum_all().unwrap();
            let (ours, theirs) = (loss(&fused).backward().unwrap(), loss(&plain).backward().unwrap());
            for var in [&x, &w, &b] {
                let (a, t) = (ours.get(var.as_tensor()).unwrap(), theirs.get(var.as_tensor()).unwrap());
                let scale = t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(max_diff(a, t) < 1e-5 * scale.max(1.0), "{rows}x{k}x{n}: {:?}", var.dims());
            }
        }
        // Finite differences on the small case, for the weight and the bias.
        let x = random(&[4, 3], 5);
        let (w, b) = (random(&[2, 3], 6), random(&[2], 7));
        for which in 0..2 {
            let loss = |t: &Tensor| {
                let (w, b) = if which == 0 { (t, &b) } else { (&w, t) };
                linear_2d(&x, w, b).unwrap().sqr().unwrap().sum_all().unwrap()
            };
            let input = if which == 0 { &w } else { &b };
            let var = Var::from_tensor(input).unwrap();
            let grad = loss(var.as_tensor()).backward().unwrap().get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let grad = grad.to_vec1::<f32>().unwrap();
            let values = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..values.len() {
                let at = |d: f32| {
                    let mut v = values.clone();
                    v[i] += d;
                    loss(&Tensor::from_vec(v, input.shape(), &Device::Cpu).unwrap()).to_scalar::<f32>().unwrap()
                };
                let numeric = (at(1e-2) - at(-1e-2)) / 2e-2;
                assert!((grad[i] - numeric).abs() < 1e-2, "input {which} element {i}: {} vs {numeric}", grad[i]);
            }
        }
    }
}
