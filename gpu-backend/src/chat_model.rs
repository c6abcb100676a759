//! A loaded chat model: quantized llama weights, their tokenizer, and their chat template.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use tokenizers::Tokenizer;

use crate::error::ModelError;
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::llama::QuantizedLlama;

/// One message of a conversation, already flattened to text.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`, as the template names turns.
    pub role: String,
    /// The message's text (parts joined).
    pub content: String,
}

/// Weights, tokenizer and end-of-turn tokens of one GGUF chat model.
pub struct ChatModel {
    /// The network.
    pub llama: QuantizedLlama,
    /// Built from the GGUF metadata, so it always matches the weights.
    pub tokenizer: Tokenizer,
    /// Tokens that end the assistant's turn (`<|im_end|>`, and `eos` if different).
    stop_tokens: Vec<u32>,
}

/// The system prompt SmolLM2's chat template inserts when a conversation has none.
const DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

impl ChatModel {
    /// Loads a GGUF llama model and builds its tokenizer from the same file.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let mut file =
            std::io::BufReader::new(std::fs::File::open(path).map_err(ModelError::io(path))?);
        let content = gguf_file::Content::read(&mut file)?;
        let tokenizer = tokenizer_from_gguf(&content)?;
        let llama = QuantizedLlama::from_gguf(&content, &mut file, device)?;
        let mut stop_tokens: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        if let Some(eos) = content
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
        {
            if !stop_tokens.contains(&eos) {
                stop_tokens.push(eos);
            }
        }
        Ok(Self {
            llama,
            tokenizer,
            stop_tokens,
        })
    }

    /// Whether `token` ends the assistant's turn.
    pub fn is_stop_token(&self, token: u32) -> bool {
        self.stop_tokens.contains(&token)
    }

    /// Renders a conversation with the model's ChatML template, ready for the assistant to
    /// answer (the same text SmolLM2's Jinja template produces with
    /// `add_generation_prompt=True`).
    pub fn render_prompt(messages: &[ChatMessage]) -> String {
        let mut out = String::new();
        if messages.first().is_none_or(|m| m.role != "system") {
            out.push_str("<|im_start|>system\n");
            out.push_str(DEFAULT_SYSTEM);
            out.push_str("<|im_end|>\n");
        }
        for m in messages {
            out.push_str("<|im_start|>");
            out.push_str(&m.role);
            out.push('\n');
            out.push_str(&m.content);
            out.push_str("<|im_end|>\n");
        }
        out.push_str("<|im_start|>assistant\n");
        out
    }

    /// Token ids of a rendered prompt (special tokens in the text are matched as such).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self.tokenizer.encode(prompt, false)?.get_ids().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_chatml_with_the_default_system_prompt() {
        assert_eq!(
            ChatModel::render_prompt(&[msg("user", "Hi")]),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn keeps_a_given_system_prompt_and_the_turn_order() {
        let prompt = ChatModel::render_prompt(&[
            msg("system", "Be brief."),
            msg("user", "Hi"),
            msg("assistant", "Hello!"),
            msg("user", "Bye"),
        ]);
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
