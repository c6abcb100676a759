//! Speech to text with Whisper (tiny.en), for `/v1/audio/transcriptions`.
//!
//! The weights are Whisper's under Hugging Face names, converted at fetch time from
//! CTranslate2's format by `scripts/convert-whisper-ct2.py`, which also stores the mel filter
//! bank (`mel_filters`) in the same safetensors file and writes `config.json`. The network
//! ([`model`]) and the features ([`mel`]) are our own code on candle's ops.
//!
//! A request's audio ([`wav`] decodes and resamples it to 16 kHz mono) is cut into Whisper's
//! 30-second windows; each window gets a log-mel spectrogram, one encoder pass and a decoding
//! loop without timestamps (greedy at temperature 0, sampled otherwise), conditioned on the
//! caller's prompt and the text of the previous window, as Whisper does. The number of
//! windows is bounded by the API layer (`max_audio_seconds`), and the decoding loop by half
//! the text context, so the work per request is bounded.

pub mod api;
pub mod mel;
pub mod model;
pub mod wav;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use rand::Rng;
use serde::Deserialize;
use tokenizers::Tokenizer;

use self::mel::{CHUNK_LENGTH, N_FRAMES, N_FREQS, N_SAMPLES};
use self::model::{Config, Whisper};
use crate::error::ModelError;

/// Tokens whose probability at the start of transcript is Whisper's "no speech" signal
/// (the name differs between tokenizer versions).
const NO_SPEECH_TOKENS: [&str; 2] = ["<|nocaptions|>", "<|nospeech|>"];

/// What `config.json` adds to the model's [`Config`] (written by the converter).
#[derive(Debug, Deserialize)]
struct Extra {
    #[serde(default)]
    begin_suppress_tokens: Vec<u32>,
    special_tokens: SpecialTokens,
}

#[derive(Debug, Deserialize)]
struct SpecialTokens {
    #[serde(rename = "<|endoftext|>")]
    eot: u32,
    #[serde(rename = "<|startoftranscript|>")]
    sot: u32,
    #[serde(rename = "<|notimestamps|>")]
    no_timestamps: u32,
    #[serde(rename = "<|startofprev|>")]
    start_of_prev: u32,
}

/// How a request wants its audio decoded.
#[derive(Debug, Clone, Default)]
pub struct TranscribeOptions {
    /// Text that conditions the first window (names, spelling, style), as OpenAI's `prompt`.
    pub prompt: Option<String>,
    /// 0 = greedy; above 0 samples from the softmax at that temperature.
    pub temperature: f64,
}

/// One 30-second window's text.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Seconds from the start of the audio.
    pub start: f64,
    /// End of the window (or of the audio), in seconds.
    pub end: f64,
    /// The decoded text.
    pub text: String,
    /// Its token ids.
    pub tokens: Vec<u32>,
    /// Mean log-probability of the decoded tokens.
    pub avg_logprob: f64,
    /// Probability the model gave to "no speech" in this window.
    pub no_speech_prob: f64,
}

/// A whole transcription.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// Every window's text, joined.
    pub text: String,
    /// One per 30-second window.
    pub segments: Vec<Segment>,
    /// Audio length in seconds.
    pub duration: f64,
}

/// A loaded Whisper model; shared read-only between requests (the per-window state lives in
/// each call).
pub struct Transcriber {
    model: Whisper,
    tokenizer: Tokenizer,
    mel_filters: Vec<f32>,
    /// -inf for tokens never emitted (Whisper's suppress list, specials, timestamps).
    suppress: Tensor,
    /// Also -inf on the first token: a leading space or an immediate end of text.
    suppress_begin: Tensor,
    special: SpecialTokens,
    no_speech: Option<u32>,
    device: Device,
}

/// Whisper's input sample rate.
pub const SAMPLE_RATE: u32 = mel::SAMPLE_RATE as u32;

