//! A BERT encoder, just enough for the sentence-transformers models we serve
//! (all-MiniLM-L6-v2: absolute positions, erf GELU, post-norm layers, safetensors names
//! without a `bert.` prefix).
//!
//! Our own few dozen lines on candle-core/candle-nn ops instead of candle-transformers'
//! `models::bert`: that crate was the largest unit of a cold build (#11). The math is
//! Hugging Face's `BertModel`; `tests/real_models.rs` holds the vectors to
//! sentence-transformers' and to those recorded from candle-transformers.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::error::ModelError;

/// The fields of a Hugging Face BERT `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    hidden_act: String,
    #[serde(default = "absolute")]
    position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".into()
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder: token ids in, last hidden state out.
pub struct Bert {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
}

impl Bert {
    /// Loads the weights named as in a Hugging Face `BertModel` checkpoint.
    pub fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self, ModelError> {
        if c.hidden_act != "gelu" || c.position_embedding_type != "absolute" {
            return Err(ModelError::Format(format!(
                "config.json: BERT with hidden_act {:?} and position_embedding_type {:?} is not supported (only \"gelu\" and \"absolute\")",
                c.hidden_act, c.position_embedding_type
            )));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(ModelError::Format(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        let h = c.hidden_size;
        let norm = |vb: VarBuilder| candle_nn::layer_norm(h, c.layer_norm_eps, vb);
        let e = vb.pp("embeddings");
        let words = candle_nn::embedding(c.vocab_size, h, e.pp("word_embeddings"))?;
        let positions =
            candle_nn::embedding(c.max_position_embeddings, h, e.pp("position_embeddings"))?;
        let token_types =
            candle_nn::embedding(c.type_vocab_size, h, e.pp("token_type_embeddings"))?;
        let embed_norm = norm(e.pp("LayerNorm"))?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| -> candle_core::Result<Layer> {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                Ok(Layer {
                    query: candle_nn::linear(h, h, a.pp("self.query"))?,
                    key: candle_nn::linear(h, h, a.pp("self.key"))?,
                    value: candle_nn::linear(h, h, a.pp("self.value"))?,
                    attn_out: candle_nn::linear(h, h, a.pp("output.dense"))?,
                    attn_norm: norm(a.pp("output.LayerNorm"))?,
                    up: candle_nn::linear(h, c.intermediate_size, l.pp("intermediate.dense"))?,
                    down: candle_nn::linear(c.intermediate_size, h, l.pp("output.dense"))?,
                    out_norm: norm(l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            words,
            positions,
            token_types,
            embed_norm,
            layers,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        })
    }

    /// `(batch, seq)` ids, token types and 0/1 attention mask in; `(batch, seq, hidden)` out.
    /// Masked positions take no part in attention (their own rows are still computed).
    pub fn forward(
        &self,
        ids: &Tensor,
        types: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let pos = Tensor::arange(0u32, seq as u32, ids.device())?;
        let x = (self.words.forward(ids)? + self.token_types.forward(types)?)?
            .broadcast_add(&self.positions.forward(&pos)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        // Padding gets the most negative f32 added to its attention scores, as BERT does.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(1)?.unsqueeze(1)?;
        let bias = ((1.0 - mask)? * f64::from(f32::MIN))?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &bias)?;
        }
        Ok(x)
    }

    fn layer(&self, l: &Layer, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, s, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(l.query.forward(x)?)?;
        let k = heads(l.key.forward(x)?)?;
        let v = heads(l.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.flatten_from(2)?;
        let x = l.attn_norm.forward(&(l.attn_out.forward(&context)? + x)?)?;
        let up = l.up.forward(&x)?.gelu_erf()?;
        l.out_norm.forward(&(l.down.forward(&up)? + x)?)
    }
}
