//! Vectorised elementwise math for the fused CPU ops: `exp` written without branches or library calls,
//! and a way to compile a loop for the widest vector unit the CPU has.
//!
//! The fused softmax and GELU called glibc's scalar `expf` per element, which keeps their loops from
//! vectorising: `expf` and the loops around it were about 12% of a MiniLM training step in `perf`
//! (issue 12). The binary is built for baseline x86-64 (SSE2); [`vectorised`] runs a closure inside a
//! function compiled for AVX-512 or AVX2 when the CPU has them (detected at run time, as gemm picks its
//! kernels), so plain loops over slices in it use the wide registers. No fused multiply-adds are used,
//! so every path rounds the same way and gives the same bits.

/// `e^x` in f32, Cephes' `expf` method: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by a degree-7
/// polynomial, `2^n` built in the exponent bits (in two halves, so that every `n` from -126 to 128 is
/// representable). Within 2 ulp of the correctly rounded value over the normal range; 0 below
/// -87.33655 (about `ln(2^-126)`: no subnormals), `+∞` above `ln(f32::MAX)`; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, the first with few mantissa bits so that `n·LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LOWEST: f32 = -87.336_55; // ln(2^-126)
    const HIGHEST: f32 = 88.722_83; // ln(f32::MAX)
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to an integer
    let clamped = x.clamp(LOWEST, HIGHEST);
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // n as an integer, read off the mantissa of `shifted` (an `as` cast saturates, which does not
    // vectorise).
    let n = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let power = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    let value = y * power(n >> 1) * power(n - (n >> 1));
    let value = if x > HIGHEST { f32::INFINITY } else { value };
    if x < LOWEST {
        0.0
    } else {
        value
    }
}

/// Runs `work` compiled for AVX-512 (or AVX2) where the CPU has it, else as built. Call it inside each
/// parallel task around the loops to widen, with `#[inline(always)]` on the closure: a closure holding
/// a whole loop is otherwise not inlined into the wide function, and runs narrow.
#[inline(always)]
pub fn vectorised<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { with_avx512(work) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { with_avx2(work) };
        }
    }
    work()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(work: impl FnOnce() -> R) -> R {
    work()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(work: impl FnOnce() -> R) -> R {
    work()
}

/// The sum of `xs` in 16 interleaved lanes (so that it vectorises), the lanes added in order at the end.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    sum_by(xs, |x| x)
}

/// `Σ f(x)` over `xs`, as [`sum`].
#[inline(always)]
pub fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += f(x);
    }
    lanes.iter().sum()
}

/// `Σ a·b` in 16 interleaved lanes, as [`sum`].
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (mut ca, mut cb) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    for ((lane, &x), &y) in lanes.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        *lane += x * y;
    }
    lanes.iter().sum()
}

/// The largest of `xs` (`f32::MIN` for none), in 16 interleaved lanes. NaNs are skipped, as `f32::max`
/// skips them.
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::MIN; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = lane.max(x);
    }
    lanes.iter().fold(f32::MIN, |m, &x| m.max(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ulps between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_over_the_normal_range() {
        let mut worst = 0;
        let mut x = -87.3f32;
        while x < 88.7 {
            for probe in [x, x + 1e-3, -x * 1e-3, x * 1e-6] {
                let (ours, libm) = (exp(probe), (probe as f64).exp() as f32);
                worst = worst.max(ulps(ours, libm));
                assert!(ulps(ours, libm) <= 2, "exp({probe}) = {ours}, libm {libm}");
            }
            x += 0.0137;
        }
        assert!(worst >= 1, "a test that found no rounding difference at all probes nothing");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
    }

    #[test]
    fn exp_saturates_and_keeps_nan() {
        assert_eq!(exp(-87.5), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(88.8), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        let top = exp(88.7);
        assert!(top.is_finite() && ulps(top, (88.7f32 as f64).exp() as f32) <= 2, "{top}");
    }

    /// The same bits whichever vector unit runs the loop (no fused multiply-adds anywhere).
    #[test]
    fn vectorised_loops_give_the_same_bits_as_scalar_ones() {
        #[inline(always)]
        fn exp_all(xs: &[f32], out: &mut [u32]) {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = exp(x).to_bits();
            }
        }
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut plain = vec![0u32; xs.len()];
        exp_all(&xs, &mut plain);
        let one_at_a_time: Vec<u32> =
            xs.iter().map(|&x| std::hint::black_box(exp(std::hint::black_box(x))).to_bits()).collect();
        assert_eq!(plain, one_at_a_time);
        // each wide path this CPU has, called directly
        #[cfg(target_arch = "x86_64")]
        {
            let mut wide = vec![0u32; xs.len()];
            if std::arch::is_x86_feature_detected!("avx512f") {
                unsafe {
                    with_avx512(
                        #[inline(always)]
                        || exp_all(&xs, &mut wide),
                    )
                };
                assert_eq!(plain, wide, "AVX-512");
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                unsafe {
                    with_avx2(
                        #[inline(always)]
                        || exp_all(&xs, &mut wide),
                    )
                };
                assert_eq!(plain, wide, "AVX2");
            }
        }
        let (s, m) = vectorised(
            #[inline(always)]
            || (sum(&xs), max(&xs)),
        );
        assert_eq!(m, xs.iter().fold(f32::MIN, |a, &b| a.max(b)));
        assert!((s - xs.iter().map(|&x| x as f64).sum::<f64>() as f32).abs() < 1e-2);
        assert_eq!(max(&[]), f32::MIN);
        assert_eq!(sum(&[]), 0.0);
        let d = dot(&xs, &xs[..999]);
        assert!((d - xs[..999].iter().map(|&x| (x as f64).powi(2)).sum::<f64>() as f32).abs() < 1.0, "{d}");
    }
}
