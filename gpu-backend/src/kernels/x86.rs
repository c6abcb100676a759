//! AVX2 matmul tiles, chosen at run time so one binary serves every x86_64 CPU.
//!
//! A weight block (32 values) is widened once to two vectors of sixteen i16 and multiplied
//! into every activation row of the tile (16-bit, see [`super::Act16`]) with `madd`, which
//! sums pairs of products into i32 lanes; each block's sum is scaled in f32 (`d_w·d_x`, plus
//! `m_w·s_x` for Q4_1's minimum). Each (weight row, activation row) pair is summed the same
//! way whatever tile it is computed in, so a row's result does not depend on the rows
//! batched with it. Batches use wider tiles with AVX-512 VNNI where the CPU has it
//! ([`tile_batch`]); the sums stay the same.

use std::arch::x86_64::*;

use super::{Act16, SharedOut, WeightFormat, BLOCK};

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
    x: &Act16,
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

/// One activation row rounded to 16 bits per block of 32, the vector form of
/// [`Act16::quantize_row`](super::Act16) with the same results (`vcvtps2dq` rounds ties to
/// even, as `round_ties_even` does): Rust's saturating `as` casts kept the portable loop
/// scalar, 5-6% of a prefill.
///
/// # Safety
/// [`available`] is true; `x` and `q` hold `32·d.len()` values and `s` `d.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row16(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    debug_assert!(x.len() >= d.len() * BLOCK && q.len() >= d.len() * BLOCK && s.len() >= d.len());
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (b, (d, s)) in d.iter_mut().zip(s.iter_mut()).enumerate() {
        // SAFETY: block `b` is in bounds of `x` and `q` (the caller's contract).
        unsafe {
            let xp = x.as_ptr().add(b * BLOCK);
            let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(xp.add(o)));
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let scale = amax / 32767.0;
            let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, inv)));
            let total =
                _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let total = _mm_add_epi32(
                _mm256_castsi256_si128(total),
                _mm256_extracti128_si256(total, 1),
            );
            let total = _mm_add_epi32(total, _mm_shuffle_epi32(total, 0b01_00_11_10));
            let total = _mm_add_epi32(total, _mm_shuffle_epi32(total, 0b10_11_00_01));
            // `packs` interleaves the 128-bit halves; the permute puts them back in order.
            let qp = q.as_mut_ptr().add(b * BLOCK) as *mut __m256i;
            let lo = _mm256_permute4x64_epi64(_mm256_packs_epi32(i[0], i[1]), 0b11_01_10_00);
            let hi = _mm256_permute4x64_epi64(_mm256_packs_epi32(i[2], i[3]), 0b11_01_10_00);
            _mm256_storeu_si256(qp, lo);
            _mm256_storeu_si256(qp.add(1), hi);
            *d = scale;
            *s = scale * _mm_cvtsi128_si32(total) as f32;
        }
    }
}

/// A weight block decoded for the tiles: 32 values as i16, scale and minimum.
struct Block {
    q: [__m256i; 2],
    d: f32,
    m: f32,
}

/// A block format the tiles decode.
trait Decode {
    const BYTES: usize;
    /// Whether blocks carry a minimum (`d·q + m`) rather than only a scale.
    const HAS_MIN: bool;
    /// Whether a lone activation row walks the weights one row at a time, front to back
    /// (one sequential stream the hardware prefetcher follows), rather than four rows
    /// side by side (four short streams, more independent sums in flight). Q8_0 has 1.7x
    /// the bytes of Q4_1 per block for the same arithmetic, so a single-stream step waits
    /// on memory: four streams read a 1536x576 Q8_0 matrix at 5-7 GB/s from memory
    /// against 15 GB/s for one (one thread, `benches/decode.rs`). Q4_1 waits on the
    /// arithmetic, where four rows are ~10% faster.
    const SEQUENTIAL: bool;
    /// The block at `b`.
    unsafe fn decode(b: *const u8) -> Block;
}

struct Q4_1;
struct Q8_0;

impl Decode for Q4_1 {
    const BYTES: usize = 20;
    const HAS_MIN: bool = true;
    const SEQUENTIAL: bool = false;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> Block {
        // SAFETY: the caller guarantees a whole block at `b`; AVX2/F16C are enabled in every
        // caller (this is inlined into `tile`).
        unsafe {
            let raw = (b as *const i32).read_unaligned();
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(raw));
            let qs = _mm_loadu_si128(b.add(4) as *const __m128i);
            let low = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(qs, low); // values 0..16
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low); // values 16..32
            Block {
                q: [_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi)],
                d: _mm_cvtss_f32(dm),
                m: _mm_cvtss_f32(_mm_movehdup_ps(dm)),
            }
        }
    }
}

