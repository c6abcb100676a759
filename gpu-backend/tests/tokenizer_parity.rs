//! The tokenizer rebuilt from SmolLM2's GGUF must encode and decode exactly like the
//! reference: golden ids produced by Hugging Face's `tokenizers` (Python) configured as the
//! upstream SmolLM2 tokenizer (see `fixtures/smollm2_tokenizer_golden.py`).

mod common;

use candle_core::quantized::gguf_file;
use gpu_backend::gguf_tokenizer::{tokenizer_from_gguf, IncrementalDecoder};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    text: String,
    ids: Vec<u32>,
}

fn smollm2_tokenizer() -> tokenizers::Tokenizer {
    let path = common::real_models_dir()
        .join(common::CHAT_MODEL)
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    tokenizer_from_gguf(&content).unwrap()
}

#[test]
fn encodes_and_decodes_like_the_reference() {
    let tokenizer = smollm2_tokenizer();
    let golden: Vec<Golden> =
        serde_json::from_str(include_str!("fixtures/smollm2_tokenizer_golden.json")).unwrap();
    assert!(golden.len() >= 8);
    for case in golden {
        let ids = tokenizer
            .encode(case.text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, case.ids, "encoding {:?}", case.text);
        let back = tokenizer.decode(&case.ids, false).unwrap();
        assert_eq!(back, case.text, "decoding {:?}", case.ids);
    }
}

#[test]
fn control_tokens_are_single_special_tokens() {
    let tokenizer = smollm2_tokenizer();
    assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(2));
    let ids = tokenizer
        .encode("a<|im_end|>b", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[1], 2);
    // Special tokens are dropped when asked, as the OpenAI-facing text must not show them.
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "ab");
}

#[test]
fn digits_are_split_one_by_one() {
    let tokenizer = smollm2_tokenizer();
    let enc = tokenizer.encode("2024", false).unwrap();
    assert_eq!(enc.get_tokens(), ["2", "0", "2", "4"]);
}

#[test]
fn incremental_decoding_never_emits_half_characters() {
    let tokenizer = smollm2_tokenizer();
    let text = "héllo wörld — 你好 🚀!";
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let mut decoder = IncrementalDecoder::default();
    let mut out = String::new();
    for id in ids {
        let piece = decoder.push(&tokenizer, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "half character in {piece:?}");
        out.push_str(&piece);
    }
    assert_eq!(out, text);
}
