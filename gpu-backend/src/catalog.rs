//! Which models live in the models directory, and what kind each one is.
//!
//! `scripts/fetch-models.sh` unpacks one directory per model id. A directory holding a
//! `.gguf` file is a chat model; one holding `config.json`, `model.safetensors` and
//! `tokenizer.json` is a Whisper speech model when its config says `"model_type": "whisper"`
//! (as `scripts/convert-whisper-ct2.py` writes it) and a sentence-embedding model otherwise. The directory name is the model id
//! clients put in the `model` field.

use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// What a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// `/v1/chat/completions`, from a GGUF llama model.
    Chat,
    /// `/v1/embeddings`, from a BERT sentence-transformer.
    Embedding,
    /// `/v1/audio/transcriptions`, from Whisper.
    Transcription,
}

impl ModelKind {
    /// The name `/v1/models` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
            ModelKind::Transcription => "transcription",
        }
    }
}

/// A model found on disk, not necessarily loaded.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The directory name, which clients put in `model`.
    pub id: String,
    /// Which endpoint it serves.
    pub kind: ModelKind,
    /// The GGUF file (chat) or the model directory (embedding, transcription).
    pub path: PathBuf,
    /// Bytes on disk, our estimate of its memory footprint for the eviction budget.
    pub size_bytes: u64,
}

/// Lists the models under `dir`, sorted by id.
pub fn discover(dir: &Path) -> Result<Vec<ModelSpec>, ModelError> {
    let mut specs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(ModelError::io(dir))? {
        let entry = entry.map_err(ModelError::io(dir))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let Some(id) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if let Some(spec) = inspect(&id, &path)? {
            specs.push(spec);
        }
    }
    specs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(specs)
}

fn inspect(id: &str, dir: &Path) -> Result<Option<ModelSpec>, ModelError> {
    let mut gguf = None;
    for entry in std::fs::read_dir(dir).map_err(ModelError::io(dir))? {
        let path = entry.map_err(ModelError::io(dir))?.path();
        if path.extension().is_some_and(|e| e == "gguf") {
            gguf = Some(path);
        }
    }
    if let Some(path) = gguf {
        let size_bytes = std::fs::metadata(&path)
            .map_err(ModelError::io(&path))?
            .len();
        return Ok(Some(ModelSpec {
            id: id.to_owned(),
            kind: ModelKind::Chat,
            path,
            size_bytes,
        }));
    }
    let weights = dir.join("model.safetensors");
    if weights.is_file()
        && dir.join("config.json").is_file()
        && dir.join("tokenizer.json").is_file()
    {
        let size_bytes = std::fs::metadata(&weights)
            .map_err(ModelError::io(&weights))?
            .len();
        let config = dir.join("config.json");
        let config = std::fs::read(&config).map_err(ModelError::io(&config))?;
        let whisper = serde_json::from_slice::<serde_json::Value>(&config)
            .is_ok_and(|c| c.get("model_type").and_then(|t| t.as_str()) == Some("whisper"));
        return Ok(Some(ModelSpec {
            id: id.to_owned(),
            kind: if whisper {
                ModelKind::Transcription
            } else {
                ModelKind::Embedding
            },
            path: dir.to_owned(),
            size_bytes,
        }));
    }
    Ok(None)
}