impl Decode for Q8_0 {
    const BYTES: usize = 34;
    const HAS_MIN: bool = false;
    const SEQUENTIAL: bool = true;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> Block {
        // SAFETY: as for Q4_1.
        unsafe {
            let raw = (b as *const u16).read_unaligned() as i32;
            let lo = _mm_loadu_si128(b.add(2) as *const __m128i);
            let hi = _mm_loadu_si128(b.add(18) as *const __m128i);
            Block {
                q: [_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi)],
                d: _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(raw))),
                m: 0.0,
            }
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

/// One activation row of a tile: its 16-bit values, block scales and block sums.
#[derive(Clone, Copy)]
struct Row {
    q: *const i16,
    d: *const f32,
    s: *const f32,
}

/// `R` weight rows × `N` activation rows; every pair has one vector and one scalar
/// accumulator, the same in any tile shape.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<F: Decode, const R: usize, const N: usize>(
    w: [*const u8; R],
    x: [Row; N],
    blocks: usize,
) -> [[f32; N]; R] {
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let mut mins = [[0f32; N]; R];
    for b in 0..blocks {
        for r in 0..R {
            // SAFETY: each weight row has `blocks` blocks and each activation row `blocks`
            // blocks of 32 values, a scale and a sum (the caller's contract).
            unsafe {
                let wb = F::decode(w[r].add(b * F::BYTES));
                for n in 0..N {
                    let xq = x[n].q.add(b * BLOCK);
                    let p = _mm256_add_epi32(
                        _mm256_madd_epi16(wb.q[0], _mm256_loadu_si256(xq as *const __m256i)),
                        _mm256_madd_epi16(
                            wb.q[1],
                            _mm256_loadu_si256(xq.add(16) as *const __m256i),
                        ),
                    );
                    let scale = _mm256_set1_ps(wb.d * *x[n].d.add(b));
                    acc[r][n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r][n]);
                    if F::HAS_MIN {
                        mins[r][n] += wb.m * *x[n].s.add(b);
                    }
                }
            }
        }
    }
    let mut out = [[0f32; N]; R];
    for r in 0..R {
        for n in 0..N {
            // SAFETY: AVX is enabled here.
            out[r][n] = unsafe { hsum(acc[r][n]) } + mins[r][n];
        }
    }
    out
}

/// `R` weight rows × `N` activation rows (`N` a multiple of four), for batches. Per block,
/// the `R·N` scale products `d_w·d_x` are `R·N/4` vector multiplies (the rows' scales sit
/// side by side in [`Act16::dt`]) and are read back with broadcasts from memory, which
/// fold into the `fmadd` and leave the shuffle units alone; each activation block loaded
/// serves `R` weight rows, each decoded weight block `N` activation rows; and `vpdpwssd`
/// adds the second half-block's products into the first's in one instruction. With 32
/// vector registers (AVX-512VL) a 4×4 tile keeps its sixteen accumulators and four decoded
/// blocks in registers.
///
/// Every pair is summed exactly as in [`tile`]: the same i32 block sums (exact, whichever
/// instruction adds them), the same f32 `d_w·d_x`, the same lanes and order, so a result
/// never depends on the tile it was computed in.
///
/// # Safety
/// As for [`tile`], and [`vnni`] is true; `dt` holds the `N` rows' scales of block `b` at
/// `b·stride`.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn tile_batch<F: Decode, const R: usize, const N: usize>(
    w: [*const u8; R],
    x: [Row; N],
    dt: *const f32,
    stride: usize,
    blocks: usize,
) -> [[f32; N]; R] {
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let mut mins = [[0f32; N]; R];
    let mut sc = [[0f32; N]; R];
    for b in 0..blocks {
        // SAFETY: each weight row has `blocks` blocks, each activation row `blocks` blocks
        // of 32 values, a scale and a sum, and `dt` the scales (the caller's contract).
        unsafe {
            let wb: [Block; R] = std::array::from_fn(|r| F::decode(w[r].add(b * F::BYTES)));
            for q in 0..N / 4 {
                let dx = _mm_loadu_ps(dt.add(b * stride + 4 * q));
                for r in 0..R {
                    let s = _mm_mul_ps(_mm_set1_ps(wb[r].d), dx);
                    _mm_storeu_ps(sc[r].as_mut_ptr().add(4 * q), s);
                }
            }
            // Opaque to the optimizer, so the products stay in memory and each is read
            // with a broadcast load (folded into the `fmadd`) instead of being moved
            // between lanes by shuffles, the units this loop is short of.
            let sc = std::hint::black_box(&sc);
            for n in 0..N {
                let xq = x[n].q.add(b * BLOCK);
                let xa = _mm256_loadu_si256(xq as *const __m256i);
                let xb = _mm256_loadu_si256(xq.add(16) as *const __m256i);
                for r in 0..R {
                    let p = _mm256_dpwssd_epi32(_mm256_madd_epi16(wb[r].q[0], xa), wb[r].q[1], xb);
                    let scale = _mm256_broadcast_ss(&sc[r][n]);
                    acc[r][n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r][n]);
                    if F::HAS_MIN {
                        mins[r][n] += wb[r].m * *x[n].s.add(b);
                    }
                }
            }
        }
    }
    let mut out = [[0f32; N]; R];
    for r in 0..R {
        for n in 0..N {
            // SAFETY: AVX is enabled here.
            out[r][n] = unsafe { hsum(acc[r][n]) } + mins[r][n];
        }
    }
    out
}

