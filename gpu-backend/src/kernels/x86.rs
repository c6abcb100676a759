//! AVX2 + FMA matmul tiles, chosen at run time so one binary serves every x86_64 CPU.
//!
//! A weight block (32 values) is decoded once into four vectors of eight f32 (`d·q + m`, the
//! f16 scales converted with F16C) and multiplied into every activation row of the tile with
//! FMAs, so decoding is shared by the rows and the arithmetic is the f32 reference's, not an
//! 8-bit approximation of the activations. Each (weight row, activation row) pair is summed
//! the same way whatever tile it is computed in, so a row's result does not depend on the
//! rows batched with it.

use std::arch::x86_64::*;

use super::{SharedOut, WeightFormat, BLOCK};

/// Whether this CPU runs these kernels.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Computes `out[ti·n + r]` for weight rows `rows` (raw blocks, `row_bytes` each, from
/// `w`) and every activation row of `x` (`t` rows of `cols`).
///
/// # Safety
/// [`available`] is true; `w` holds every row in `rows`; `out` holds `t × n` values and no
/// other thread writes the columns in `rows` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul_rows(
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    rows: std::ops::Range<usize>,
    x: &[f32],
    t: usize,
    cols: usize,
    out: SharedOut,
    n: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match format {
            WeightFormat::Q4_1 => drive::<Q4_1>(w, row_bytes, rows, x, t, cols, out, n),
            WeightFormat::Q8_0 => drive::<Q8_0>(w, row_bytes, rows, x, t, cols, out, n),
        }
    }
}

/// A block format the tiles decode.
trait Decode {
    const BYTES: usize;
    /// The 32 values of the block at `b` as f32, eight per vector, in order.
    unsafe fn decode(b: *const u8) -> [__m256; 4];
}

struct Q4_1;
struct Q8_0;

impl Decode for Q4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> [__m256; 4] {
        // SAFETY: the caller guarantees a whole block at `b`; AVX2/FMA/F16C are enabled in
        // every caller (they are inlined into `tile`).
        unsafe {
            let raw = (b as *const i32).read_unaligned();
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(raw));
            let d = _mm256_set1_ps(_mm_cvtss_f32(dm));
            let m = _mm256_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dm)));
            let qs = _mm_loadu_si128(b.add(4) as *const __m128i);
            let low = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(qs, low); // values 0..16
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low); // values 16..32
            [
                widen_u8(lo, d, m),
                widen_u8(_mm_srli_si128(lo, 8), d, m),
                widen_u8(hi, d, m),
                widen_u8(_mm_srli_si128(hi, 8), d, m),
            ]
        }
    }
}

/// Eight unsigned bytes (the low half of `v`) as `d·q + m`.
#[inline(always)]
unsafe fn widen_u8(v: __m128i, d: __m256, m: __m256) -> __m256 {
    // SAFETY: AVX2/FMA are enabled in every caller (inlined into `tile`).
    unsafe { _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), d, m) }
}

/// Eight signed bytes at `p` as `d·q`.
#[inline(always)]
unsafe fn widen_i8(p: *const u8, d: __m256) -> __m256 {
    // SAFETY: 8 readable bytes at `p`; AVX2 is enabled in every caller.
    unsafe {
        let q = _mm_loadl_epi64(p as *const __m128i);
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d)
    }
}

impl Decode for Q8_0 {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> [__m256; 4] {
        // SAFETY: as for Q4_1.
        unsafe {
            let raw = (b as *const u16).read_unaligned() as i32;
            let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(raw))));
            [
                widen_i8(b.add(2), d),
                widen_i8(b.add(10), d),
                widen_i8(b.add(18), d),
                widen_i8(b.add(26), d),
            ]
        }
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// `R` weight rows × `N` activation rows. Every pair keeps two accumulators (values 0..8
/// and 16..24 into one, 8..16 and 24..32 into the other), so its sum is the same in any
/// tile shape.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<F: Decode, const R: usize, const N: usize>(
    w: [*const u8; R],
    x: [*const f32; N],
    blocks: usize,
) -> [[f32; N]; R] {
    let mut acc = [[[_mm256_setzero_ps(); 2]; N]; R];
    for b in 0..blocks {
        for r in 0..R {
            // SAFETY: each weight row has `blocks` blocks and each activation row
            // `blocks × 32` values (the caller's contract).
            unsafe {
                let wv = F::decode(w[r].add(b * F::BYTES));
                for n in 0..N {
                    let xp = x[n].add(b * BLOCK);
                    let a = &mut acc[r][n];
                    a[0] = _mm256_fmadd_ps(wv[0], _mm256_loadu_ps(xp), a[0]);
                    a[1] = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(xp.add(8)), a[1]);
                    a[0] = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(xp.add(16)), a[0]);
                    a[1] = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(xp.add(24)), a[1]);
                }
            }
        }
    }
    let mut out = [[0f32; N]; R];
    for r in 0..R {
        for n in 0..N {
            // SAFETY: AVX is enabled here.
            out[r][n] = unsafe { hsum(_mm256_add_ps(acc[r][n][0], acc[r][n][1])) };
        }
    }
    out
}

/// Tiles the rows: four activation rows per weight row when there are four or more (the
/// decode is shared), else four weight rows per activation row (independent sums keep the
/// FMA units busy).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive<F: Decode>(
    w: &[u8],
    row_bytes: usize,
    rows: std::ops::Range<usize>,
    x: &[f32],
    t: usize,
    cols: usize,
    out: SharedOut,
    n: usize,
) {
    let blocks = cols / BLOCK;
    let wp = |r: usize| w[r * row_bytes..].as_ptr();
    let xp = |i: usize| x[i * cols..].as_ptr();
    // SAFETY (every block below): pointers come from in-bounds rows (checked by slicing),
    // and the caller owns the output columns in `rows`.
    unsafe {
        if t >= 4 {
            for r in rows {
                let mut i = 0;
                while i + 4 <= t {
                    let o =
                        tile::<F, 1, 4>([wp(r)], [xp(i), xp(i + 1), xp(i + 2), xp(i + 3)], blocks);
                    for (k, v) in o[0].iter().enumerate() {
                        out.write((i + k) * n + r, *v);
                    }
                    i += 4;
                }
                for i in i..t {
                    out.write(i * n + r, tile::<F, 1, 1>([wp(r)], [xp(i)], blocks)[0][0]);
                }
            }
        } else {
            let mut r = rows.start;
            while r + 4 <= rows.end {
                for i in 0..t {
                    let o =
                        tile::<F, 4, 1>([wp(r), wp(r + 1), wp(r + 2), wp(r + 3)], [xp(i)], blocks);
                    for (k, v) in o.iter().enumerate() {
                        out.write(i * n + r + k, v[0]);
                    }
                }
                r += 4;
            }
            for r in r..rows.end {
                for i in 0..t {
                    out.write(i * n + r, tile::<F, 1, 1>([wp(r)], [xp(i)], blocks)[0][0]);
                }
            }
        }
    }
}
