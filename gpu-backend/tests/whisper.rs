//! Whisper tiny.en, converted from CTranslate2 by `scripts/fetch-models.sh`, transcribes a
//! sentence spoken by espeak-ng (installed by `scripts/install-espeak.sh`). Fails (never
//! skips) when the weights or espeak-ng are missing.

mod common;

use candle_core::Device;
use gpu_backend::catalog::{self, ModelKind};
use gpu_backend::whisper::{wav, TranscribeOptions, Transcriber, SAMPLE_RATE};

const WHISPER_MODEL: &str = "whisper-tiny-en";

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn transcribes_a_sentence_spoken_by_espeak() {
    let dir = common::real_models_dir();
    let spec = catalog::discover(&dir)
        .expect("list models")
        .into_iter()
        .find(|s| s.id == WHISPER_MODEL)
        .unwrap_or_else(|| {
            panic!(
                "{WHISPER_MODEL} not in {}: run scripts/fetch-models.sh",
                dir.display()
            )
        });
    assert_eq!(spec.kind, ModelKind::Transcription);
    let transcriber = Transcriber::load(&spec.path, &Device::Cpu).expect("load whisper");

    let pcm = wav::decode(&common::speak(
        "The quick brown fox jumps over the lazy dog.",
    ))
    .expect("decode");
    assert_eq!(pcm.rate, 22050, "espeak-ng speaks at 22.05 kHz");
    let samples = wav::resample(&pcm.samples, pcm.rate, SAMPLE_RATE);
    let transcript = transcriber
        .transcribe(&samples, &TranscribeOptions::default())
        .expect("transcribe");

    let heard = words(&transcript.text);
    // tiny.en hears espeak's "jumps" as "dump"; every other word comes through.
    for word in ["quick", "brown", "fox", "over", "lazy", "dog"] {
        assert!(
            heard.iter().any(|w| w == word),
            "{word:?} not in {:?}",
            transcript.text
        );
    }
    assert_eq!(transcript.segments.len(), 1);
    assert!((transcript.duration - pcm.seconds()).abs() < 0.01);
}
