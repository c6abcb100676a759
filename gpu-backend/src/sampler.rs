//! Picks the next token from a row of logits: greedy, or sampled from the softmax at a
//! temperature, optionally restricted to the nucleus (top-p).
//!
//! This is our own small sampler rather than candle-transformers' `LogitsProcessor`: that
//! crate was the largest unit of a cold build (#11) and we use only these three modes. The
//! draws are the same as that processor's for the same seed (a `StdRng` seeded with
//! `seed_from_u64`, one `WeightedIndex` draw per token over the same probabilities), so a
//! seeded request keeps its output; `tests/sampler.rs` holds it to recorded draws.

use candle_core::{DType, Tensor, D};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// How tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (temperature 0).
    ArgMax,
    /// A draw from the whole softmax at `temperature`.
    All {
        /// Divides the logits before the softmax.
        temperature: f64,
    },
    /// A draw from the smallest set of most likely tokens whose probability reaches `p`.
    TopP {
        /// Nucleus mass in (0, 1); outside it the whole softmax is used.
        p: f64,
        /// Divides the logits before the softmax.
        temperature: f64,
    },
}

/// A seeded token sampler; one per sequence, so a seeded request is reproducible.
pub struct Sampler {
    rng: StdRng,
    sampling: Sampling,
}

impl Sampler {
    /// A sampler whose draws depend only on `seed` and the logits it is given.
    pub fn new(seed: u64, sampling: Sampling) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            sampling,
        }
    }

    /// The next token for a 1-D row of logits.
    pub fn sample(&mut self, logits: &Tensor) -> candle_core::Result<u32> {
        let logits = logits.to_dtype(DType::F32)?;
        match self.sampling {
            Sampling::ArgMax => logits.argmax(D::Minus1)?.to_scalar::<u32>(),
            Sampling::All { temperature } => {
                let probs = softmax(&logits, temperature)?;
                self.draw(&probs)
            }
            Sampling::TopP { p, temperature } => {
                let mut probs = softmax(&logits, temperature)?;
                if p > 0.0 && p < 1.0 {
                    keep_nucleus(&mut probs, p as f32);
                }
                self.draw(&probs)
            }
        }
    }

    /// One draw of an index with probability proportional to its weight.
    fn draw(&mut self, weights: &[f32]) -> candle_core::Result<u32> {
        let dist = WeightedIndex::new(weights).map_err(candle_core::Error::wrap)?;
        Ok(dist.sample(&mut self.rng) as u32)
    }
}

fn softmax(logits: &Tensor, temperature: f64) -> candle_core::Result<Vec<f32>> {
    candle_nn::ops::softmax_last_dim(&(logits / temperature)?)?.to_vec1()
}

/// Zeroes every probability outside the nucleus: walking tokens from the most likely down,
/// a token is kept while the mass kept before it is still below `top_p`.
fn keep_nucleus(probs: &mut [f32], top_p: f32) {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut kept = 0.0f32;
    for i in order {
        if kept < top_p {
            kept += probs[i];
        } else {
            probs[i] = 0.0;
        }
    }
}
