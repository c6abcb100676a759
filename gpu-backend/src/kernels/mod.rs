//! CPU kernels for quantized llama inference: the quantized matmul and the small
//! element-wise operations around it, on plain `f32` slices.
//!
//! Why not candle's CPU ops: on a small model every op is tiny, so per-op overhead (a new
//! tensor, a strided copy, a thread hand-off) costs as much as the math, and candle 0.11's
//! quantized dot products are scalar for Q4_1 and only use SIMD when the whole crate is built
//! with `-C target-cpu=native`. Here the weights stay in their GGUF blocks and are decoded
//! in registers, block by block, by AVX2 tiles chosen at run time (so the same binary runs
//! on any x86_64; elsewhere a portable f32 path runs).
//!
//! Activations are rounded to 16 bits per block of 32 before a matmul (llama.cpp and candle
//! round them to 8), so the integer products run in `madd` while the logits track an f32
//! forward pass over the dequantized weights to about 1e-3 (8 bits move them by tenths on
//! SmolLM2). The decode of a weight block is shared by every activation row of a step: with
//! many sequences decoding together, each weight block read from memory serves all of them,
//! which is what makes batching pay.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

/// Values per quantization block (Q4_1 and Q8_0).
pub const BLOCK: usize = 32;

/// Formats of weight matrices the kernels multiply directly, as stored in GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 32 values as 4-bit ints with an f16 scale and an f16 minimum (20 bytes).
    Q4_1,
    /// 32 values as 8-bit ints with an f16 scale (34 bytes).
    Q8_0,
}

impl WeightFormat {
    /// Bytes of one block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q8_0 => 34,
        }
    }
}

/// A `rows × cols` weight matrix in one of the [`WeightFormat`]s, row after row of blocks,
/// byte for byte as in the GGUF file.
#[derive(Debug, Clone)]
pub struct QMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// A matrix shape or buffer that does not fit the kernels.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(String);

