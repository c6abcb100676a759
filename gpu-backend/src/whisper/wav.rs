//! Uploaded audio to Whisper's input: 16 kHz mono `f32` samples in [-1, 1].
//!
//! Only WAV (RIFF/WAVE) is decoded — integer PCM of 8, 16, 24 or 32 bits and 32-bit float,
//! any channel count (averaged to mono) and any rate (resampled with a windowed-sinc
//! low-pass filter, so a 44.1 kHz upload does not alias into the speech band). Other
//! containers are recognised by their magic bytes so the client is told which format it sent
//! and that it is not supported, instead of a generic "not audio".

/// Why an upload could not be turned into samples; each is a 400 for the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AudioError {
    /// A known audio container this backend does not decode.
    #[error("Audio format '{0}' is not supported by this backend; send WAV (PCM) audio.")]
    Unsupported(&'static str),
    /// Not audio at all, or a WAV file we cannot read.
    #[error("The file is not valid WAV audio: {0}.")]
    Invalid(String),
}

/// Decoded audio, before resampling.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    /// Mono samples in [-1, 1].
    pub samples: Vec<f32>,
    /// Samples per second.
    pub rate: u32,
}

impl Pcm {
    /// Length in seconds.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.rate.max(1))
    }
}

/// Names the container of `bytes` when it is a common audio format other than WAV.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(b"ID3") || (bytes.len() > 1 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0) {
        Some("mp3")
    } else if starts(b"fLaC") {
        Some("flac")
    } else if starts(b"OggS") {
        Some("ogg")
    } else if starts(b"\x1A\x45\xDF\xA3") {
        Some("webm")
    } else if bytes.len() > 8 && &bytes[4..8] == b"ftyp" {
        Some("mp4/m4a")
    } else {
        None
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a WAV file to mono samples at its own rate.
pub fn decode(bytes: &[u8]) -> Result<Pcm, AudioError> {
    if let Some(format) = sniff(bytes) {
        return Err(AudioError::Unsupported(format));
    }
    let invalid = |why: &str| AudioError::Invalid(why.to_owned());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(invalid("it does not start with a RIFF/WAVE header"));
    }
    let mut fmt = None;
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let declared = u32_at(bytes, pos + 4) as usize;
        let body = pos + 8;
        // Streamed WAVs (e.g. written to a pipe) declare a placeholder size: read to the end.
        let len = declared.min(bytes.len() - body);
        match id {
            b"fmt " if len >= 16 => {
                let mut tag = u16_at(bytes, body);
                if tag == 0xFFFE && len >= 26 {
                    // WAVE_FORMAT_EXTENSIBLE: the real format is the sub-format GUID's first word.
                    tag = u16_at(bytes, body + 24);
                }
                let channels = u16_at(bytes, body + 2);
                let rate = u32_at(bytes, body + 4);
                let bits = u16_at(bytes, body + 14);
                fmt = Some((tag, channels, rate, bits));
            }
            b"data" => {
                let (tag, channels, rate, bits) =
                    fmt.ok_or_else(|| invalid("the data chunk comes before the fmt chunk"))?;
                if channels == 0 || rate == 0 {
                    return Err(invalid("zero channels or a zero sample rate"));
                }
                let samples = samples(&bytes[body..body + len], tag, bits)?;
                return Ok(Pcm {
                    samples: downmix(&samples, usize::from(channels)),
                    rate,
                });
            }
            _ => {}
        }
        pos = body + len + (len & 1);
    }
    Err(invalid("it has no data chunk"))
}

fn samples(data: &[u8], tag: u16, bits: u16) -> Result<Vec<f32>, AudioError> {
    Ok(match (tag, bits) {
        (1, 8) => data.iter().map(|&b| (f32::from(b) - 128.0) / 128.0).collect(),
        (1, 16) => data
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
            .collect(),
        (1, 24) => data
            .chunks_exact(3)
            .map(|c| (i32::from_le_bytes([0, c[0], c[1], c[2]]) >> 8) as f32 / 8_388_608.0)
            .collect(),
        (1, 32) => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32 / 2_147_483_648.0)
            .collect(),
        (3, 32) => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).clamp(-1.0, 1.0))
            .collect(),
        _ => {
            return Err(AudioError::Invalid(format!(
                "sample format {tag} with {bits} bits is not supported (PCM 8/16/24/32-bit or 32-bit float)"
            )))
        }
    })
}

fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels == 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect()
}

/// Resamples mono audio from `from` Hz to `to` Hz with a Hann-windowed sinc kernel whose
/// cut-off is the lower Nyquist frequency of the two rates.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    const ZERO_CROSSINGS: f64 = 16.0;
    let ratio = f64::from(to) / f64::from(from);
    let cutoff = ratio.min(1.0); // as a fraction of the input Nyquist frequency
    let half_width = ZERO_CROSSINGS / cutoff; // kernel half-width, in input samples
    let out_len = (samples.len() as f64 * ratio).round() as usize;
    let last = samples.len() as i64 - 1;
    (0..out_len)
        .map(|n| {
            let t = n as f64 / ratio; // position in input samples
            let first = (t - half_width).ceil().max(0.0) as i64;
            let end = ((t + half_width).floor() as i64).min(last);
            let mut acc = 0.0;
            for i in first..=end {
                let x = i as f64 - t;
                let arg = x * cutoff;
                let sinc = if arg.abs() < 1e-9 {
                    1.0
                } else {
                    (std::f64::consts::PI * arg).sin() / (std::f64::consts::PI * arg)
                };
                let window = 0.5 + 0.5 * (std::f64::consts::PI * x / half_width).cos();
                acc += f64::from(samples[i as usize]) * sinc * window * cutoff;
            }
            acc as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        let block = channels * bits / 8;
        out.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn decodes_16_bit_stereo_to_mono() {
        let frames: Vec<u8> = [16384i16, -16384, 32767, 32767]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let pcm = decode(&wav(2, 8000, 16, &frames)).unwrap();
        assert_eq!(pcm.rate, 8000);
        assert_eq!(pcm.samples.len(), 2);
        assert_eq!(pcm.samples[0], 0.0);
        assert!((pcm.samples[1] - 32767.0 / 32768.0).abs() < 1e-6);
    }

    #[test]
    fn reads_a_streamed_wav_whose_data_size_is_a_placeholder() {
        let mut bytes = wav(1, 16000, 16, &[0, 64, 0, 192]);
        let at = bytes.len() - 8;
        bytes[at..at + 4].copy_from_slice(&0x7FFF_F000u32.to_le_bytes());
        let pcm = decode(&bytes).unwrap();
        assert_eq!(pcm.samples, vec![0.5, -0.5]);
    }

    #[test]
    fn names_other_formats_and_rejects_non_audio() {
        assert_eq!(
            decode(b"ID3\x04\0\0\0\0\0\0"),
            Err(AudioError::Unsupported("mp3"))
        );
        assert_eq!(decode(b"fLaC\0\0"), Err(AudioError::Unsupported("flac")));
        assert!(matches!(
            decode(b"hello, this is text"),
            Err(AudioError::Invalid(_))
        ));
        assert!(matches!(
            decode(&wav(1, 16000, 12, &[0, 0])),
            Err(AudioError::Invalid(_))
        ));
    }

    #[test]
    fn resampling_keeps_a_tone_in_band_and_the_length_in_proportion() {
        let rate = 22050;
        let tone: Vec<f32> = (0..rate)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin())
            .collect();
        let out = resample(&tone, rate as u32, 16000);
        assert_eq!(out.len(), 16000);
        // Away from the edges the 440 Hz tone comes through at (nearly) full amplitude.
        let peak = out[1000..15000].iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak - 1.0).abs() < 0.02, "peak {peak}");
        let expected = (2.0 * std::f32::consts::PI * 440.0 * 8000.0 / 16000.0).sin();
        assert!((out[8000] - expected).abs() < 0.02);
    }

    #[test]
    fn resampling_removes_content_above_the_new_nyquist() {
        let rate = 44100;
        let tone: Vec<f32> = (0..rate)
            .map(|i| (2.0 * std::f32::consts::PI * 12000.0 * i as f32 / rate as f32).sin())
            .collect();
        let out = resample(&tone, rate as u32, 16000);
        let peak = out[1000..15000].iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak < 0.05, "a 12 kHz tone leaked through at {peak}");
    }
}
