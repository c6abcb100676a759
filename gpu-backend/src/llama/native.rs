//! The forward pass on the CPU with [`crate::kernels`]: weights stay in their GGUF blocks,
//! activations live in flat `f32` buffers allocated once per step, and every matmul of a
//! step covers all its sequences (q/k/v as one stacked matrix, gate/up as another, so a
//! layer costs four matmuls). Attention runs per sequence and head, in parallel, against
//! caches that grow in place.

use std::io::{Read, Seek, SeekFrom};
use std::sync::OnceLock;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Shape;
use rayon::prelude::*;

use super::{CacheLayers, LlamaConfig, StepInput};
use crate::error::ModelError;
use crate::kernels::{self, Activations, QMatrix, WeightFormat};

/// Keys and values of one layer for one sequence, position after position
/// (`n_kv_head × head_dim` values each); appending a token is a copy onto the end.
#[derive(Debug, Default)]
pub(super) struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl LayerKv {
    /// A copy of the first `values` keys and values (positions times their width).
    pub(super) fn prefix(&self, values: usize) -> Self {
        Self {
            k: self.k[..values.min(self.k.len())].to_vec(),
            v: self.v[..values.min(self.v.len())].to_vec(),
        }
    }

    pub(super) fn shrink_to_fit(&mut self) {
        self.k.shrink_to_fit();
        self.v.shrink_to_fit();
    }
}

struct Layer {
    /// `wq`, `wk` and `wv` stacked: one matmul gives a row `[q | k | v]` per token.
    qkv: QMatrix,
    wo: QMatrix,
    /// `w_gate` and `w_up` stacked: `[gate | up]` per token.
    gate_up: QMatrix,
    down: QMatrix,
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
}

/// Weights for the native kernels.
pub(super) struct NativeLlama {
    embed: QMatrix,
    /// `None` when the output projection is tied to the embedding table.
    output: Option<QMatrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn format_of(dtype: GgmlDType) -> Option<WeightFormat> {
    match dtype {
        GgmlDType::Q4_1 => Some(WeightFormat::Q4_1),
        GgmlDType::Q8_0 => Some(WeightFormat::Q8_0),
        _ => None,
    }
}

/// Whether every matrix of the file is in a format the native kernels read.
pub(super) fn supports(ct: &gguf_file::Content) -> bool {
    ct.tensor_infos.iter().all(|(name, info)| {
        info.shape.rank() < 2
            || name.ends_with("norm.weight")
            || format_of(info.ggml_dtype).is_some()
    })
}

/// The threads every native forward pass runs on. The caller of a step waits inside the
/// pool, so the matmuls of a step are handed between pool threads without waking a
/// sleeping one from outside.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("gpu-backend-kernels-{i}"))
            .build()
            .expect("cannot start the kernel threads")
    })
}

fn read_bytes<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<(GgmlDType, Shape, Vec<u8>), ModelError> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| ModelError::Format(format!("GGUF has no tensor `{name}`")))?;
    let dtype = info.ggml_dtype;
    let size = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
    let mut data = vec![0u8; size];
    let io = |e: std::io::Error| ModelError::Format(format!("reading `{name}`: {e}"));
    reader
        .seek(SeekFrom::Start(ct.tensor_data_offset + info.offset))
        .map_err(io)?;
    reader.read_exact(&mut data).map_err(io)?;
    Ok((dtype, info.shape.clone(), data))
}

fn matrix<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<QMatrix, ModelError> {
    let (dtype, shape, data) = read_bytes(ct, reader, name)?;
    let format = format_of(dtype).ok_or_else(|| {
        ModelError::Format(format!(
            "`{name}` is {dtype:?}; the native kernels read Q4_1 and Q8_0"
        ))
    })?;
    let (rows, cols) = shape.dims2()?;
    QMatrix::new(format, rows, cols, data).map_err(|e| ModelError::Format(format!("`{name}`: {e}")))
}

