#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model to the files candle's Whisper loads.

    convert-whisper-ct2.py CT2_DIR OUT_DIR

CT2_DIR holds what CTranslate2's converter wrote (model.bin, config.json, tokenizer.json);
OUT_DIR gets, for gpu-backend (`gpu-backend/src/whisper/`):

- model.safetensors: the weights under the Hugging Face names candle-transformers'
  `models::whisper::model` reads (`model.encoder.*`, `model.decoder.*`), in the model's own
  dtype, plus `mel_filters` (n_mels x 201, F32): the Slaney-style mel filter bank of
  librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels), which Whisper's log-mel front end
  uses and CTranslate2 does not ship;
- config.json: candle's `whisper::Config`, derived from the tensor shapes, plus
  `"model_type": "whisper"` (what gpu-backend's catalog recognises) and the special token ids;
- tokenizer.json: copied unchanged.

Only the standard library is used (no numpy, no torch), so `scripts/fetch-models.sh` can run
it anywhere Python runs. The conversion is exact: tensors are sliced byte for byte, never
re-encoded.

CTranslate2's model.bin (binary version 6, as written by ctranslate2 >= 3):
  u32 version; str spec_name; u32 spec_revision; u32 n_vars;
  n_vars x (str name; u8 rank; u32 dims[rank]; u8 dtype; u32 n_bytes; bytes data);
  u32 n_aliases; n_aliases x (str alias; str target)
where str is a u16 length followed by that many bytes (NUL-terminated) and every integer is
little-endian. CTranslate2 fuses attention projections: self-attention `linear_0` is
[q; k; v] (k has no bias in Whisper; CTranslate2 stores zeros), cross-attention `linear_0` is
q and `linear_1` is [k; v]; the output projection is the last linear.
"""

import json
import math
import shutil
import struct
import sys
from pathlib import Path

# CTranslate2's DataType enum, for the types a Whisper model can hold after conversion.
CT2_DTYPES = {0: ("F32", 4), 1: ("I8", 1), 2: ("I16", 2), 3: ("I32", 4), 4: ("F16", 2), 5: ("BF16", 2)}

SAMPLE_RATE = 16000
N_FFT = 400


class Ct2Error(Exception):
    """The input is not a CTranslate2 Whisper model this converter understands."""


def read_ct2(path):
    """Returns {name: (dtype, shape, bytes)} with aliases resolved, and the spec name."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string():
        nonlocal pos
        n = take("H")
        raw = data[pos : pos + n]
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    version = take("I")
    if version != 6:
        raise Ct2Error(f"model.bin binary version {version}; this converter reads version 6")
    spec = string()
    take("I")  # spec revision
    variables = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        shape = [take("I") for _ in range(rank)]
        type_id = take("B")
        n_bytes = take("I")
        if type_id not in CT2_DTYPES:
            raise Ct2Error(f"{name}: unknown CTranslate2 dtype {type_id}")
        dtype, size = CT2_DTYPES[type_id]
        if n_bytes != size * math.prod(shape):
            raise Ct2Error(f"{name}: {n_bytes} bytes do not match shape {shape} of {dtype}")
        variables[name] = (dtype, shape, data[pos : pos + n_bytes])
        pos += n_bytes
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if pos != len(data):
        raise Ct2Error(f"{len(data) - pos} trailing bytes after the model")
    return spec, variables


def scalar(variables, name):
    dtype, shape, raw = variables[name]
    if shape:
        raise Ct2Error(f"{name} is not a scalar")
    return struct.unpack("<" + {"I8": "b", "I16": "h", "I32": "i"}[dtype], raw)[0]


def split_rows(tensor, parts):
    """Splits a [rows, ...] tensor into `parts` equal blocks of rows, as bytes."""
    dtype, shape, raw = tensor
    if shape[0] % parts:
        raise Ct2Error(f"cannot split {shape} into {parts}")
    rows = shape[0] // parts
    step = len(raw) // parts
    return [(dtype, [rows] + shape[1:], raw[i * step : (i + 1) * step]) for i in range(parts)]


def all_zero(tensor):
    return not any(tensor[2])


def convert(variables):
    """Maps CTranslate2's names to the Hugging Face names candle reads."""
    out = {}

    def linear(ct2, hf, bias=True):
        out[hf + ".weight"] = variables[ct2 + "/weight"]
        if bias:
            out[hf + ".bias"] = variables[ct2 + "/bias"]

    def fused(ct2, hfs):
        """A fused projection: one row block per name; Whisper's k_proj has no bias."""
        weights = split_rows(variables[ct2 + "/weight"], len(hfs))
        biases = split_rows(variables[ct2 + "/bias"], len(hfs))
        for hf, w, b in zip(hfs, weights, biases):
            out[hf + ".weight"] = w
            if hf.endswith("k_proj"):
                if not all_zero(b):
                    raise Ct2Error(f"{ct2}: the key projection has a non-zero bias")
            else:
                out[hf + ".bias"] = b

    def norm(ct2, hf):
        out[hf + ".weight"] = variables[ct2 + "/gamma"]
        out[hf + ".bias"] = variables[ct2 + "/beta"]

    def layers(prefix):
        n = 0
        while f"{prefix}/layer_{n}/ffn/linear_0/weight" in variables:
            n += 1
        return n

    enc_layers, dec_layers = layers("encoder"), layers("decoder")
    for side in ("encoder", "decoder"):
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
    for c in ("conv1", "conv2"):
        linear(f"encoder/{c}", f"model.encoder.{c}")
    out["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    out["model.decoder.embed_positions.weight"] = variables["decoder/position_encodings/encodings"]
    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            fused(f"{ct2}/self_attention/linear_0", [f"{hf}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            if side == "decoder":
                norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
                linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                fused(f"{ct2}/attention/linear_1", [f"{hf}.encoder_attn.{p}_proj" for p in "kv"])
                linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
            norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
            linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
    return out, enc_layers, dec_layers


def f16_values(raw):
    return struct.unpack(f"<{len(raw) // 2}e", raw)


def check_encoder_positions(variables, d_model):
    """candle computes the encoder's sinusoidal positions instead of loading them: make sure
    they are the ones this model was trained with."""
    dtype, (n_ctx, channels), raw = variables["encoder/position_encodings/encodings"]
    if dtype != "F16" or channels != d_model:
        raise Ct2Error("unexpected encoder position encodings")
    stored = f16_values(raw)
    half = channels // 2
    step = math.log(10000) / (half - 1)
    worst = 0.0
    for t in range(0, n_ctx, 7):  # a sample of the rows is plenty
        for j in range(half):
            angle = t * math.exp(-step * j)
            worst = max(
                worst,
                abs(stored[t * channels + j] - math.sin(angle)),
                abs(stored[t * channels + half + j] - math.cos(angle)),
            )
    if worst > 2e-3:
        raise Ct2Error(f"encoder positions differ from sinusoids by {worst}")


def mel_filters(n_mels, sr=SAMPLE_RATE, n_fft=N_FFT):
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults: Slaney mel scale (linear
    below 1 kHz, logarithmic above) and Slaney area normalisation; n_mels x (1 + n_fft/2)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0

    def hz_to_mel(hz):
        return hz / f_sp if hz < min_log_hz else min_log_mel + math.log(hz / min_log_hz) / logstep

    def mel_to_hz(mel):
        return f_sp * mel if mel < min_log_mel else min_log_hz * math.exp(logstep * (mel - min_log_mel))

    n_freqs = 1 + n_fft // 2
    fft_freqs = [i * (sr / 2) / (n_freqs - 1) for i in range(n_freqs)]
    top = hz_to_mel(sr / 2)
    mel_f = [mel_to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    weights = []
    for m in range(n_mels):
        lo, centre, hi = mel_f[m], mel_f[m + 1], mel_f[m + 2]
        enorm = 2.0 / (hi - lo)
        row = []
        for f in fft_freqs:
            lower = (f - lo) / (centre - lo)
            upper = (hi - f) / (hi - centre)
            row.append(max(0.0, min(lower, upper)) * enorm)
        weights.append(row)
    return weights


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    src, dst = Path(argv[1]), Path(argv[2])
    spec, variables = read_ct2(src / "model.bin")
    if spec != "WhisperSpec":
        raise Ct2Error(f"model.bin holds a {spec}, not a WhisperSpec")
    ct2_config = json.loads((src / "config.json").read_text())
    tensors, enc_layers, dec_layers = convert(variables)
    vocab_size, d_model = variables["decoder/embeddings/weight"][1]
    _, (_, n_mels, _), _ = variables["encoder/conv1/weight"]
    check_encoder_positions(variables, d_model)
    filters = mel_filters(n_mels)
    tensors["mel_filters"] = (
        "F32",
        [n_mels, len(filters[0])],
        struct.pack(f"<{n_mels * len(filters[0])}f", *(w for row in filters for w in row)),
    )
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    special = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    config = {
        "model_type": "whisper",
        "num_mel_bins": n_mels,
        "max_source_positions": variables["encoder/position_encodings/encodings"][1][0],
        "d_model": d_model,
        "encoder_attention_heads": scalar(variables, "encoder/num_heads"),
        "encoder_layers": enc_layers,
        "vocab_size": vocab_size,
        "max_target_positions": variables["decoder/position_encodings/encodings"][1][0],
        "decoder_attention_heads": scalar(variables, "decoder/num_heads"),
        "decoder_layers": dec_layers,
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", []),
        # English-only checkpoints have no language tokens in their prompt.
        "multilingual": vocab_size >= 51865,
        "special_tokens": {
            k: special[k]
            for k in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>")
            if k in special
        },
    }
    dst.mkdir(parents=True, exist_ok=True)
    write_safetensors(dst / "model.safetensors", tensors, {"format": "pt", "source": "ctranslate2"})
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(src / "tokenizer.json", dst / "tokenizer.json")
    print(f"[convert-whisper-ct2] {len(tensors)} tensors, {enc_layers}+{dec_layers} layers, d_model {d_model} -> {dst}")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Ct2Error as e:
        sys.exit(f"convert-whisper-ct2: {e}")
