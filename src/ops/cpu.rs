//! What every fused CPU op (`gelu`, `dropout`, `attention_softmax`, `layer_norm`, `linear`) needs: an
//! input as the contiguous slice its layout covers, and how many rows one parallel task takes.

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// The contiguous elements `layout` covers in `storage`; a strided input is an error (callers make
/// their inputs contiguous first).
pub fn contiguous<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// Rows of `width` elements per parallel task: about 32k elements (below that, threads cost more than
/// they save), at least one row.
pub fn rows_per_task(width: usize) -> usize {
    ((1 << 15) / width.max(1)).max(1)
}
