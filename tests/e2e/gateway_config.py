"""The gateway config the e2e suite runs with: every provider pointed at its double (and, for
the gpu-backend module, the `local` provider at the real backend)."""

from __future__ import annotations

import hashlib

from doubles.server import ASYNC_PROVIDERS, PROVIDERS, Doubles

KEY_ALL = "sk-e2e-all-0d1e"
KEY_LIMITED = "sk-e2e-limited-77aa"  # only gpt-* models
KEY_EXPIRED = "sk-e2e-expired-3c3c"
MAX_REQUEST_BYTES = 64 * 1024

# gateway model name -> (provider double, upstream model name the double must receive)
CHAT_MODELS = {
    "gpt-4o-mini": ("openai", "gpt-4o-mini-2024-07-18"),
    "claude-haiku": ("anthropic", "claude-3-5-haiku-20241022"),
    "gemini-flash": ("gemini", "gemini-2.0-flash-001"),
    "qwen-plus": ("dashscope", "qwen-plus-2025-01-25"),
    "claude-bedrock": ("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0"),
    "gpt-azure": ("azure", "gpt-4o-mini-deployment"),
    "command-a": ("cohere", "command-a-03-2025"),
    "mistral-small": ("mistral", "mistral-small-latest"),
    "gemini-vertex": ("vertex", "gemini-2.0-flash-001"),
}
PRICES = {
    "openai": {"input": 0.15, "cached_input": 0.075, "output": 0.60},
    "anthropic": {"input": 0.80, "cached_input": 0.08, "output": 4.00},
    "gemini": {"input": 0.10, "cached_input": 0.025, "output": 0.40},
    "dashscope": {"input": 0.40, "output": 1.20},
    "bedrock": {"input": 0.80, "cached_input": 0.08, "output": 4.00},
    "azure": {"input": 0.165, "cached_input": 0.083, "output": 0.66},
    "cohere": {"input": 2.50, "output": 10.00},
    "mistral": {"input": 0.10, "output": 0.30},
    "vertex": {"input": 0.15, "cached_input": 0.0375, "output": 0.60},
}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def cluster_name(provider: str) -> str:
    return f"{provider}_upstream"


