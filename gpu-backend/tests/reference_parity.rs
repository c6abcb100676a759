//! Our BERT, Whisper (model and log-mel) and the candle-path llama (RMS norm, grouped-query
//! attention) reproduce what candle-transformers computed on the real weights, recorded in
//! `fixtures/candle_transformers_reference.json` just before that crate was dropped (#11):
//! embeddings within 1e-4, the log-mel within 1e-4, identical Whisper tokens and identical
//! greedy SmolLM2 tokens. Fails (never skips) when the weights or espeak-ng are missing.

mod common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::EMBED_MODEL;
use gpu_backend::embedder::Embedder;
use gpu_backend::llama::Kernels;
use gpu_backend::whisper::{mel, wav, TranscribeOptions, Transcriber, SAMPLE_RATE};
use serde_json::Value;

fn reference() -> Value {
    serde_json::from_str(include_str!("fixtures/candle_transformers_reference.json")).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn minilm_embeddings_match_the_recorded_ones() {
    let r = reference();
    let dir = common::real_models_dir();
    let embedder = Embedder::load(&dir.join(EMBED_MODEL), &Device::Cpu).unwrap();
    let inputs: Vec<String> = serde_json::from_value(r["embed_inputs"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(r["embeddings"].clone()).unwrap();
    let got = embedder.embed(&inputs).unwrap();
    assert_eq!(
        got.prompt_tokens,
        r["embed_prompt_tokens"].as_u64().unwrap() as usize
    );
    assert_eq!(got.vectors.len(), want.len());
    for (i, (g, w)) in got.vectors.iter().zip(&want).enumerate() {
        let diff = max_abs_diff(g, w);
        eprintln!("embedding {i}: max |diff| {diff:e}");
        assert!(diff < 1e-4, "input {i}: max |diff| {diff}");
    }
}

/// The spoken fixture: espeak-ng's rendering of the sentence, 16 kHz mono.
fn fox_samples() -> Vec<f32> {
    let pcm = wav::decode(&common::speak(
        "The quick brown fox jumps over the lazy dog.",
    ))
    .unwrap();
    wav::resample(&pcm.samples, pcm.rate, SAMPLE_RATE)
}

#[test]
fn whisper_log_mel_and_transcript_match_the_recorded_ones() {
    let r = reference();
    let dir = common::real_models_dir().join("whisper-tiny-en");
    let samples = fox_samples();

    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let n_mels = config["num_mel_bins"].as_u64().unwrap() as usize;
    let vb = VarBuilder::from_buffered_safetensors(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let filters = vb
        .get((n_mels, mel::N_FREQS), "mel_filters")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let got = mel::log_mel(&samples, &filters, n_mels);
    let stride = r["mel_stride"].as_u64().unwrap() as usize;
    let want: Vec<f32> = serde_json::from_value(r["mel_strided"].clone()).unwrap();
    let picked: Vec<f32> = got.iter().step_by(stride).copied().collect();
    let diff = max_abs_diff(&picked, &want);
    eprintln!("log-mel: max |diff| {diff:e} over {} values", picked.len());
    assert!(diff < 1e-4, "log-mel max |diff| {diff}");
    let mean = got.iter().map(|&v| f64::from(v)).sum::<f64>() / got.len() as f64;
    assert!(
        (mean - r["mel_mean"].as_f64().unwrap()).abs() < 1e-5,
        "mean {mean}"
    );

    let transcriber = Transcriber::load(&dir, &Device::Cpu).unwrap();
    let plain = transcriber
        .transcribe(&samples, &TranscribeOptions::default())
        .unwrap();
    assert_eq!(plain.text, r["whisper_text"].as_str().unwrap());
    let tokens: Vec<u32> = serde_json::from_value(r["whisper_tokens"].clone()).unwrap();
    assert_eq!(plain.segments[0].tokens, tokens);
    let logprob = r["whisper_avg_logprob"].as_f64().unwrap();
    assert!((plain.segments[0].avg_logprob - logprob).abs() < 1e-3);
    let prompted = transcriber
        .transcribe(
            &samples,
            &TranscribeOptions {
                prompt: Some("Foxes and dogs.".into()),
                temperature: 0.0,
            },
        )
        .unwrap();
    assert_eq!(prompted.text, r["whisper_text_prompted"].as_str().unwrap());
}

#[test]
fn candle_path_greedy_tokens_match_the_recorded_ones() {
    let r = reference();
    let model = common::load_smollm2(Kernels::Candle);
    let prompts: Vec<Vec<u32>> = serde_json::from_value(r["greedy_prompts"].clone()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(r["greedy_candle"].clone()).unwrap();
    assert_eq!(prompts.len(), want.len());
    for (prompt, want) in prompts.iter().zip(&want) {
        let (got, _) = common::greedy(&model, prompt, want.len());
        assert_eq!(&got, want, "prompt {prompt:?}");
    }
}