impl QMatrix {
    /// Wraps raw GGUF block data; `cols` must be a multiple of [`BLOCK`].
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, ShapeError> {
        if !cols.is_multiple_of(BLOCK) || data.len() != rows * cols / BLOCK * format.block_bytes() {
            return Err(ShapeError(format!(
                "{format:?} matrix {rows}x{cols} cannot hold {} bytes",
                data.len()
            )));
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// Stacks matrices with the same format and width into one, rows in order, so that
    /// projections of the same input (q/k/v, gate/up) run as a single matmul.
    pub fn concat_rows(parts: &[QMatrix]) -> Result<Self, ShapeError> {
        let first = parts
            .first()
            .ok_or_else(|| ShapeError("nothing to stack".into()))?;
        if parts
            .iter()
            .any(|p| p.format != first.format || p.cols != first.cols)
        {
            return Err(ShapeError(
                "stacked matrices differ in format or width".into(),
            ));
        }
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        Self::new(
            first.format,
            parts.iter().map(|p| p.rows).sum(),
            first.cols,
            data,
        )
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The block format of the weights.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    fn row(&self, r: usize) -> &[u8] {
        let len = self.cols / BLOCK * self.format.block_bytes();
        &self.data[r * len..(r + 1) * len]
    }

    /// Dequantizes row `r` into `out` (`cols` values): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        let bb = self.format.block_bytes();
        for (b, out) in row.chunks_exact(bb).zip(out.chunks_exact_mut(BLOCK)) {
            let d = f16_at(b, 0);
            match self.format {
                WeightFormat::Q4_1 => {
                    let m = f16_at(b, 2);
                    for j in 0..BLOCK / 2 {
                        out[j] = (b[4 + j] & 0x0F) as f32 * d + m;
                        out[j + BLOCK / 2] = (b[4 + j] >> 4) as f32 * d + m;
                    }
                }
                WeightFormat::Q8_0 => {
                    for (o, &q) in out.iter_mut().zip(&b[2..]) {
                        *o = q as i8 as f32 * d;
                    }
                }
            }
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Activation rows quantized to 16 bits per block of 32: `x ≈ d·q` with `|q| ≤ 32767`, and
/// `s = d·Σq` for the Q4_1 minimum term. At 16 bits the rounding error (≤ 1.5e-5 of a
/// block's largest value) stays far below what moves a logit, unlike the 8 bits llama.cpp
/// and candle use; the integer products still run two at a time in `madd`.
pub(crate) struct Act16 {
    q: Vec<i16>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// `d` transposed, block-major (`dt[b·t + i]` is row `i`'s scale of block `b`), so a
    /// batched tile loads the scales of its activation rows for a block in one vector.
    dt: Vec<f32>,
}

impl Act16 {
    /// Quantizes `x` (rows of `cols`) with the vector form of [`Act16::quantize_row`] where
    /// the SIMD tiles run (the same values), the portable loop elsewhere.
    #[cfg(test)]
    fn quantize(x: &[f32], cols: usize) -> Self {
        let mut act = Activations::zeroed(x.len() / cols.max(1), cols);
        act.fill(x.chunks(cols.max(1)), |row, out| out.copy_from_slice(row));
        act.act16
            .unwrap_or_else(|| Self::quantize_rows(x, cols, Self::quantize_row))
    }

    /// `rows × cols` values of zero, the buffers [`Activations::fill`] rounds into.
    fn zeroed(rows: usize, cols: usize) -> Self {
        let blocks = rows * cols / BLOCK;
        Act16 {
            q: vec![0; rows * cols],
            d: vec![0.0; blocks],
            s: vec![0.0; blocks],
            dt: vec![0.0; blocks],
        }
    }

    /// Transposes the scales into [`Act16::dt`].
    fn transpose_scales(&mut self, rows: usize, cols: usize) {
        let rb = (cols / BLOCK).max(1);
        for (i, row) in self.d.chunks_exact(rb).enumerate() {
            for (b, &v) in row.iter().enumerate() {
                self.dt[b * rows + i] = v;
            }
        }
    }

    /// The portable rounding of whole rows, the reference the vector form is tested against.
    #[cfg(test)]
    fn quantize_rows(
        x: &[f32],
        cols: usize,
        row: impl Fn(&[f32], &mut [i16], &mut [f32], &mut [f32]),
    ) -> Self {
        let rows = x.len() / cols.max(1);
        let mut act = Self::zeroed(rows, cols);
        let rb = (cols / BLOCK).max(1);
        for (((x, q), d), s) in x
            .chunks(cols.max(1))
            .zip(act.q.chunks_mut(cols.max(1)))
            .zip(act.d.chunks_mut(rb))
            .zip(act.s.chunks_mut(rb))
        {
            row(x, q, d, s);
        }
        act.transpose_scales(rows, cols);
        act
    }

    /// One row: per block of 32, the scale that maps its largest magnitude to 32767, the
    /// values rounded (ties to even), and their sum times the scale.
    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn quantize_row(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
        for (((xs, qs), d), s) in x
            .chunks_exact(BLOCK)
            .zip(q.chunks_exact_mut(BLOCK))
            .zip(d.iter_mut())
            .zip(s.iter_mut())
        {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 32767.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            // Ties to even (one `vroundps`), not `round`'s ties away from zero, which has no
            // vector instruction and left this loop scalar: 6% of a prefill.
            let mut sum = 0i32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                let r = (v * inv).round_ties_even() as i32;
                *q = r as i16;
                sum += r;
            }
            *d = scale;
            *s = scale * sum as f32;
        }
    }
}

/// Activation rows in the form the matmul reads: rounded to 16 bits ([`Act16`]) where the
/// SIMD tiles run, `f32` elsewhere. [`Activations::fill`] computes each row and rounds it in
/// the same task, so the element-wise work before a matmul (residual add and RMS norm, SiLU)
/// costs no hand-off to the pool of its own: on a batch, every hand-off is a few
/// microseconds in which both cores wait, and a layer had fourteen of them.
pub struct Activations {
    rows: usize,
    cols: usize,
    /// The rows in `f32`: what the portable matmul multiplies, and where a row is computed
    /// before it is rounded.
    x: Vec<f32>,
    /// The rounded rows, where the SIMD tiles run.
    act16: Option<Act16>,
}

impl Activations {
    /// Buffers for `rows` activation rows of `cols` values (a multiple of [`BLOCK`]), kept
    /// for every matmul of a step with that shape.
    pub fn zeroed(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            x: vec![0.0; rows * cols],
            act16: simd().then(|| Act16::zeroed(rows, cols)),
        }
    }

    /// Computes row `i` as `f(side_i, row_i)`, where `side_i` is the `i`th item of `sides`
    /// (one per row: the rows it is computed from, which `f` may also update, as a residual
    /// add does), then rounds it while it is still in cache. Rows run on every pool thread
    /// for a batch of at least [`PARALLEL_ROWS`].
    pub fn fill<S: Send>(
        &mut self,
        sides: impl IntoIterator<Item = S>,
        f: impl Fn(S, &mut [f32]) + Sync,
    ) {
        let (rows, cols) = (self.rows, self.cols);
        let rb = cols / BLOCK;
        let xs = self.x.chunks_mut(cols.max(1));
        match &mut self.act16 {
            Some(act) => {
                let q = act.q.chunks_mut(cols.max(1));
                let d = act.d.chunks_mut(rb.max(1));
                let s = act.s.chunks_mut(rb.max(1));
                let work: Vec<_> = sides.into_iter().zip(xs).zip(q.zip(d.zip(s))).collect();
                assert_eq!(work.len(), rows, "activation rows: one side per row");
                each_row(work, |((side, x), (q, (d, s)))| {
                    f(side, x);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `act16` is only made where `simd()` found AVX2; the slices are
                    // one row: `cols` values and rounded values, `cols / 32` scales and sums.
                    unsafe {
                        x86::quantize_row16(x, q, d, s)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    Act16::quantize_row(x, q, d, s);
                });
                act.transpose_scales(rows, cols);
            }
            None => {
                let work: Vec<_> = sides.into_iter().zip(xs).collect();
                assert_eq!(work.len(), rows, "activation rows: one side per row");
                each_row(work, |(side, x)| f(side, x));
            }
        }
    }
}

/// Runs `f` on each row's slices, on every pool thread for a batch of at least
/// [`PARALLEL_ROWS`] rows.
fn each_row<T: Send>(rows: Vec<T>, f: impl Fn(T) + Sync + Send) {
    if rows.len() >= PARALLEL_ROWS {
        rows.into_par_iter().for_each(f);
    } else {
        rows.into_iter().for_each(f);
    }
}

/// Rows of a step from which per-row work (activation rounding, norms, SiLU) is spread over
/// the pool; below it the hand-off costs more than the work.
pub const PARALLEL_ROWS: usize = 4;

/// Which matmul implementation runs here (for benchmarks and logs).
pub fn kernel_name() -> &'static str {
    if simd() {
        "avx2+fma"
    } else {
        "portable"
    }
}

/// Whether the SIMD tiles run on this CPU, checked once.
fn simd() -> bool {
    static SIMD: OnceLock<bool> = OnceLock::new();
    *SIMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            return true;
        }
        false
    })
}