def gateway_config(doubles: Doubles, local_backend: str | None = None) -> dict:
    providers = {
        name: {"kind": name, "base_url": d.base_url, "cluster": cluster_name(name),
               "api_key_secret": d.secret_env}
        for name, d in doubles.by_name.items() if name in PROVIDERS
    }
    # OpenAI also serves the Responses API: Responses clients pass through to it untouched.
    providers["openai"]["responses_api"] = True
    # Vertex scopes requests to a project and region; its token is the api_key secret.
    providers["vertex"]["vertex"] = {"project": "switchyard-e2e", "location": "us-central1"}
    # Bedrock signs with SigV4: the region and the secrets of the key pair.
    providers["bedrock"] = {
        "kind": "bedrock", "base_url": doubles["bedrock"].base_url,
        "cluster": cluster_name("bedrock"),
        "aws": {"region": "us-east-1", "access_key_id_secret": "BEDROCK_AWS_ACCESS_KEY_ID",
                "secret_access_key_secret": "BEDROCK_AWS_SECRET_ACCESS_KEY"}}
    models = [
        {"name": name, "strategy": "priority",
         "aliases": ["fast"] if name == "gpt-4o-mini" else [],
         "deployments": [{"provider": p, "model": up, "price": PRICES[p]}]}
        for name, (p, up) in CHAT_MODELS.items()
    ]
    models += [
        # A Gemini 3 model: the double signs its function calls and refuses a history that
        # comes back without the signatures (test_reasoning.py).
        {"name": "gemini-3", "deployments": [
            {"provider": "gemini", "model": "gemini-3-flash-preview", "price": PRICES["gemini"]}]},
        {"name": "text-embed", "mode": "embedding", "deployments": [
            {"provider": "openai", "model": "text-embedding-3-small",
             "price": {"input": 0.02, "output": 0}}]},
        # Two deployments: the second takes over when the first fails before answering.
        {"name": "fallback-chain", "strategy": "priority", "deployments": [
            {"provider": "openai", "model": "gpt-primary", "price": PRICES["openai"]},
            {"provider": "anthropic", "model": "claude-secondary", "price": PRICES["anthropic"]}],
         # Ejection off here (every test starts with a healthy primary); see "ejecting".
         "fallback": {"attempt_timeout_ms": 2000, "total_timeout_ms": 8000,
                      "eject_after_failures": 1000000, "share_retry_after": False}},
        # Bedrock → Azure → Gemini: three wire formats in one fallback chain (ejection off,
        # as for fallback-chain).
        {"name": "tri-fallback", "strategy": "priority", "deployments": [
            {"provider": "bedrock", "model": "anthropic.claude-tri-v1:0",
             "price": PRICES["bedrock"]},
            {"provider": "azure", "model": "gpt-tri-deployment", "price": PRICES["azure"]},
            {"provider": "gemini", "model": "gemini-tri", "price": PRICES["gemini"]}],
         "fallback": {"attempt_timeout_ms": 4000, "total_timeout_ms": 12000,
                      "eject_after_failures": 1000000, "share_retry_after": False}},
        # Passive health: after 2 failures the primary is skipped for the cooldown.
        {"name": "ejecting", "strategy": "priority", "deployments": [
            {"provider": "openai", "model": "gpt-ejectable", "price": PRICES["openai"]},
            {"provider": "anthropic", "model": "claude-standby", "price": PRICES["anthropic"]}],
         "fallback": {"eject_after_failures": 2, "cooldown_ms": 600000}},
        # OpenAI's media endpoints (test_media.py), priced per image and per second; `mode` is
        # what /v1/models reports (an image model's follows from its per-image price).
        {"name": "image-gen", "deployments": [
            {"provider": "openai", "model": "gpt-image-1", "price": {"image": 0.04}}]},
        {"name": "tts", "mode": "speech", "deployments": [
            {"provider": "openai", "model": "gpt-4o-mini-tts", "price": {"second": 0.001}}]},
        {"name": "stt", "mode": "transcription", "deployments": [
            {"provider": "openai", "model": "whisper-1", "price": {"second": 0.0001}}]},
        # Dedicated to the metrics test, so its counters are not shared with other tests.
        {"name": "metered", "deployments": [
            {"provider": "openai", "model": "gpt-metered", "price": PRICES["openai"]}]},
    ]
    if local_backend:
        providers["local"] = {"kind": "openai", "base_url": local_backend,
                              "cluster": "gpu_backend"}
        # CPU inference on a loaded 2-core machine can take tens of seconds.
        slow = {"attempt_timeout_ms": 120000, "total_timeout_ms": 180000}
        models += [
            {"name": "smollm2", "aliases": ["default"], "fallback": slow, "deployments": [
                {"provider": "local", "model": "smollm2-135m-instruct"}]},
            {"name": "minilm", "mode": "embedding", "fallback": slow, "deployments": [
                {"provider": "local", "model": "all-minilm-l6-v2"}]},
            # The real speech model behind the gateway's /v1/audio/transcriptions.
            {"name": "whisper", "mode": "transcription", "fallback": slow,
             "deployments": [
                {"provider": "local", "model": "whisper-tiny-en"}]},
        ]
    return {
        "keys": [
            {"id": "e2e-all", "sha256": sha(KEY_ALL), "models": ["*"], "label": "e2e"},
            {"id": "e2e-limited", "sha256": sha(KEY_LIMITED), "models": ["gpt-*"]},
            {"id": "e2e-expired", "sha256": sha(KEY_EXPIRED), "models": ["*"],
             "expires_at": 1_000_000_000},
        ],
        "providers": providers,
        "models": models,
        "limits": {"max_request_bytes": MAX_REQUEST_BYTES},
        "fallback": {"attempt_timeout_ms": 10000, "total_timeout_ms": 20000},
    }


def upstreams(doubles: Doubles, local_backend_port: int | None = None) -> dict[str, int]:
    """Cluster name -> loopback port, for the host's cluster table."""
    out = {cluster_name(name): d.port for name, d in doubles.by_name.items()
           if name not in ASYNC_PROVIDERS}
    if local_backend_port:
        out["gpu_backend"] = local_backend_port
    return out
