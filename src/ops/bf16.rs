//! The bf16 matrix product of `--dtype bf16` scoring: `x·Wᵀ + b` from bf16-rounded inputs and weights
//! with f32 sums. On CPUs with AVX-512 BF16 the products run on its dot-product instruction
//! (`vdpbf16ps`: 32 multiply-adds per instruction, twice an f32 FMA's) from weights packed for it; the
//! layer that uses it (`nn::bf16`) falls back to candle's f32 matmul on the rounded values elsewhere.

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// Output columns per packed panel: one 512-bit register of f32 sums.
const LANES: usize = 16;
/// Rows per register tile: 6 rows x 4 panels keep 24 sums and 4 weight vectors in 28 of 32 registers.
const TILE_ROWS: usize = 6;
const TILE_PANELS: usize = 4;

/// The weight as panels of 16 output columns; in a panel, for each pair of inputs `(2k, 2k+1)`, 16
/// 32-bit words each holding one column's two bf16 weights (`2k` in the low half), as `vdpbf16ps` reads
/// them. Missing columns and an odd input's partner are zero.
#[derive(Debug, Clone)]
pub struct Packed {
    panels: Vec<u32>,
    /// The bias padded to whole panels (zeros without a bias).
    bias: Vec<f32>,
    pairs: usize,
}

/// Each value rounded to the nearest bf16 (ties to even), as f32.
pub fn round_to_bf16(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}

/// True when this CPU runs the AVX-512 BF16 kernel.
pub fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The top 16 bits of an f32 that is already a bf16 value.
fn bf16_bits(x: f32) -> u32 {
    x.to_bits() >> 16
}

/// Packs a weight already rounded to bf16 (its rows) and its bias for the kernel.
pub fn pack(rounded: &[Vec<f32>], bias: Option<Vec<f32>>, in_dim: usize) -> Result<Packed> {
    let out_dim = rounded.len();
    let pairs = in_dim.div_ceil(2);
    let panels_n = out_dim.div_ceil(LANES);
    let mut panels = vec![0u32; panels_n * pairs * LANES];
    for (n, row) in rounded.iter().enumerate() {
        let (panel, lane) = (n / LANES, n % LANES);
        for k in 0..pairs {
            let low = bf16_bits(row[2 * k]);
            let high = row.get(2 * k + 1).map_or(0, |&v| bf16_bits(v));
            panels[(panel * pairs + k) * LANES + lane] = low | (high << 16);
        }
    }
    let mut padded = vec![0f32; panels_n * LANES];
    if let Some(bias) = bias {
        if bias.len() != out_dim {
            candle_core::bail!("bf16 linear: a bias of {} for {} outputs", bias.len(), out_dim);
        }
        padded[..out_dim].copy_from_slice(&bias);
    }
    Ok(Packed { panels, bias: padded, pairs })
}

/// `x (rows, in) · Wᵀ + b` into a new `(rows, out)` buffer, rows split between threads. Only for a
/// `packed` made where [`kernel_available`] is true.
pub fn matmul_packed(x: &[f32], rows: usize, in_dim: usize, packed: &Packed, out_dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * out_dim];
    if rows == 0 || out_dim == 0 {
        return out;
    }
    // Several chunks per thread for balance, each a whole number of register tiles.
    let per_thread = rows.div_ceil(rayon::current_num_threads() * 4);
    let chunk_rows = per_thread.div_ceil(TILE_ROWS).clamp(1, 16) * TILE_ROWS;
    out.par_chunks_mut(chunk_rows * out_dim).enumerate().for_each(|(chunk, out)| {
        let first = chunk * chunk_rows;
        let n = out.len() / out_dim;
        let inputs = pack_rows(&x[first * in_dim..(first + n) * in_dim], n, in_dim, packed.pairs);
        // SAFETY: `packed` exists only when `kernel_available()` said the CPU has AVX-512 F and BF16.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            kernel::rows(&inputs, n, packed, out, out_dim)
        };
    });
    out
}

/// Rows of `x` rounded to bf16 and paired as the kernel broadcasts them: `(x[2k], x[2k+1])` per word.
fn pack_rows(x: &[f32], rows: usize, in_dim: usize, pairs: usize) -> Vec<u32> {
    let mut words = vec![0u32; rows * pairs];
    for (row, out) in x.chunks_exact(in_dim).zip(words.chunks_exact_mut(pairs)) {
        // Whole pairs in a loop the compiler vectorises; an odd last input pairs with zero.
        let (whole, rest) = row.split_at(in_dim & !1);
        for (word, pair) in out.iter_mut().zip(whole.chunks_exact(2)) {
            *word = to_bf16(pair[0]) | (to_bf16(pair[1]) << 16);
        }
        if let Some(&last) = rest.first() {
            out[pairs - 1] = to_bf16(last);
        }
    }
    words
}