/// Whether this CPU has the AVX-512 VNNI dot products on 256-bit vectors, for
/// [`tile_batch`].
fn vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
    })
}

/// Tiles the rows: with four or more activation rows, 4×4 tiles of [`tile_batch`] on CPUs
/// with AVX-512 VNNI (alone, 1.13-1.28x as fast for Q8_0 and 1.30-1.35x for Q4_1 as one
/// weight row against four activation rows; see BENCHMARKS.md's #18 section), else four
/// activation rows per weight row (the decode is shared); with fewer, four weight rows per
/// activation row (independent sums keep the units busy) or, for formats that wait on
/// memory ([`Decode::SEQUENTIAL`]), one weight row at a time. Every tile sums a pair the
/// same way, so the choice never changes a result.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive<F: Decode>(
    w: &[u8],
    row_bytes: usize,
    rows: std::ops::Range<usize>,
    x: &Act16,
    t: usize,
    cols: usize,
    out: SharedOut,
    n: usize,
) {
    let blocks = cols / BLOCK;
    let wp = |r: usize| w[r * row_bytes..(r + 1) * row_bytes].as_ptr();
    let xr = |i: usize| Row {
        q: x.q[i * cols..(i + 1) * cols].as_ptr(),
        d: x.d[i * blocks..(i + 1) * blocks].as_ptr(),
        s: x.s[i * blocks..(i + 1) * blocks].as_ptr(),
    };
    // SAFETY (every block below): pointers come from in-bounds rows (checked by slicing),
    // and the caller owns the output columns in `rows`.
    unsafe {
        let mut rows = rows;
        if t >= 4 && vnni() {
            const R: usize = 4;
            const N: usize = 4;
            while rows.start + R <= rows.end {
                let r = rows.start;
                // The next group's weights, into cache while this one computes: four rows
                // read side by side are four short streams, which the hardware prefetcher
                // follows poorly, and a matrix larger than the cache (the output
                // projection) then waits on memory at the start of every group.
                let ahead = (r + R) * row_bytes..((r + 2 * R) * row_bytes).min(w.len());
                for at in ahead.step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().add(at) as *const i8);
                }
                let ws: [*const u8; R] = std::array::from_fn(|k| wp(r + k));
                let mut i = 0;
                while i + N <= t {
                    let xs: [Row; N] = std::array::from_fn(|j| xr(i + j));
                    let o = tile_batch::<F, R, N>(ws, xs, x.dt[i..].as_ptr(), t, blocks);
                    for (k, ov) in o.iter().enumerate() {
                        for (j, v) in ov.iter().enumerate() {
                            out.write((i + j) * n + r + k, *v);
                        }
                    }
                    i += N;
                }
                for i in i..t {
                    for (k, &wk) in ws.iter().enumerate() {
                        out.write(i * n + r + k, tile::<F, 1, 1>([wk], [xr(i)], blocks)[0][0]);
                    }
                }
                rows.start += R;
            }
            // Fewer than four weight rows left: the tiles below.
        }
        if t >= 4 || F::SEQUENTIAL {
            for r in rows {
                let mut i = 0;
                while i + 4 <= t {
                    let o =
                        tile::<F, 1, 4>([wp(r)], [xr(i), xr(i + 1), xr(i + 2), xr(i + 3)], blocks);
                    for (k, v) in o[0].iter().enumerate() {
                        out.write((i + k) * n + r, *v);
                    }
                    i += 4;
                }
                for i in i..t {
                    out.write(i * n + r, tile::<F, 1, 1>([wp(r)], [xr(i)], blocks)[0][0]);
                }
            }
        } else {
            let mut r = rows.start;
            while r + 4 <= rows.end {
                for i in 0..t {
                    let o =
                        tile::<F, 4, 1>([wp(r), wp(r + 1), wp(r + 2), wp(r + 3)], [xr(i)], blocks);
                    for (k, v) in o.iter().enumerate() {
                        out.write(i * n + r + k, v[0]);
                    }
                }
                r += 4;
            }
            for r in r..rows.end {
                for i in 0..t {
                    out.write(i * n + r, tile::<F, 1, 1>([wp(r)], [xr(i)], blocks)[0][0]);
                }
            }
        }
    }
}
