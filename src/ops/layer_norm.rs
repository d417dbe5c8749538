//! Layer normalisation over the last dimension as one fused CPU op with its own backward pass.
//!
//! candle 0.11.1's fused layer norm passes no gradient (STYLE.md §8), and composed of ops it keeps five
//! full-size tensors per call alive for the backward pass (centred, squared, normalised, scaled,
//! shifted) and makes as many passes over memory. Here the graph holds the input and the output only;
//! the backward recomputes each row's mean and spread from the input. The weight's and bias's
//! gradients are summed over rows in a fixed order, so a seeded run gives the same numbers on any
//! number of threads. Other devices and dtypes use the composed ops.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{contiguous, rows_per_task};
use super::simd;

/// `(x − mean) / √(var + eps) · weight + bias` over the last dimension.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let fused = x.device().is_cpu() && [x, weight, bias].iter().all(|t| t.dtype() == DType::F32);
    if !fused {
        return composed(x, weight, bias, eps);
    }
    let n = x.dim(D::Minus1)?;
    if weight.dims() != [n] || bias.dims() != [n] {
        candle_core::bail!("layer norm over {n} features with weight {:?} and bias {:?}", weight.dims(), bias.dims());
    }
    if n == 0 {
        candle_core::bail!("layer norm over zero features");
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNorm { eps: eps as f32 })
}

/// The same from candle's ops (the path off the CPU, and the fused op's oracle).
pub fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)?.broadcast_add(bias)
}

/// A row's mean and `√(var + eps)`.
#[inline(always)]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = simd::sum_by(row, |v| v) / n;
    let var = simd::sum_by(row, |v| (v - mean) * (v - mean)) / n;
    (mean, (var + eps).sqrt())
}

/// One task's output rows (vectorised when run inside [`simd::vectorised`]).
#[inline(always)]
fn forward_rows(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (out, row) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let (mean, spread) = moments(row, eps);
        for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
            *o = (v - mean) / spread * w + b;
        }
    }
}

