//! The byte-level BPE tokenizer of a GGUF chat model, rebuilt from the GGUF's own metadata.
//!
//! SmolLM2's GGUF ships no `tokenizer.json`, but it carries everything the tokenizer is made
//! of: `tokenizer.ggml.tokens` (the vocabulary, in id order), `tokenizer.ggml.merges` (BPE
//! merge rules, in rank order) and `tokenizer.ggml.token_type` (type 3 = control token). We
//! assemble the same pipeline Hugging Face uses for this family, checked against a reference:
//! each digit split on its own, then byte-level pre-tokenization without a leading space, BPE,
//! and a byte-level decoder; control tokens are special tokens matched before BPE.

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::error::ModelError;

/// GGUF `token_type` value for control tokens (`<|im_start|>`, `<|im_end|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;

fn string_array(content: &gguf_file::Content, key: &str) -> Result<Vec<String>, ModelError> {
    let value = content
        .metadata
        .get(key)
        .ok_or_else(|| ModelError::Format(format!("GGUF metadata has no `{key}`")))?;
    value
        .to_vec()?
        .iter()
        .map(|v| v.to_string().cloned().map_err(ModelError::from))
        .collect()
}

/// Builds the tokenizer from a GGUF file's metadata.
pub fn tokenizer_from_gguf(content: &gguf_file::Content) -> Result<Tokenizer, ModelError> {
    let tokens = string_array(content, "tokenizer.ggml.tokens")?;
    let merges = string_array(content, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_i32())
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| ModelError::Format(format!("malformed BPE merge `{m}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: ahash::AHashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let pre: Vec<PreTokenizerWrapper> = vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ];
    tokenizer.with_pre_tokenizer(Some(Sequence::new(pre)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer.add_special_tokens(specials)?;
    Ok(tokenizer)
}

/// Turns a growing list of generated token ids into text pieces, emitting a piece only once
/// it is complete UTF-8: byte-level BPE can split one character across several tokens, and a
/// stream must never show a half character.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    tokens: Vec<u32>,
    emitted_bytes: usize,
}

impl IncrementalDecoder {
    /// Adds one token and returns any newly completed text.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String, ModelError> {
        self.tokens.push(token);
        // Control tokens never show in completion text (as in OpenAI and vLLM output).
        let text = tokenizer.decode(&self.tokens, true)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted_bytes {
            return Ok(String::new());
        }
        // The decoded prefix is stable once complete, so the new text is the suffix.
        let piece = text
            .get(self.emitted_bytes..)
            .unwrap_or_default()
            .to_owned();
        self.emitted_bytes = text.len();
        Ok(piece)
    }
}
