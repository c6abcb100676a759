"""Regenerates `models.tsv` from LiteLLM's public price list.

    python3 filter/core/catalog/generate.py <model_prices_and_context_window.json> > filter/core/catalog/models.tsv

The input is LiteLLM's `model_prices_and_context_window.json` (https://github.com/BerriAI/litellm,
also shipped in the `litellm` wheel as `litellm/model_prices_and_context_window_backup.json`).
Only its data is read; this script is the catalog's own. It keeps the models that are current
(no deprecation date, or one on/after TODAY) of the providers the gateway speaks, in the modes
the catalog describes, and writes one tab-separated line per model (see README.md).
"""

from __future__ import annotations

import json
import sys

TODAY = "2026-12-04"
SOURCE = "litellm 1.110.2 model_prices_and_context_window_backup.json"

# catalog namespace -> (LiteLLM providers, key prefix to strip, per-namespace cap or None)
NAMESPACES = {
    "openai": (["openai"], "", None),
    "anthropic": (["anthropic"], "", None),
    "gemini": (["gemini"], "gemini/", None),
    # Gemini on Vertex (publishers/google); Vertex's partner models speak other APIs.
    "vertex": (["vertex_ai-language-models"], "vertex_ai/", None),
    "bedrock": (["bedrock_converse", "bedrock"], "", None),
    "azure": (["azure"], "azure/", None),
    "mistral": (["mistral"], "mistral/", None),
    "cohere": (["cohere_chat", "cohere"], "", None),
    "groq": (["groq"], "groq/", None),
    "deepseek": (["deepseek"], "deepseek/", None),
    "together": (["together_ai"], "together_ai/", 60),
    "fireworks": (["fireworks_ai"], "fireworks_ai/", 60),
    "xai": (["xai"], "xai/", None),
    "dashscope": (["dashscope"], "dashscope/", None),
}
MODES = {"chat": "chat", "embedding": "embedding", "image_generation": "image",
         "audio_transcription": "transcription", "audio_speech": "speech"}


def per_million(cost) -> str:
    if cost is None:
        return "-"
    return f"{cost * 1_000_000:.6g}"


def plain(value) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"


def caps(v: dict, mode: str) -> str:
    out = ""
    if v.get("supports_function_calling"):
        out += "t"
    if v.get("supports_vision"):
        out += "v"
    if v.get("supports_response_schema"):
        out += "j"
    if mode == "chat":
        # Every chat API the gateway speaks reports usage in its streams (OpenAI-shaped
        # servers when asked with stream_options, which the gateway does).
        out += "u"
    if v.get("supports_prompt_caching") or v.get("cache_read_input_token_cost") is not None:
        out += "c"
    if v.get("supports_reasoning"):
        out += "r"
    return out or "-"


def rows(data: dict):
    seen = set()
    for ns, (providers, prefix, cap) in NAMESPACES.items():
        count = 0
        for key in sorted(data):
            v = data[key]
            if not isinstance(v, dict) or v.get("litellm_provider") not in providers:
                continue
            mode = MODES.get(v.get("mode"))
            if mode is None:
                continue
            if (v.get("deprecation_date") or "9999") < TODAY:
                continue
            name = key[len(prefix):] if prefix and key.startswith(prefix) else key
            # Fine-tuning price rows are templates, not models anyone can call by that name.
            if name.startswith("ft:"):
                continue
            # Region- or tier-specific price variants are not separate models.
            if ns in ("bedrock", "azure", "vertex", "openai") and "/" in name:
                continue
            if ns == "bedrock" and name.split(".")[0] not in (
                    "anthropic", "amazon", "meta", "mistral", "cohere", "ai21", "deepseek",
                    "qwen", "openai", "us", "global", "writer", "moonshot", "google", "minimax"):
                continue
            if ns == "bedrock" and name.split(".")[0] in ("us", "global") and \
                    name.split(".")[1] not in ("anthropic", "amazon", "meta", "deepseek"):
                continue
            price_in = v.get("input_cost_per_token")
            price_out = v.get("output_cost_per_token")
            per_image = v.get("output_cost_per_image")
            per_second = v.get("output_cost_per_second") or v.get("input_cost_per_second")
            if mode in ("chat", "embedding") and price_in is None:
                continue
            if mode == "image" and per_image is None:
                continue
            if mode in ("transcription", "speech") and per_second is None and price_in is None:
                continue
            ident = f"{ns}/{name}"
            if ident in seen:
                continue
            if cap is not None and count >= cap:
                continue
            seen.add(ident)
            count += 1
            context = v.get("max_input_tokens")
            max_out = v.get("max_output_tokens")
            if mode == "embedding":
                max_out = None
            yield "\t".join([
                ident, mode,
                plain(context) if isinstance(context, (int, float)) else "-",
                plain(max_out) if isinstance(max_out, (int, float)) else "-",
                per_million(price_in), per_million(v.get("cache_read_input_token_cost")),
                per_million(price_out), plain(per_image), plain(per_second), caps(v, mode),
            ])


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    lines = list(rows(data))
    print(f"# Switchyard model catalog, generated {TODAY} from {SOURCE}")
    print("# by filter/core/catalog/generate.py; sources and columns: filter/core/catalog/README.md")
    print("# id\tmode\tcontext\tmax_output\tinput\tcached_input\toutput\tper_image\tper_second\tcaps")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