/// Weight rows handed to one task: enough work to beat the hand-off, few enough that two
/// to a few dozen cores all get some.
const ROWS_PER_TASK: usize = 32;

/// `out[t][r] = Σ_k w[r][k] · x[t][k]` for every activation row `t` of `x` (row-major,
/// `w.cols()` wide), with `out` row-major `t × w.rows()`. For rows that a step computes
/// anyway, [`Activations::fill`] and [`matmul_prepared`] save the copy and a hand-off.
pub fn matmul(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    let cols = w.cols;
    let t = x.len() / cols;
    assert_eq!(x.len(), t * cols, "matmul: width mismatch");
    let mut act = Activations::zeroed(t, cols);
    act.fill(x.chunks(cols), |row, out| out.copy_from_slice(row));
    matmul_prepared(w, &act, out);
}

/// [`matmul`] of rows already in the matmul's form. Weight rows are split across the rayon
/// pool; each task reads its weight rows once and applies them to every activation row.
pub fn matmul_prepared(w: &QMatrix, x: &Activations, out: &mut [f32]) {
    let (n, cols, t) = (w.rows, w.cols, x.rows);
    assert_eq!(x.cols, cols, "matmul: width mismatch");
    assert_eq!(out.len(), n * t, "matmul: output size mismatch");
    let out = SharedOut(out.as_mut_ptr());
    let row_bytes = cols / BLOCK * w.format.block_bytes();
    (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|task| {
            let rows = task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(n);
            // SAFETY: `out` holds `t × n` values and outlives this call; each task writes
            // only the columns of its own weight rows. Rounded rows exist only where the
            // CPU has the SIMD tiles.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                if let Some(act) = &x.act16 {
                    x86::matmul_rows(w.format, &w.data, row_bytes, rows, act, t, cols, out, n);
                    return;
                }
                let _ = row_bytes;
                scalar::matmul_rows(w, rows, &x.x, out, n);
            }
        });
}

