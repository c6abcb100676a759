//! The forward pass on candle's tensor ops: runs on any device candle supports (CUDA with
//! the `cuda` feature), and serves as the independent implementation the native CPU path
//! is tested against.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Embedding;

use super::{CacheLayers, LlamaConfig, StepInput};
use crate::error::ModelError;

/// RMS normalisation with a GGUF norm weight (dequantized once at load). A few lines of our
/// own rather than candle-transformers' `quantized_nn::RmsNorm`: that crate was the largest
/// unit of a cold build (#11).
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn from_qtensor(weight: QTensor, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: weight.dequantize(&weight.device())?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Repeats each of the `n_kv_head` key/value heads of a `(batch, n_kv_head, seq, head_dim)`
/// tensor `groups` times, so grouped-query attention can use one plain matmul per head.
fn repeat_kv(x: Tensor, groups: usize) -> candle_core::Result<Tensor> {
    if groups == 1 {
        return Ok(x);
    }
    let (b, kv_heads, seq, head_dim) = x.dims4()?;
    // Concatenating along the sequence axis then reshaping puts each head's copies next to
    // each other: head h of the result reads kv head h / groups.
    Tensor::cat(&vec![&x; groups], 2)?.reshape((b, kv_heads * groups, seq, head_dim))
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

/// Weights as candle tensors on their device.
pub(super) struct CandleLlama {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
}

impl CandleLlama {
    pub(super) fn load<R: Read + Seek>(
        config: &LlamaConfig,
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self, ModelError> {
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
        let angles = Tensor::from_vec(
            config.rope_angles(),
            (config.context_length, config.head_dim / 2),
            device,
        )?;
        Ok(Self {
            embed,
            layers,
            norm,
            output: QMatMul::from_qtensor(output)?,
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// One step over all `inputs`; returns `(batch, vocab)` logits. The caller advances the
    /// caches' lengths.
    pub(super) fn forward(
        &self,
        c: &LlamaConfig,
        device: &Device,
        inputs: &mut [StepInput<'_>],
    ) -> Result<Tensor, ModelError> {
        let lens: Vec<usize> = inputs.iter().map(|s| s.tokens.len()).collect();
        let all: Vec<u32> = inputs
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let ids = Tensor::new(all.as_slice(), device)?;
        let mut x = self.embed.forward(&ids)?; // (T, hidden)
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let q = layer.wq.forward(&h)?;
            let k = layer.wk.forward(&h)?;
            let v = layer.wv.forward(&h)?;
            let mut outs = Vec::with_capacity(inputs.len());
            let mut offset = 0;
            for (s, &len) in inputs.iter_mut().zip(&lens) {
                let pos = s.cache.len;
                let CacheLayers::Candle(cache) = &mut s.cache.layers else {
                    return Err(ModelError::Format(
                        "a KV cache made for other kernels".into(),
                    ));
                };
                let y = self.attend(
                    c,
                    device,
                    &q.narrow(0, offset, len)?,
                    &k.narrow(0, offset, len)?,
                    &v.narrow(0, offset, len)?,
                    &mut cache[li],
                    pos,
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
        // Only each sequence's last position needs logits.
        let mut last = Vec::with_capacity(lens.len());
        let mut end = 0u32;
        for &len in &lens {
            end += len as u32;
            last.push(end - 1);
        }
        let last = Tensor::new(last.as_slice(), device)?;
        let x = self.norm.forward(&x.index_select(&last, 0)?)?;
        Ok(self.output.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Causal self-attention of `len` new positions of one sequence, appending their keys and
    /// values to that sequence's cache for this layer.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        c: &LlamaConfig,
        device: &Device,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        pos: usize,
    ) -> Result<Tensor, ModelError> {
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
        let k = repeat_kv(k, groups)?.contiguous()?;
        let v = repeat_kv(v, groups)?.contiguous()?;
        let att = (q.matmul(&k.t()?)? / (c.head_dim as f64).sqrt())?;
        let att = if len > 1 {
            let total = pos + len;
            let mask: Vec<f32> = (0..len)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (len, total), device)?;
            att.broadcast_add(&mask)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // (1, heads, len, head_dim)
        Ok(y.transpose(1, 2)?.reshape((len, c.n_head * c.head_dim))?)
    }
}