fn vector<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<Vec<f32>, ModelError> {
    let (dtype, _, data) = read_bytes(ct, reader, name)?;
    if dtype != GgmlDType::F32 {
        return Err(ModelError::Format(format!("`{name}` is not f32")));
    }
    Ok(data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl NativeLlama {
    pub(super) fn load<R: Read + Seek>(
        config: &LlamaConfig,
        ct: &gguf_file::Content,
        reader: &mut R,
    ) -> Result<Self, ModelError> {
        let stack = |parts: Vec<QMatrix>| {
            QMatrix::concat_rows(&parts).map_err(|e| ModelError::Format(e.to_string()))
        };
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut m = |s: &str| matrix(ct, reader, &format!("blk.{i}.{s}.weight"));
            let qkv = stack(vec![m("attn_q")?, m("attn_k")?, m("attn_v")?])?;
            let wo = m("attn_output")?;
            let gate_up = stack(vec![m("ffn_gate")?, m("ffn_up")?])?;
            let down = m("ffn_down")?;
            layers.push(Layer {
                qkv,
                wo,
                gate_up,
                down,
                attn_norm: vector(ct, reader, &format!("blk.{i}.attn_norm.weight"))?,
                ffn_norm: vector(ct, reader, &format!("blk.{i}.ffn_norm.weight"))?,
            });
        }
        let angles = config.rope_angles();
        Ok(Self {
            embed: matrix(ct, reader, "token_embd.weight")?,
            output: match ct.tensor_infos.contains_key("output.weight") {
                true => Some(matrix(ct, reader, "output.weight")?),
                false => None,
            },
            norm: vector(ct, reader, "output_norm.weight")?,
            layers,
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
        })
    }

    /// One step over all `inputs`; returns `batch × vocab` logits, row-major. The caller
    /// advances the caches' lengths.
    pub(super) fn forward(
        &self,
        c: &LlamaConfig,
        inputs: &mut [StepInput<'_>],
    ) -> Result<Vec<f32>, ModelError> {
        pool().install(|| self.step(c, inputs))
    }

    fn step(&self, c: &LlamaConfig, inputs: &mut [StepInput<'_>]) -> Result<Vec<f32>, ModelError> {
        let (hd, h) = (c.head_dim, c.hidden);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let ff = self.layers.first().map_or(0, |l| l.down.cols());
        // Every row of the step: which sequence it belongs to and its position there.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (s, input) in inputs.iter().enumerate() {
            if !matches!(input.cache.layers, CacheLayers::Native(_)) {
                return Err(ModelError::Format(
                    "a KV cache made for other kernels".into(),
                ));
            }
            let start = input.cache.len;
            rows.extend((0..input.tokens.len()).map(|i| (s, start + i)));
        }
        let t = rows.len();
        let mut x = vec![0f32; t * h];
        for (row, &tok) in x
            .chunks_exact_mut(h)
            .zip(inputs.iter().flat_map(|s| s.tokens.iter()))
        {
            if tok as usize >= self.embed.rows() {
                return Err(ModelError::Format(format!(
                    "token {tok} is not in the vocabulary"
                )));
            }
            self.embed.dequantize_row(tok as usize, row);
        }
        // Activations for each matmul's input, kept for the whole step; each is computed and
        // rounded in one pass (`Activations::fill`), the residual add of the previous block
        // folded into the norm that follows it.
        let mut normed = Activations::zeroed(t, h);
        let mut attn_act = Activations::zeroed(t, q_dim);
        let mut act = Activations::zeroed(t, ff);
        let mut qkv = vec![0f32; t * qkv_dim];
        let mut attn = vec![0f32; t * q_dim];
        let mut proj = vec![0f32; t * h];
        let mut gate_up = vec![0f32; t * 2 * ff];
        let eps = c.rms_eps as f32;
        // Whether `proj` holds the previous layer's feed-forward output, not yet added to `x`.
        let mut pending = false;

        for (li, layer) in self.layers.iter().enumerate() {
            add_then_norm(&mut normed, &mut x, &proj, pending, &layer.attn_norm, eps);
            kernels::matmul_prepared(&layer.qkv, &normed, &mut qkv);
            for (row, &(s, pos)) in qkv.chunks_exact_mut(qkv_dim).zip(&rows) {
                let (q, kv) = row.split_at_mut(q_dim);
                self.rope(q, pos, hd);
                let (k, v) = kv.split_at_mut(kv_dim);
                self.rope(k, pos, hd);
                let CacheLayers::Native(cache) = &mut inputs[s].cache.layers else {
                    unreachable!("checked above");
                };
                cache[li].k.extend_from_slice(k);
                cache[li].v.extend_from_slice(v);
            }
            let caches: Vec<&LayerKv> = inputs
                .iter()
                .map(|s| match &s.cache.layers {
                    CacheLayers::Native(l) => &l[li],
                    CacheLayers::Candle(_) => unreachable!("checked above"),
                })
                .collect();
            // One task per (row, head): a single decoding sequence still has a head for
            // every thread.
            attn.par_chunks_mut(hd)
                .enumerate()
                .for_each_init(Vec::new, |scores, (i, out)| {
                    let (row, head) = (i / c.n_head, i % c.n_head);
                    let (s, pos) = rows[row];
                    let q = &qkv[row * qkv_dim + head * hd..][..hd];
                    attend(c, q, head, caches[s], pos, scores, out)
                });
            attn_act.fill(attn.chunks(q_dim), |row, out| out.copy_from_slice(row));
            kernels::matmul_prepared(&layer.wo, &attn_act, &mut proj);

            add_then_norm(&mut normed, &mut x, &proj, true, &layer.ffn_norm, eps);
            kernels::matmul_prepared(&layer.gate_up, &normed, &mut gate_up);
            act.fill(gate_up.chunks(2 * ff), |gu, a| {
                let (g, u) = gu.split_at(ff);
                for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                    *a = kernels::silu(g) * u;
                }
            });
            kernels::matmul_prepared(&layer.down, &act, &mut proj);
            pending = true;
        }
        if pending {
            for_rows(&mut x, h, &proj, h, add);
        }

        // Only each sequence's last position needs logits.
        let mut last = Vec::with_capacity(inputs.len() * h);
        let mut end = 0;
        for s in inputs.iter() {
            end += s.tokens.len();
            last.extend_from_slice(&x[(end - 1) * h..end * h]);
        }
        let mut normed = vec![0f32; last.len()];
        kernels::rms_norm(&last, &self.norm, eps, &mut normed);
        let output = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; inputs.len() * output.rows()];
        kernels::matmul(output, &normed, &mut logits);
        Ok(logits)
    }

    /// Rotary position embedding, interleaved pairs (GGUF's llama layout), in place on
    /// every head of `x`.
    fn rope(&self, x: &mut [f32], pos: usize, hd: usize) {
        let half = hd / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(hd) {
            for (pair, (&c, &s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * c - x1 * s;
                pair[1] = x0 * s + x1 * c;
            }
        }
    }
}

/// Runs `f(out_row, in_row)` over the rows of a step (`out` and `input` hold one row each
/// per row of the step, `out_width` and `in_width` wide), on every pool thread for a batch:
/// done on one, the others would wait for it before the next matmul.
fn for_rows(
    out: &mut [f32],
    out_width: usize,
    input: &[f32],
    in_width: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync,
) {
    if out.len() / out_width.max(1) >= kernels::PARALLEL_ROWS {
        out.par_chunks_mut(out_width)
            .zip(input.par_chunks(in_width))
            .for_each(|(o, i)| f(o, i));
    } else {
        out.chunks_mut(out_width)
            .zip(input.chunks(in_width))
            .for_each(|(o, i)| f(o, i));
    }
}

/// Into `normed`, the RMS norm (times `weight`) of each row of `x`, after adding the row of
/// `proj` to it when `residual` is set: the residual add that ends a block, and the norm
/// that starts the next, in one pass over the rows.
fn add_then_norm(
    normed: &mut Activations,
    x: &mut [f32],
    proj: &[f32],
    residual: bool,
    weight: &[f32],
    eps: f32,
) {
    let h = weight.len();
    normed.fill(x.chunks_mut(h).zip(proj.chunks(h)), |(x, proj), out| {
        if residual {
            add(x, proj);
        }
        kernels::rms_norm(x, weight, eps, out)
    });
}

/// `x += y`, the residual add of one row.
fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Causal attention of one query head of the token at `pos` (its keys and values already
/// in `cache`) over positions `0..=pos`, against its group's key/value head.
fn attend(
    c: &LlamaConfig,
    qh: &[f32],
    head: usize,
    cache: &LayerKv,
    pos: usize,
    scores: &mut Vec<f32>,
    oh: &mut [f32],
) {
    let hd = c.head_dim;
    let kv_dim = c.n_kv_head * hd;
    let groups = c.n_head / c.n_kv_head;
    let scale = (hd as f32).sqrt();
    oh.fill(0.0);
    let off = head / groups * hd;
    scores.clear();
    scores.extend(
        (0..=pos).map(|j| kernels::dot_f32(qh, &cache.k[j * kv_dim + off..][..hd]) / scale),
    );
    kernels::softmax(scores);
    for (j, &p) in scores.iter().enumerate() {
        kernels::axpy(p, &cache.v[j * kv_dim + off..][..hd], oh);
    }
}