impl Transcriber {
    /// Loads `config.json`, `model.safetensors` (weights + `mel_filters`) and `tokenizer.json`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let read = |name: &str| ModelError::read_model_file(dir, name);
        let config_bytes = read("config.json")?;
        let config: Config = serde_json::from_slice(&config_bytes)
            .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
        let extra: Extra = serde_json::from_slice(&config_bytes)
            .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, device)?;
        let mel_filters = vb
            .get((config.num_mel_bins, N_FREQS), "mel_filters")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)?;
        let no_speech = NO_SPEECH_TOKENS
            .iter()
            .find_map(|t| tokenizer.token_to_id(t));
        let vocab = config.vocab_size as u32;
        let special = extra.special_tokens;
        let mask = |extra_ids: &[u32]| {
            let v: Vec<f32> = (0..vocab)
                .map(|id| {
                    let never = config.suppress_tokens.contains(&id)
                        || (id >= special.sot)
                        || extra_ids.contains(&id);
                    if never {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::from_vec(v, vocab as usize, device)
        };
        let suppress = mask(&[])?;
        let suppress_begin = mask(&extra.begin_suppress_tokens)?;
        let model = Whisper::load(&vb, config)?;
        Ok(Self {
            model,
            tokenizer,
            mel_filters,
            suppress,
            suppress_begin,
            special,
            no_speech,
            device: device.clone(),
        })
    }

    /// Transcribes 16 kHz mono samples.
    pub fn transcribe(
        &self,
        samples: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcript, ModelError> {
        let duration = samples.len() as f64 / f64::from(SAMPLE_RATE);
        let mut context: Vec<u32> = match &options.prompt {
            Some(p) if !p.trim().is_empty() => self
                .tokenizer
                .encode(format!(" {}", p.trim()), false)?
                .get_ids()
                .to_vec(),
            _ => Vec::new(),
        };
        let mut segments = Vec::new();
        for (index, window) in samples.chunks(N_SAMPLES).enumerate() {
            let start = (index * CHUNK_LENGTH) as f64;
            let segment = self.window(window, &context, options.temperature)?;
            context.extend_from_slice(&segment.0);
            let text = self.tokenizer.decode(&segment.0, true)?;
            segments.push(Segment {
                start,
                end: (start + CHUNK_LENGTH as f64).min(duration),
                text,
                tokens: segment.0,
                avg_logprob: segment.1,
                no_speech_prob: segment.2,
            });
        }
        let text = segments
            .iter()
            .map(|s| s.text.trim())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Transcript {
            text,
            segments,
            duration,
        })
    }

    /// Decodes one window: its tokens, their mean log-probability, and P(no speech).
    fn window(
        &self,
        samples: &[f32],
        context: &[u32],
        temperature: f64,
    ) -> Result<(Vec<u32>, f64, f64), ModelError> {
        let cfg = &self.model.config;
        let mel = mel::log_mel(samples, &self.mel_filters, cfg.num_mel_bins);
        let mel = Tensor::from_vec(mel, (1, cfg.num_mel_bins, N_FRAMES), &self.device)?;
        let max_new = cfg.max_target_positions / 2;
        let audio = self.model.encode(&mel)?;

        let mut tokens = Vec::with_capacity(cfg.max_target_positions);
        if !context.is_empty() {
            tokens.push(self.special.start_of_prev);
            let keep = context.len().min(max_new - 1);
            tokens.extend_from_slice(&context[context.len() - keep..]);
        }
        let sot_index = tokens.len();
        tokens.push(self.special.sot);
        tokens.push(self.special.no_timestamps);
        let prefix = tokens.len();
        let mut logprob_sum = 0.0;
        let mut no_speech_prob = 0.0;
        let mut rng = rand::rng();
        for step in 0..max_new {
            let input = Tensor::new(tokens.as_slice(), &self.device)?.unsqueeze(0)?;
            let hidden = self.model.decode(&input, &audio)?;
            if step == 0 {
                if let Some(id) = self.no_speech {
                    let at_sot = self
                        .model
                        .logits(&hidden.i((.., sot_index..sot_index + 1))?)?;
                    let probs = candle_nn::ops::softmax(&at_sot.i((0, 0))?, D::Minus1)?;
                    no_speech_prob = f64::from(probs.i(id as usize)?.to_scalar::<f32>()?);
                }
            }
            let last = hidden.i((.., tokens.len() - 1..))?;
            let logits = self.model.logits(&last)?.i((0, 0))?;
            let mask = if step == 0 {
                &self.suppress_begin
            } else {
                &self.suppress
            };
            let logits = logits.broadcast_add(mask)?;
            let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let next = if temperature > 0.0 {
                let probs = candle_nn::ops::softmax(&(&logits / temperature)?, D::Minus1)?
                    .to_vec1::<f32>()?;
                let mut left = rng.random::<f32>();
                let mut pick = self.special.eot;
                for (id, p) in probs.iter().enumerate() {
                    left -= p;
                    if left <= 0.0 {
                        pick = id as u32;
                        break;
                    }
                }
                pick
            } else {
                logits.argmax(D::Minus1)?.to_scalar::<u32>()?
            };
            logprob_sum += f64::from(log_probs.i(next as usize)?.to_scalar::<f32>()?);
            if next == self.special.eot {
                break;
            }
            tokens.push(next);
        }
        let text_tokens = tokens[prefix..].to_vec();
        let avg = logprob_sum / (text_tokens.len() + 1) as f64;
        Ok((text_tokens, avg, no_speech_prob))
    }
}
