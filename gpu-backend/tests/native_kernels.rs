//! The native CPU kernels on the real SmolLM2 weights, held to an independent f32 reference
//! (`fixtures/smollm2_reference_forward.py`: numpy over the dequantized weights).
//!
//! The native path multiplies the dequantized weights with activations rounded to 16 bits,
//! so its logits stay within 0.01 of the reference. (llama.cpp and candle round activations
//! to 8 bits before each matmul and land 0.2-1.2 away from the same reference logits on the
//! fixture prompt; candle's greedy continuation of the haiku prompt below leaves the
//! reference's after a few tokens.) Fails (never skips) when the weights are missing: run
//! `scripts/fetch-models.sh`.

mod common;

use common::{greedy, load_smollm2};
use gpu_backend::llama::Kernels;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn native_logits_match_the_f32_reference() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/smollm2_reference_logits.json")).unwrap();
    let top_ids: Vec<usize> = serde_json::from_value(fixture["top_ids"].clone()).unwrap();
    let top: Vec<f32> = serde_json::from_value(fixture["top_logits"].clone()).unwrap();
    let (_, logits) = greedy(
        &load_smollm2(Kernels::Native),
        &ids(&fixture["prompt_ids"]),
        1,
    );
    for (&id, &want) in top_ids.iter().zip(&top) {
        assert!(
            (logits[id] - want).abs() < 0.01,
            "logit of {id}: {} vs reference {want}",
            logits[id]
        );
    }
}

#[test]
fn native_greedy_tokens_match_the_f32_reference() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/smollm2_reference_greedy.json")).unwrap();
    let want = ids(&fixture["tokens"]);
    let (got, _) = greedy(
        &load_smollm2(Kernels::Native),
        &ids(&fixture["prompt_ids"]),
        want.len(),
    );
    assert_eq!(got, want);
}

/// The candle path stays a working implementation of the same network (it serves CUDA):
/// its top token for the fixture prompt is one of the reference's top two, which are 0.08
/// apart, less than its 8-bit activation rounding moves them.
#[test]
fn candle_path_agrees_with_the_reference_within_its_rounding() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/smollm2_reference_logits.json")).unwrap();
    let top = ids(&fixture["top_ids"]);
    let (tokens, _) = greedy(
        &load_smollm2(Kernels::Candle),
        &ids(&fixture["prompt_ids"]),
        1,
    );
    assert!(
        top[..2].contains(&tokens[0]),
        "{} not in {:?}",
        tokens[0],
        &top[..2]
    );
}
