//! The portable matmul: dequantize a weight row once, then plain f32 dot products with every
//! activation row. The fallback on CPUs without AVX2, and the reference the SIMD tiles are
//! tested against.

use super::{dot_f32, QMatrix, SharedOut};

/// Computes `out[ti·n + r]` for weight rows `rows` and every activation row of `x`.
///
/// # Safety
/// `out` holds `t × n` values and no other thread writes the columns in `rows` meanwhile.
pub(super) unsafe fn matmul_rows(
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    x: &[f32],
    out: SharedOut,
    n: usize,
) {
    let mut wr = vec![0f32; w.cols()];
    for r in rows {
        w.dequantize_row(r, &mut wr);
        for (i, xr) in x.chunks_exact(w.cols()).enumerate() {
            // SAFETY: forwarded from the caller.
            unsafe { out.write(i * n + r, dot_f32(&wr, xr)) };
        }
    }
}