/// One task's input-gradient rows into `dx`, and its partial sums of the weight's and the bias's
/// gradients.
#[inline(always)]
fn backward_rows(x: &[f32], weight: &[f32], grad: &[f32], eps: f32, dx: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
    let n = weight.len();
    let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
    let (mut normed, mut gw) = (vec![0f32; n], vec![0f32; n]);
    for ((dx, row), g) in dx.chunks_exact_mut(n).zip(x.chunks_exact(n)).zip(grad.chunks_exact(n)) {
        let (mean, spread) = moments(row, eps);
        for j in 0..n {
            normed[j] = (row[j] - mean) / spread;
            gw[j] = g[j] * weight[j];
            dw[j] += g[j] * normed[j];
            db[j] += g[j];
        }
        let (mean_g, mean_gx) = (simd::sum(&gw) / n as f32, simd::dot(&gw, &normed) / n as f32);
        for j in 0..n {
            dx[j] = (gw[j] - mean_g - normed[j] * mean_gx) / spread;
        }
    }
    (dw, db)
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "rmroute-layer-norm"
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
        let n = weight.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(rows_per_task(n) * n).zip(x.par_chunks(rows_per_task(n) * n)).for_each(|(out, x)| {
            simd::vectorised(
                #[inline(always)]
                || forward_rows(x, weight, bias, self.eps, out),
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = weight.elem_count();
        let rows = x.elem_count() / n.max(1);
        // One op computes all three: the input's gradient in the first rows, then the weight's and bias's.
        let all = x.apply_op3_no_bwd(weight, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(n)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(n)?;
        // Frozen parameters (LoRA training) get no gradient.
        let tracked = |t: &Tensor, g: Tensor| t.track_op().then_some(g);
        Ok((tracked(x, dx), tracked(weight, dw), tracked(bias, db)))
    }
}

/// `(x, weight, grad) → [dx rows; dweight; dbias]` as one `(rows + 2, n)` tensor. With `x̂` the
/// normalised row and `g = grad · weight`: `dx = (g − mean(g) − x̂ · mean(g · x̂)) / √(var + eps)`,
/// `dweight = Σ grad · x̂`, `dbias = Σ grad` over rows.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "rmroute-layer-norm-grad"
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
        let grad = contiguous::<f32>(s3, l3, self.name())?;
        let n = weight.len();
        if grad.len() != x.len() || x.len() % n.max(1) != 0 {
            candle_core::bail!("{}: {} gradients for {} inputs of width {n}", self.name(), grad.len(), x.len());
        }
        let rows = x.len() / n.max(1);
        let per_task = rows_per_task(n) * n;
        let mut dx = vec![0f32; x.len()];
        // Each task's partial sums for the weight and bias, added up below in task order.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(per_task)
            .zip(x.par_chunks(per_task).zip(grad.par_chunks(per_task)))
            .map(|(dx, (x, grad))| {
                simd::vectorised(
                    #[inline(always)]
                    || backward_rows(x, weight, grad, self.eps, dx),
                )
            })
            .collect();
        let mut out = dx;
        out.resize((rows + 2) * n, 0.0);
        for (dw, db) in &partials {
            for j in 0..n {
                out[rows * n + j] += dw[j];
                out[(rows + 1) * n + j] += db[j];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64, spread: f32) -> Tensor {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-spread..spread)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_the_composed_ops() {
        let (w, b) = (random(&[7], 2, 2.0), random(&[7], 3, 1.0));
        // An offset and a wide spread, and a strided input made contiguous first.
        let x = (random(&[3, 4, 7], 1, 5.0) + 3.0).unwrap();
        assert!(max_diff(&layer_norm(&x, &w, &b, 1e-5).unwrap(), &composed(&x, &w, &b, 1e-5).unwrap()) < 1e-5);
        let t = random(&[7, 6], 4, 1.0).t().unwrap();
        assert!(max_diff(&layer_norm(&t, &w, &b, 1e-7).unwrap(), &composed(&t, &w, &b, 1e-7).unwrap()) < 1e-5);
    }

    /// Every gradient (input, weight, bias) against candle's autograd of the composed ops and against
    /// central differences.
    #[test]
    fn gradients_match_autograd_and_finite_differences() {
        let x = Var::from_tensor(&random(&[2, 3, 6], 5, 2.0)).unwrap();
        let w = Var::from_tensor(&random(&[6], 6, 2.0)).unwrap();
        let b = Var::from_tensor(&random(&[6], 7, 1.0)).unwrap();
        let mix = random(&[2, 3, 6], 8, 1.0);
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor, fused: bool| {
            let y = if fused { layer_norm(x, w, b, 1e-5) } else { composed(x, w, b, 1e-5) }.unwrap();
            // A non-linear loss, so the gradient is not the same for every element.
            ((y.sqr().unwrap() * 0.3).unwrap() + (y * &mix).unwrap()).unwrap().sum_all().unwrap()
        };
        let ours = loss(&x, &w, &b, true).backward().unwrap();
        let theirs = loss(&x, &w, &b, false).backward().unwrap();
        let vars = [&x, &w, &b];
        for (k, var) in vars.iter().enumerate() {
            let get = |g: &candle_core::backprop::GradStore| {
                g.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            let (a, t) = (get(&ours), get(&theirs));
            let values = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..values.len() {
                assert!(
                    (a[i] - t[i]).abs() < 1e-4 * t[i].abs().max(1.0),
                    "input {k}, element {i}: {} vs {}",
                    a[i],
                    t[i]
                );
                let at = |delta: f32| {
                    let mut v = values.clone();
                    v[i] += delta;
                    let moved = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    let mut args = [x.as_tensor().clone(), w.as_tensor().clone(), b.as_tensor().clone()];
                    args[k] = moved;
                    loss(&args[0], &args[1], &args[2], true).to_scalar::<f32>().unwrap()
                };
                let h = 1e-2f32;
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (a[i] - numeric).abs() < 5e-3 * numeric.abs().max(1.0),
                    "input {k}, element {i}: {} vs {numeric}",
                    a[i]
                );
            }
        }
    }
}
