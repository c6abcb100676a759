//! A llama forward pass over GGUF-quantized weights, with one KV cache per sequence.
//!
//! candle's stock `quantized_llama` keeps a single KV cache inside the model, which allows one
//! sequence at a time. Continuous batching needs the opposite: the weights are shared and
//! every sequence carries its own cache, so one step can advance many sequences whose
//! contexts have different lengths. [`QuantizedLlama::forward`] does exactly that: the
//! tokens of all sequences in the step (a whole prompt for a newly admitted sequence, one
//! token for a decoding one) are stacked into one matrix for the projections and the MLP,
//! where batching pays, and attention runs per sequence against that sequence's own cache.
//! Every row of a quantized matmul is computed independently, so a sequence's logits do not
//! depend on what else shares its batch: batched greedy decoding equals decoding alone.
//!
//! Two implementations sit behind it ([`Kernels`]): on the CPU, [`native`] runs the whole
//! step on plain buffers with the [`crate::kernels`] (SIMD dot products straight on the GGUF
//! blocks); on other devices (CUDA), [`candle_ops`] runs it with candle's tensor ops. Both
//! compute the same network; a test holds them to the same greedy output.

mod candle_ops;
mod native;

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor, D};

use crate::error::ModelError;

/// Shape of the network, read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (fewer than query heads with grouped-query attention).
    pub n_kv_head: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Longest sequence (prompt + completion) the model supports.
    pub context_length: usize,
    /// Tokens in the vocabulary (width of the logits).
    pub vocab_size: usize,
    /// Epsilon of the RMS norms.
    pub rms_eps: f64,
    /// Base of the rotary position embedding's frequencies.
    pub rope_base: f32,
}

impl LlamaConfig {
    fn from_gguf(ct: &gguf_file::Content) -> Result<Self, ModelError> {
        let get = |k: &str| {
            ct.metadata
                .get(k)
                .ok_or_else(|| ModelError::Format(format!("GGUF metadata has no `{k}`")))
        };
        let arch = get("general.architecture")?.to_string()?.clone();
        if arch != "llama" {
            return Err(ModelError::Format(format!(
                "architecture `{arch}` is not supported (llama only)"
            )));
        }
        let u = |k: &str| -> Result<usize, ModelError> { Ok(get(k)?.to_u32()? as usize) };
        let n_head = u("llama.attention.head_count")?;
        let hidden = u("llama.embedding_length")?;
        let vocab_size = match ct.metadata.get("llama.vocab_size") {
            Some(v) => v.to_u32()? as usize,
            None => get("tokenizer.ggml.tokens")?.to_vec()?.len(),
        };
        Ok(Self {
            n_layer: u("llama.block_count")?,
            n_head,
            n_kv_head: u("llama.attention.head_count_kv")?,
            hidden,
            head_dim: hidden / n_head,
            context_length: u("llama.context_length")?,
            vocab_size,
            rms_eps: get("llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_base: ct
                .metadata
                .get("llama.rope.freq_base")
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(10_000.0),
        })
    }

    /// Bytes one position of a KV cache takes (f32 keys and values, every layer): what a
    /// memory budget for cached sequences is divided by.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (self.n_layer * 2 * self.n_kv_head * self.head_dim * std::mem::size_of::<f32>()) as u64
    }

    /// Rotary angles `position · θ_i` for every position and frequency, row-major
    /// `context_length × head_dim / 2`: the same f32 products candle's tables hold.
    fn rope_angles(&self) -> Vec<f32> {
        let theta: Vec<f32> = (0..self.head_dim)
            .step_by(2)
            .map(|i| 1.0 / self.rope_base.powf(i as f32 / self.head_dim as f32))
            .collect();
        (0..self.context_length)
            .flat_map(|p| theta.iter().map(move |t| p as f32 * t))
            .collect()
    }
}

/// Which implementation runs the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The native CPU path ([`crate::kernels`]); needs Q4_1/Q8_0 matrices on the CPU.
    Native,
    /// candle's tensor ops, on any device candle supports.
    Candle,
}

/// The key/value history of one sequence, in the layout of the implementation that made it.
///
/// The keys and values of position `i` depend only on the tokens `0..=i` (causal attention;
/// every row of a step is computed on its own), so the first `n` positions of one
/// sequence's cache are valid for any other sequence whose first `n` tokens are the same:
/// [`KvCache::prefix`] copies them, which is what the engine's prefix cache reuses.
#[derive(Debug)]
pub struct KvCache {
    layers: CacheLayers,
    len: usize,
    /// Values per position per layer for the keys (and for the values): `n_kv_head · head_dim`.
    width: usize,
}

#[derive(Debug)]
enum CacheLayers {
    Native(Vec<native::LayerKv>),
    Candle(Vec<Option<(Tensor, Tensor)>>),
}

