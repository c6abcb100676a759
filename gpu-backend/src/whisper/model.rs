//! Whisper's encoder-decoder transformer (the OpenAI architecture, Hugging Face weight
//! names), on candle-core/candle-nn ops.
//!
//! Our own code instead of candle-transformers' `models::whisper`: that crate was the
//! largest unit of a cold build (#11). It is written for how [`super::Transcriber`] decodes:
//! the model holds only weights, and the per-window state (the encoder output projected to
//! each decoder layer's cross-attention keys and values) is a value the caller owns, so
//! requests share one model without cloning it.

use candle_core::{IndexOp, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// The model's shape, from the `config.json` written by `scripts/convert-whisper-ct2.py`
/// (Hugging Face's field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Mel bands of the input spectrogram.
    pub num_mel_bins: usize,
    /// Encoder positions (1500: 30 s after the stride-2 convolution).
    pub max_source_positions: usize,
    /// Width of both stacks.
    pub d_model: usize,
    /// Attention heads of the encoder.
    pub encoder_attention_heads: usize,
    /// Encoder blocks.
    pub encoder_layers: usize,
    /// Text vocabulary.
    pub vocab_size: usize,
    /// Decoder positions (448 tokens).
    pub max_target_positions: usize,
    /// Attention heads of the decoder.
    pub decoder_attention_heads: usize,
    /// Decoder blocks.
    pub decoder_layers: usize,
    /// Tokens never emitted.
    #[serde(default)]
    pub suppress_tokens: Vec<u32>,
}

/// Multi-head attention with Whisper's projections (no bias on the key).
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(d: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            query: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            key: candle_nn::linear_no_bias(d, d, vb.pp("k_proj"))?,
            value: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// Keys and values of `x`: `(batch, positions, d)` each.
    fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.key.forward(x)?, self.value.forward(x)?))
    }

    /// Attention of the queries from `x` over `k`/`v`, plus `mask` (additive) if any.
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let q = self.query.forward(x)?;
        let (b, n, d) = q.dims3()?;
        let split = |t: &Tensor| -> candle_core::Result<Tensor> {
            let (b, n, _) = t.dims3()?;
            t.reshape((b, n, self.heads, d / self.heads))?
                .transpose(1, 2)
        };
        // Scaling both sides by head_dim^-1/4 (rather than the scores by ^-1/2) keeps the
        // products in a smaller range, as OpenAI's implementation does.
        let scale = ((d / self.heads) as f64).powf(-0.25);
        let q = (split(&q)? * scale)?;
        let kt = (split(k)?.transpose(2, 3)? * scale)?;
        let mut scores = q.matmul(&kt)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(&mask.i((0..n, 0..n))?)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let mixed = weights
            .matmul(&split(v)?.contiguous()?)?
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        self.out.forward(&mixed)
    }
}

fn layer_norm(d: usize, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(d, 1e-5, vb)
}

/// A pre-norm residual block: self-attention, cross-attention (decoder only), MLP.
struct Block {
    attn: Attention,
    attn_norm: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    mlp_norm: LayerNorm,
}

impl Block {
    fn load(d: usize, heads: usize, cross: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let cross = match cross {
            true => Some((
                Attention::load(d, heads, vb.pp("encoder_attn"))?,
                layer_norm(d, vb.pp("encoder_attn_layer_norm"))?,
            )),
            false => None,
        };
        Ok(Self {
            attn: Attention::load(d, heads, vb.pp("self_attn"))?,
            attn_norm: layer_norm(d, vb.pp("self_attn_layer_norm"))?,
            cross,
            fc1: candle_nn::linear(d, 4 * d, vb.pp("fc1"))?,
            fc2: candle_nn::linear(4 * d, d, vb.pp("fc2"))?,
            mlp_norm: layer_norm(d, vb.pp("final_layer_norm"))?,
        })
    }

    /// `cross_kv` is this block's projection of the audio features (decoder blocks only).
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cross_kv: Option<&(Tensor, Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let h = self.attn_norm.forward(x)?;
        let (k, v) = self.attn.keys_values(&h)?;
        let mut x = (x + self.attn.attend(&h, &k, &v, mask)?)?;
        if let (Some((attn, norm)), Some((k, v))) = (&self.cross, cross_kv) {
            x = (&x + attn.attend(&norm.forward(&x)?, k, v, None)?)?;
        }
        // candle's `gelu` is the tanh approximation, which the recorded transcripts use.
        let mlp = self
            .fc2
            .forward(&self.fc1.forward(&self.mlp_norm.forward(&x)?)?.gelu()?)?;
        x + mlp
    }
}

