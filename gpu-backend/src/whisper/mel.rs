//! Whisper's input features: the log-mel spectrogram of a 30-second window.
//!
//! Our own code instead of candle-transformers' `whisper::audio` (that crate was the
//! largest unit of a cold build, #11). It computes the same features the recorded
//! transcripts were made with: frames every [`HOP_LENGTH`] samples from the start of the
//! window (zeros past its end), a periodic Hann window of [`N_FFT`] samples, the power
//! spectrum folded onto the non-negative frequencies, the stored mel filter bank, `log10`
//! floored at 1e-10, then Whisper's dynamic-range clamp (8 below the window's maximum)
//! and scaling (`x / 4 + 1`).
//!
//! A 400-point transform per frame is done as a dense product with a precomputed
//! cosine/sine table: 3000 frames of 201 × 400 multiply-adds, vectorised and spread over
//! threads, a few tens of milliseconds per window.

use rayon::prelude::*;

/// Audio samples per second.
pub const SAMPLE_RATE: usize = 16_000;
/// Samples per transform (25 ms).
pub const N_FFT: usize = 400;
/// Samples between frames (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Seconds per window.
pub const CHUNK_LENGTH: usize = 30;
/// Samples per window.
pub const N_SAMPLES: usize = CHUNK_LENGTH * SAMPLE_RATE;
/// Frames per window.
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;
/// Frequency bins of one transform (0 to Nyquist).
pub const N_FREQS: usize = N_FFT / 2 + 1;

/// The transform's basis: cos and sin of `2π k j / N_FFT`, with the Hann window folded in.
struct Basis {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Basis {
    fn new() -> Self {
        let two_pi = 2.0 * std::f64::consts::PI;
        let hann: Vec<f64> = (0..N_FFT)
            .map(|j| 0.5 * (1.0 - (two_pi * j as f64 / N_FFT as f64).cos()))
            .collect();
        let mut cos = Vec::with_capacity(N_FREQS * N_FFT);
        let mut sin = Vec::with_capacity(N_FREQS * N_FFT);
        for k in 0..N_FREQS {
            for (j, w) in hann.iter().enumerate() {
                // k*j reduced mod N_FFT keeps the angle exact for large products.
                let angle = two_pi * ((k * j) % N_FFT) as f64 / N_FFT as f64;
                cos.push((w * angle.cos()) as f32);
                sin.push((w * angle.sin()) as f32);
            }
        }
        Self { cos, sin }
    }

    /// Power of each non-negative frequency of one frame, counting each bin's negative
    /// twin (all but DC and Nyquist) as a real signal's spectrum does.
    fn power(&self, frame: &[f32], out: &mut [f32]) {
        for (k, p) in out.iter_mut().enumerate() {
            let row = k * N_FFT..(k + 1) * N_FFT;
            let re = dot(&self.cos[row.clone()], frame);
            let im = dot(&self.sin[row], frame);
            let power = re * re + im * im;
            *p = if k == 0 || k == N_FFT / 2 {
                power
            } else {
                2.0 * power
            };
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums so the compiler vectorises the loop.
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for ((a, x), y) in acc.iter_mut().zip(x).zip(y) {
            *a += x * y;
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The `(n_mels, N_FRAMES)` log-mel spectrogram (row-major) of one window of 16 kHz
/// samples (shorter windows are zero-padded). `filters` is the `(n_mels, N_FREQS)` mel
/// filter bank stored with the weights.
pub fn log_mel(samples: &[f32], filters: &[f32], n_mels: usize) -> Vec<f32> {
    let basis = Basis::new();
    let mut padded = samples[..samples.len().min(N_SAMPLES)].to_vec();
    padded.resize(N_SAMPLES + N_FFT, 0.0);
    // Frame-major while computing, so each thread writes its own rows.
    let mut by_frame = vec![0f32; N_FRAMES * n_mels];
    by_frame.par_chunks_mut(n_mels).enumerate().for_each_init(
        || vec![0f32; N_FREQS],
        |power, (i, mel)| {
            let start = i * HOP_LENGTH;
            basis.power(&padded[start..start + N_FFT], power);
            for (m, out) in mel.iter_mut().enumerate() {
                let energy = dot(&filters[m * N_FREQS..(m + 1) * N_FREQS], power);
                *out = energy.max(1e-10).log10();
            }
        },
    );
    let floor = by_frame.iter().copied().fold(f32::NEG_INFINITY, f32::max) - 8.0;
    let mut out = vec![0f32; n_mels * N_FRAMES];
    for (i, frame) in by_frame.chunks_exact(n_mels).enumerate() {
        for (m, v) in frame.iter().enumerate() {
            out[m * N_FRAMES + i] = v.max(floor) / 4.0 + 1.0;
        }
    }
    out
}