impl KvCache {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been fed through this cache yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A new cache holding a copy of the first `n` positions (at most [`KvCache::len`]): the
    /// history of any sequence that starts with the same `n` tokens.
    pub fn prefix(&self, n: usize) -> Result<KvCache, ModelError> {
        let n = n.min(self.len);
        let layers = match &self.layers {
            CacheLayers::Native(layers) => {
                CacheLayers::Native(layers.iter().map(|kv| kv.prefix(n * self.width)).collect())
            }
            CacheLayers::Candle(layers) => CacheLayers::Candle(
                layers
                    .iter()
                    .map(|kv| match kv {
                        // (1, kv heads, positions, head_dim): positions are dimension 2.
                        Some((k, v)) if n > 0 => Ok(Some((k.narrow(2, 0, n)?, v.narrow(2, 0, n)?))),
                        _ => Ok(None),
                    })
                    .collect::<candle_core::Result<_>>()?,
            ),
        };
        Ok(KvCache {
            layers,
            len: n,
            width: self.width,
        })
    }

    /// Gives back the spare capacity the cache grew into, so that a cache kept for reuse
    /// takes the memory its length says.
    pub fn shrink_to_fit(&mut self) {
        if let CacheLayers::Native(layers) = &mut self.layers {
            for kv in layers {
                kv.shrink_to_fit();
            }
        }
    }
}

/// One sequence's part of a forward step: the new tokens and the cache they extend.
pub struct StepInput<'a> {
    /// Tokens to feed: a whole prompt, or the last sampled token.
    pub tokens: &'a [u32],
    /// The sequence's cache, extended by `tokens`.
    pub cache: &'a mut KvCache,
}

enum Weights {
    Native(native::NativeLlama),
    Candle(candle_ops::CandleLlama),
}

/// Quantized llama weights, shared by every sequence that runs on them.
pub struct QuantizedLlama {
    config: LlamaConfig,
    weights: Weights,
    device: Device,
}

impl QuantizedLlama {
    /// Loads the weights named as llama.cpp names them (`blk.N.attn_q.weight`, ...), for the
    /// native kernels on the CPU when the file's formats allow, else for candle.
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let kernels = if device.is_cpu() && native::supports(ct) {
            Kernels::Native
        } else {
            Kernels::Candle
        };
        Self::from_gguf_with(ct, reader, device, kernels)
    }

    /// Like [`QuantizedLlama::from_gguf`], with the implementation chosen by the caller
    /// (tests compare the two).
    pub fn from_gguf_with<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_gguf(ct)?;
        let weights = match kernels {
            Kernels::Native if !device.is_cpu() => {
                return Err(ModelError::Format(
                    "the native kernels run on the CPU only".into(),
                ))
            }
            Kernels::Native => Weights::Native(native::NativeLlama::load(&config, ct, reader)?),
            Kernels::Candle => {
                Weights::Candle(candle_ops::CandleLlama::load(&config, ct, reader, device)?)
            }
        };
        Ok(Self {
            config,
            weights,
            device: device.clone(),
        })
    }

    /// The network's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Which implementation these weights run on.
    pub fn kernels(&self) -> Kernels {
        match self.weights {
            Weights::Native(_) => Kernels::Native,
            Weights::Candle(_) => Kernels::Candle,
        }
    }

    /// A fresh, empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        let n = self.config.n_layer;
        let layers = match self.weights {
            Weights::Native(_) => CacheLayers::Native((0..n).map(|_| Default::default()).collect()),
            Weights::Candle(_) => CacheLayers::Candle((0..n).map(|_| None).collect()),
        };
        KvCache {
            layers,
            len: 0,
            width: self.config.n_kv_head * self.config.head_dim,
        }
    }

    /// Runs one step for several sequences at once and returns, for each, the logits of its
    /// last new position: a `(batch, vocab)` f32 tensor in input order, on the CPU whatever
    /// the device (the samplers read it row by row: one copy from a GPU per step, not one
    /// per sequence).
    pub fn forward(&self, inputs: &mut [StepInput<'_>]) -> Result<Tensor, ModelError> {
        if inputs.is_empty() || inputs.iter().any(|s| s.tokens.is_empty()) {
            return Err(ModelError::Format(
                "a step needs at least one token per sequence".into(),
            ));
        }
        for s in inputs.iter() {
            if s.cache.len + s.tokens.len() > self.config.context_length {
                return Err(ModelError::Format(format!(
                    "sequence exceeds the context window of {} tokens",
                    self.config.context_length
                )));
            }
        }
        let logits = match &self.weights {
            Weights::Native(w) => {
                let logits = w.forward(&self.config, inputs)?;
                Tensor::from_vec(logits, (inputs.len(), self.config.vocab_size), &self.device)?
            }
            Weights::Candle(w) => w
                .forward(&self.config, &self.device, inputs)?
                .to_device(&Device::Cpu)?,
        };
        for s in inputs.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        Ok(logits)
    }
}

/// Index of the largest logit: greedy decoding, shared by the sampler and tests.
pub fn argmax(logits: &Tensor) -> Result<u32, ModelError> {
    Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?)
}