/// Whisper's fixed sinusoidal encoder positions: sines of `channels / 2` geometric
/// frequencies, then their cosines.
fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let step = 10000f32.ln() / (half - 1) as f32;
    let inv: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut out = Vec::with_capacity(length * channels);
    for t in 0..length {
        let angles = inv.iter().map(|f| t as f32 * f);
        out.extend(angles.clone().map(f32::sin));
        out.extend(angles.map(f32::cos));
    }
    out
}

/// The audio encoder and the text decoder, weights only.
pub struct Whisper {
    conv1: Conv1d,
    conv2: Conv1d,
    audio_positions: Tensor,
    encoder: Vec<Block>,
    encoder_norm: LayerNorm,
    tokens: Embedding,
    text_positions: Tensor,
    decoder: Vec<Block>,
    decoder_norm: LayerNorm,
    causal_mask: Tensor,
    /// The shape it was loaded with.
    pub config: Config,
}

/// The audio features of one window, projected for every decoder block's cross-attention:
/// computed once per window, then read by every decoding step.
pub struct AudioContext(Vec<(Tensor, Tensor)>);

impl Whisper {
    /// Loads `model.encoder.*` and `model.decoder.*` (Hugging Face names).
    pub fn load(vb: &VarBuilder, config: Config) -> candle_core::Result<Self> {
        let c = &config;
        let d = c.d_model;
        let dev = vb.device();
        let enc = vb.pp("model.encoder");
        let dec = vb.pp("model.decoder");
        let conv = |stride| Conv1dConfig {
            padding: 1,
            stride,
            groups: 1,
            dilation: 1,
            cudnn_fwd_algo: None,
        };
        let n = c.max_target_positions;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Ok(Self {
            conv1: candle_nn::conv1d(c.num_mel_bins, d, 3, conv(1), enc.pp("conv1"))?,
            conv2: candle_nn::conv1d(d, d, 3, conv(2), enc.pp("conv2"))?,
            audio_positions: Tensor::from_vec(
                sinusoids(c.max_source_positions, d),
                (c.max_source_positions, d),
                dev,
            )?,
            encoder: (0..c.encoder_layers)
                .map(|i| {
                    let vb = enc.pp(format!("layers.{i}"));
                    Block::load(d, c.encoder_attention_heads, false, vb)
                })
                .collect::<candle_core::Result<_>>()?,
            encoder_norm: layer_norm(d, enc.pp("layer_norm"))?,
            tokens: candle_nn::embedding(c.vocab_size, d, dec.pp("embed_tokens"))?,
            text_positions: dec.get((n, d), "embed_positions.weight")?,
            decoder: (0..c.decoder_layers)
                .map(|i| {
                    let vb = dec.pp(format!("layers.{i}"));
                    Block::load(d, c.decoder_attention_heads, true, vb)
                })
                .collect::<candle_core::Result<_>>()?,
            decoder_norm: layer_norm(d, dec.pp("layer_norm"))?,
            causal_mask: Tensor::from_vec(mask, (n, n), dev)?,
            config,
        })
    }

    /// Encodes a `(1, mel bins, 3000)` log-mel window and projects it for the decoder.
    pub fn encode(&self, mel: &Tensor) -> candle_core::Result<AudioContext> {
        let x = self.conv1.forward(mel)?.gelu()?;
        let x = self.conv2.forward(&x)?.gelu()?.transpose(1, 2)?;
        let positions = self.audio_positions.narrow(0, 0, x.dim(1)?)?;
        let mut x = x.broadcast_add(&positions)?;
        for block in &self.encoder {
            x = block.forward(&x, None, None)?;
        }
        let features = self.encoder_norm.forward(&x)?;
        let projected = self
            .decoder
            .iter()
            .filter_map(|b| b.cross.as_ref())
            .map(|(attn, _)| attn.keys_values(&features))
            .collect::<candle_core::Result<_>>()?;
        Ok(AudioContext(projected))
    }

    /// Runs the decoder over all of `tokens` (`(1, n)`, from position 0; Whisper's windows
    /// are short, so there is no self-attention cache) and returns the hidden states
    /// `(1, n, d)`.
    pub fn decode(&self, tokens: &Tensor, audio: &AudioContext) -> candle_core::Result<Tensor> {
        let n = tokens.dim(1)?;
        let positions = self.text_positions.narrow(0, 0, n)?;
        let mut x = self.tokens.forward(tokens)?.broadcast_add(&positions)?;
        for (block, kv) in self.decoder.iter().zip(&audio.0) {
            x = block.forward(&x, Some(&self.causal_mask), Some(kv))?;
        }
        self.decoder_norm.forward(&x)
    }

    /// Logits over the vocabulary for hidden states `(1, n, d)`: the output projection is the
    /// token embedding, transposed.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.tokens.embeddings().broadcast_left(hidden.dim(0)?)?;
        hidden.matmul(&w.t()?)
    }
}
