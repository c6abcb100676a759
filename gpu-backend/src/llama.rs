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

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;

use crate::error::ModelError;

/// Shape of the network, read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub hidden: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    pub rms_eps: f64,
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
}

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
    attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
}

/// The key/value history of one sequence: one `(k, v)` pair per layer, each shaped
/// `(1, n_kv_head, len, head_dim)`.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
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
}

/// One sequence's part of a forward step: the new tokens and the cache they extend.
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Quantized llama weights, shared by every sequence that runs on them.
pub struct QuantizedLlama {
    config: LlamaConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl QuantizedLlama {
    /// Loads the weights named as llama.cpp names them (`blk.N.attn_q.weight`, ...).
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_gguf(ct)?;
        let mut tensor =
            |name: &str| -> Result<QTensor, ModelError> { Ok(ct.tensor(reader, name, device)?) };
        let embed_q = tensor("token_embd.weight")?;
        let embed = Embedding::new(embed_q.dequantize(device)?, config.hidden);
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, config.rms_eps)?;
        // Small models tie the output projection to the embedding table.
        let output = match ct.tensor_infos.contains_key("output.weight") {
            true => tensor("output.weight")?,
            false => embed_q,
        };
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut q = |suffix: &str| -> Result<QMatMul, ModelError> {
                Ok(QMatMul::from_qtensor(tensor(&format!(
                    "blk.{i}.{suffix}"
                ))?)?)
            };
            layers.push(Layer {
                wq: q("attn_q.weight")?,
                wk: q("attn_k.weight")?,
                wv: q("attn_v.weight")?,
                wo: q("attn_output.weight")?,
                w_gate: q("ffn_gate.weight")?,
                w_up: q("ffn_up.weight")?,
                w_down: q("ffn_down.weight")?,
                attn_norm: RmsNorm::from_qtensor(
                    tensor(&format!("blk.{i}.attn_norm.weight"))?,
                    config.rms_eps,
                )?,
                ffn_norm: RmsNorm::from_qtensor(
                    tensor(&format!("blk.{i}.ffn_norm.weight"))?,
                    config.rms_eps,
                )?,
            });
        }
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            output: QMatMul::from_qtensor(output)?,
            cos,
            sin,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// A fresh, empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.config.n_layer).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Runs one step for several sequences at once and returns, for each, the logits of its
    /// last new position: a `(batch, vocab)` f32 tensor in input order.
    pub fn forward(&self, inputs: &mut [StepInput<'_>]) -> Result<Tensor, ModelError> {
        let lens: Vec<usize> = inputs.iter().map(|s| s.tokens.len()).collect();
        if lens.is_empty() || lens.contains(&0) {
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
        let all: Vec<u32> = inputs
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let ids = Tensor::new(all.as_slice(), &self.device)?;
        let mut x = self.embed.forward(&ids)?; // (T, hidden)
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let q = layer.wq.forward(&h)?;
            let k = layer.wk.forward(&h)?;
            let v = layer.wv.forward(&h)?;
            let mut outs = Vec::with_capacity(inputs.len());
            let mut offset = 0;
            for (s, &len) in inputs.iter_mut().zip(&lens) {
                let y = self.attend(
                    &q.narrow(0, offset, len)?,
                    &k.narrow(0, offset, len)?,
                    &v.narrow(0, offset, len)?,
                    &mut s.cache.layers[li],
                    s.cache.len,
                )?;
                outs.push(y);
                offset += len;
            }
            let attn = Tensor::cat(&outs, 0)?;
            x = (x + layer.wo.forward(&attn)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            let gate = candle_nn::ops::silu(&layer.w_gate.forward(&h)?)?;
            let mlp = layer.w_down.forward(&(gate * layer.w_up.forward(&h)?)?)?;
            x = (x + mlp)?;
        }
        for (s, &len) in inputs.iter_mut().zip(&lens) {
            s.cache.len += len;
        }
        // Only each sequence's last position needs logits.
        let mut last = Vec::with_capacity(lens.len());
        let mut end = 0u32;
        for &len in &lens {
            end += len as u32;
            last.push(end - 1);
        }
        let last = Tensor::new(last.as_slice(), &self.device)?;
        let x = self.norm.forward(&x.index_select(&last, 0)?)?;
        Ok(self.output.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Causal self-attention of `len` new positions of one sequence, appending their keys and
    /// values to that sequence's cache for this layer.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        pos: usize,
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let len = q.dim(0)?;
        let heads = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((1, len, n, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let cos = self.cos.narrow(0, pos, len)?;
        let sin = self.sin.narrow(0, pos, len)?;
        // GGUF llama weights are permuted for interleaved (GPT-J style) rotary embeddings.
        let q = candle_nn::rotary_emb::rope_i(&heads(q, c.n_head)?, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_i(&heads(k, c.n_kv_head)?, &cos, &sin)?;
        let v = heads(v, c.n_kv_head)?;
        let (k, v) = match cache.take() {
            None => (k, v),
            Some((kc, vc)) => (Tensor::cat(&[&kc, &k], 2)?, Tensor::cat(&[&vc, &v], 2)?),
        };
        *cache = Some((k.clone(), v.clone()));
        let groups = c.n_head / c.n_kv_head;
        let k = candle_transformers::utils::repeat_kv(k, groups)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, groups)?.contiguous()?;
        let att = (q.matmul(&k.t()?)? / (c.head_dim as f64).sqrt())?;
        let att = if len > 1 {
            let total = pos + len;
            let mask: Vec<f32> = (0..len)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (len, total), &self.device)?;
            att.broadcast_add(&mask)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // (1, heads, len, head_dim)
        Ok(y.transpose(1, 2)?.reshape((len, c.n_head * c.head_dim))?)
    }
}

fn rope_tables(c: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor), ModelError> {
    let theta: Vec<f32> = (0..c.head_dim)
        .step_by(2)
        .map(|i| 1.0 / c.rope_base.powf(i as f32 / c.head_dim as f32))
        .collect();
    let n = theta.len();
    let theta = Tensor::from_vec(theta, (1, n), device)?;
    let positions = Tensor::arange(0, c.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((c.context_length, 1))?;
    let angles = positions.matmul(&theta)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Index of the largest logit: greedy decoding, shared by the sampler and tests.
pub fn argmax(logits: &Tensor) -> Result<u32, ModelError> {
    Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?)
}