/// Round to nearest bf16, ties to even (NaN stays NaN), as `half` and candle round.
#[inline(always)]
fn to_bf16(x: f32) -> u32 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1))) >> 16;
    if x.is_nan() {
        (bits >> 16) | 0x40
    } else {
        rounded
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{Packed, LANES, TILE_PANELS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// All output columns of `rows` packed input rows, tile by tile.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BF16; `inputs` holds `rows * packed.pairs` words and `out`
    /// `rows * out_dim` values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn rows(inputs: &[u32], rows: usize, packed: &Packed, out: &mut [f32], out_dim: usize) {
        let panels = out_dim.div_ceil(LANES);
        let mut panel = 0;
        while panel < panels {
            let take = (panels - panel).min(TILE_PANELS);
            let mut row = 0;
            while row < rows {
                let height = (rows - row).min(TILE_ROWS);
                // Const sizes let the compiler keep every sum in a register.
                match (take, height) {
                    (TILE_PANELS, 6) => tile::<6, TILE_PANELS>(inputs, row, packed, panel, out, out_dim),
                    (TILE_PANELS, 5) => tile::<5, TILE_PANELS>(inputs, row, packed, panel, out, out_dim),
                    (TILE_PANELS, 4) => tile::<4, TILE_PANELS>(inputs, row, packed, panel, out, out_dim),
                    (TILE_PANELS, 3) => tile::<3, TILE_PANELS>(inputs, row, packed, panel, out, out_dim),
                    (TILE_PANELS, 2) => tile::<2, TILE_PANELS>(inputs, row, packed, panel, out, out_dim),
                    (TILE_PANELS, _) => tile::<1, TILE_PANELS>(inputs, row, packed, panel, out, out_dim),
                    (3, _) => tile_narrow::<3>(inputs, row, height, packed, panel, out, out_dim),
                    (2, _) => tile_narrow::<2>(inputs, row, height, packed, panel, out, out_dim),
                    _ => tile_narrow::<1>(inputs, row, height, packed, panel, out, out_dim),
                }
                row += height;
            }
            panel += take;
        }
    }

    /// Rows `row..row + H` by panels `panel..panel + W`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const H: usize, const W: usize>(
        inputs: &[u32],
        row: usize,
        packed: &Packed,
        panel: usize,
        out: &mut [f32],
        out_dim: usize,
    ) {
        let pairs = packed.pairs;
        let mut sums = [[_mm512_setzero_ps(); W]; H];
        for (j, column) in (0..W).enumerate() {
            let bias = _mm512_loadu_ps(packed.bias.as_ptr().add((panel + column) * LANES));
            for sum in sums.iter_mut() {
                sum[j] = bias;
            }
        }
        let a = inputs.as_ptr().add(row * pairs);
        let b = packed.panels.as_ptr().add(panel * pairs * LANES);
        for k in 0..pairs {
            let mut weights = [_mm512_setzero_si512(); W];
            for (j, w) in weights.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(b.add((j * pairs + k) * LANES) as *const _);
            }
            for (i, sum) in sums.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i * pairs + k) as i32));
                for (j, w) in weights.iter().enumerate() {
                    sum[j] = _mm512_dpbf16_ps(sum[j], x, std::mem::transmute::<__m512i, __m512bh>(*w));
                }
            }
        }
        store(&sums, row, panel, out, out_dim);
    }

    /// Fewer than a full tile of panels (the layer's last columns): any number of rows, `W` panels.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_narrow<const W: usize>(
        inputs: &[u32],
        row: usize,
        height: usize,
        packed: &Packed,
        panel: usize,
        out: &mut [f32],
        out_dim: usize,
    ) {
        for r in row..row + height {
            let mut sums = [[_mm512_setzero_ps(); W]; 1];
            tile_row::<W>(inputs, r, packed, panel, &mut sums[0]);
            store(&sums, r, panel, out, out_dim);
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_row<const W: usize>(
        inputs: &[u32],
        row: usize,
        packed: &Packed,
        panel: usize,
        sums: &mut [__m512; W],
    ) {
        let pairs = packed.pairs;
        for (j, sum) in sums.iter_mut().enumerate() {
            *sum = _mm512_loadu_ps(packed.bias.as_ptr().add((panel + j) * LANES));
        }
        let a = inputs.as_ptr().add(row * pairs);
        let b = packed.panels.as_ptr().add(panel * pairs * LANES);
        for k in 0..pairs {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(k) as i32));
            for (j, sum) in sums.iter_mut().enumerate() {
                let w = _mm512_loadu_si512(b.add((j * pairs + k) * LANES) as *const _);
                *sum = _mm512_dpbf16_ps(*sum, x, std::mem::transmute::<__m512i, __m512bh>(w));
            }
        }
    }

    /// Writes the sums of rows `row..` and panels `panel..`, leaving out columns past `out_dim`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn store<const W: usize>(sums: &[[__m512; W]], row: usize, panel: usize, out: &mut [f32], out_dim: usize) {
        for (i, row_sums) in sums.iter().enumerate() {
            let line = out.as_mut_ptr().add((row + i) * out_dim);
            for (j, sum) in row_sums.iter().enumerate() {
                let column = (panel + j) * LANES;
                let left = out_dim - column;
                if left >= LANES {
                    _mm512_storeu_ps(line.add(column), *sum);
                } else {
                    _mm512_mask_storeu_ps(line.add(column), ((1u32 << left) - 1) as u16, *sum);
                }
            }
        }
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
        Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
    }

    #[test]
    fn rounding_matches_candle() {
        let x = random(&[1000], 6);
        let ours: Vec<f32> = x.to_vec1::<f32>().unwrap().iter().map(|&v| f32::from_bits(to_bf16(v) << 16)).collect();
        assert_eq!(ours, round_to_bf16(&x).unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80, "a tie rounds to even");
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82, "a tie rounds to even");
    }
}