/// The output buffer of [`matmul`], shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: see `matmul`: tasks write disjoint elements of a buffer that outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `i` is in bounds and no other thread accesses element `i` meanwhile.
    unsafe fn write(self, i: usize, v: f32) {
        unsafe { *self.0.add(i) = v };
    }
}

/// RMS normalization of each `w.len()`-wide row of `x` into `out`, times `w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum2: f32 = xr.iter().map(|v| v * v).sum();
        let m = (sum2 / n as f32 + eps).sqrt();
        for ((o, &v), &a) in or.iter_mut().zip(xr).zip(w) {
            *o = v / m * a;
        }
    }
}

/// `v / (1 + e^-v)`, the SiLU activation.
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// Softmax of `x` in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Plain f32 dot product (attention scores), vectorized by the compiler.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a[chunks..]
        .iter()
        .zip(&b[chunks..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `out += w · v`, vectorized by the compiler.
pub fn axpy(w: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Q4_1 block from 32 values, quantized as GGUF does (min and scale in f16).
    fn q4_1_block(xs: &[f32]) -> Vec<u8> {
        let min = xs.iter().copied().fold(f32::INFINITY, f32::min);
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut b = Vec::with_capacity(20);
        b.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        for j in 0..16 {
            let lo = (((xs[j] - min) * id + 0.5) as u8).min(15);
            let hi = (((xs[j + 16] - min) * id + 0.5) as u8).min(15);
            b.push(lo | (hi << 4));
        }
        b
    }

    fn q8_0_block(xs: &[f32]) -> Vec<u8> {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut b = f16::from_f32(d).to_le_bytes().to_vec();
        b.extend(xs.iter().map(|v| (v * id).round() as i8 as u8));
        b
    }

    fn values(seed: u32, n: usize) -> Vec<f32> {
        // A small deterministic generator; the exact values do not matter.
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn matrix(format: WeightFormat, rows: usize, cols: usize, seed: u32) -> QMatrix {
        let vals = values(seed, rows * cols);
        let data = vals
            .chunks_exact(BLOCK)
            .flat_map(|c| match format {
                WeightFormat::Q4_1 => q4_1_block(c),
                WeightFormat::Q8_0 => q8_0_block(c),
            })
            .collect();
        QMatrix::new(format, rows, cols, data).unwrap()
    }

    /// The matmul equals f32 dot products with the dequantized weights, in every format,
    /// in both tile shapes (fewer and more than four activation rows).
    #[test]
    fn matmul_matches_dequantized_reference() {
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            for t in [1, 3, 6, 9] {
                let (rows, cols) = (37, 96);
                let w = matrix(format, rows, cols, 3);
                let x = values(9, t * cols);
                let mut out = vec![0f32; t * rows];
                matmul(&w, &x, &mut out);
                let mut wr = vec![0f32; cols];
                for r in 0..rows {
                    w.dequantize_row(r, &mut wr);
                    for ti in 0..t {
                        let want: f64 = wr
                            .iter()
                            .zip(&x[ti * cols..])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum();
                        let got = out[ti * rows + r] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{format:?} t={t} [{ti},{r}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The portable path (what CPUs without AVX2 run) against the same reference.
    #[test]
    fn portable_matmul_matches_dequantized_reference() {
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let (rows, cols, t) = (9, 64, 3);
            let w = matrix(format, rows, cols, 4);
            let x = values(2, t * cols);
            let mut out = vec![0f32; t * rows];
            // SAFETY: `out` holds t × rows values and nothing else uses it.
            unsafe { scalar::matmul_rows(&w, 0..rows, &x, SharedOut(out.as_mut_ptr()), rows) };
            let mut wr = vec![0f32; cols];
            for r in 0..rows {
                w.dequantize_row(r, &mut wr);
                for ti in 0..t {
                    let want: f64 = wr
                        .iter()
                        .zip(&x[ti * cols..])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    let got = out[ti * rows + r] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{format:?}");
                }
            }
        }
    }

    /// Bit for bit, whatever the tiles: batch sizes below, at and between the tile
    /// widths (4×4 tiles with VNNI, 1×4 without, ragged rest), weight rows that leave a
    /// ragged rest of tasks and tiles (70 = 32 + 32 + 4 + 2), and widths of 2 and 48 blocks.
    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            for (rows, cols) in [(70, 64), (37, 1536)] {
                let w = matrix(format, rows, cols, 1);
                let alone: Vec<Vec<f32>> = (0..17)
                    .map(|i| {
                        let mut out = vec![0f32; rows];
                        matmul(&w, &values(5 + i, cols), &mut out);
                        out
                    })
                    .collect();
                for t in [2, 4, 5, 6, 7, 8, 9, 13, 16, 17] {
                    let x: Vec<f32> = (0..t).flat_map(|i| values(5 + i, cols)).collect();
                    let mut batched = vec![0f32; t as usize * rows];
                    matmul(&w, &x, &mut batched);
                    for (i, alone) in alone.iter().take(t as usize).enumerate() {
                        assert_eq!(
                            &batched[i * rows..(i + 1) * rows],
                            &alone[..],
                            "{format:?} {rows}x{cols} t={t} row {i}"
                        );
                    }
                }
            }
        }
    }

    /// Activation rounding: ties go to even, and the vector form (what AVX2 CPUs run) gives
    /// the portable loop's values, scales and sums exactly.
    #[test]
    fn activation_rounding_is_ties_to_even_in_both_forms() {
        // Block 0's scale is exactly 1 (largest magnitude 32767), so its halves are ties.
        let mut x = vec![32767.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.25];
        x.resize(BLOCK, 0.0);
        x.extend(values(11, 5 * BLOCK)); // and ordinary rows: 3 rows of 2 blocks
        let cols = 2 * BLOCK;
        let portable = Act16::quantize_rows(&x, cols, Act16::quantize_row);
        assert_eq!(&portable.q[..8], &[32767, 0, 2, 2, 0, -2, -2, 3]);
        assert_eq!(portable.d[0], 1.0);
        #[cfg(target_arch = "x86_64")]
        if simd() {
            let vector = Act16::quantize(&x, cols);
            assert_eq!(vector.q, portable.q);
            assert_eq!(vector.d, portable.d);
            assert_eq!(vector.s, portable.s);
            assert_eq!(vector.dt, portable.dt);
        }
    }

    #[test]
    fn rejects_a_buffer_of_the_wrong_size() {
        assert!(QMatrix::new(WeightFormat::Q4_1, 2, 32, vec![0; 39]).is_err());
        assert!(QMatrix::new(WeightFormat::Q8_0, 1, 30, vec![0; 34]).is_err());
    }
}
