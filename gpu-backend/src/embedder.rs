//! Sentence embeddings from a BERT sentence-transformer (all-MiniLM-L6-v2).
//!
//! The sentence-transformers recipe for this model is: tokenize (the model's own
//! `tokenizer.json`, which truncates at 128 tokens), run BERT, mean-pool the last hidden state
//! over real (non-padding) tokens, then L2-normalise, so a dot product is a cosine.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer};

use crate::bert::{Bert, BertConfig};
use crate::error::ModelError;

/// A loaded embedding model.
pub struct Embedder {
    model: Bert,
    tokenizer: Tokenizer,
    device: Device,
}

/// Embeddings for a batch of inputs, in input order.
pub struct Embeddings {
    /// One L2-normalised vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Real tokens consumed (padding excluded), for `usage.prompt_tokens`.
    pub prompt_tokens: usize,
}

impl Embedder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let read = |name: &str| ModelError::read_model_file(dir, name);
        let config: BertConfig = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, device)?;
        let model = Bert::load(vb, &config)?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)?;
        // The file pads every input to 128; padding to the longest input in the batch gives
        // the same pooled vectors (padding is masked out) for less work.
        let padding = tokenizer.get_padding().cloned().unwrap_or_default();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..padding
        }));
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
        })
    }

    /// Embeds each input; vectors have unit L2 norm.
    pub fn embed(&self, inputs: &[String]) -> Result<Embeddings, ModelError> {
        let encodings = self.tokenizer.encode_batch(inputs.to_vec(), true)?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.get_ids().len());
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings
                .iter()
                .flat_map(|e| f(e).iter().copied())
                .collect()
        };
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (rows, cols), &self.device)?;
        let types = Tensor::from_vec(flat(&|e| e.get_type_ids()), (rows, cols), &self.device)?;
        let mask_u32 = flat(&|e| e.get_attention_mask());
        let prompt_tokens = mask_u32.iter().map(|&m| m as usize).sum();
        let mask = Tensor::from_vec(mask_u32, (rows, cols), &self.device)?;
        let hidden = self.model.forward(&ids, &types, &mask)?; // (rows, cols, dim)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        let vectors = mean.broadcast_div(&norm)?.to_vec2::<f32>()?;
        Ok(Embeddings {
            vectors,
            prompt_tokens,
        })
    }
}
