"""Assertions shared by the e2e tests: what the upstream (a double) must and must not see."""

from __future__ import annotations

import json
from urllib.parse import unquote

from doubles.server import Double

from .gateway_config import KEY_ALL, KEY_EXPIRED, KEY_LIMITED

CREDENTIAL_HEADER = {"openai": "authorization", "dashscope": "authorization",
                     "anthropic": "x-api-key", "gemini": "x-goog-api-key", "azure": "api-key",
                     "cohere": "authorization", "mistral": "authorization",
                     "vertex": "authorization", "bedrock": "authorization"}
RAW_KEY_HEADER = ("anthropic", "gemini", "azure")
GATEWAY_KEYS = (KEY_ALL, KEY_LIMITED, KEY_EXPIRED)


def upstream_model(entry: dict) -> str:
    """The model name the upstream received (Gemini and Vertex carry it in the path, Bedrock
    too, Azure a deployment named after it)."""
    path = entry["path"]
    if path.startswith("/model/"):
        return unquote(path.split("/")[2])
    if path.startswith("/openai/deployments/"):
        return path.split("/")[3]
    if "/models/" in entry["path"]:
        return entry["path"].split("/models/", 1)[1].split(":", 1)[0]
    return (entry["body"] or {}).get("model", "")


def assert_upstream_request(double: Double, entry: dict, model: str) -> None:
    """The request reached `double` with its own credential, for `model`, and carried no
    gateway key anywhere (headers, query, body)."""
    headers = entry["headers"]
    expected = double.api_key if double.name in RAW_KEY_HEADER else f"Bearer {double.api_key}"
    if double.name == "bedrock":
        # SigV4: the double verified the signature; the header names the access key id.
        expected = headers.get("authorization", "")
        key_id = double.secrets["BEDROCK_AWS_ACCESS_KEY_ID"]
        assert expected.startswith(f"AWS4-HMAC-SHA256 Credential={key_id}/"), expected
    assert headers.get(CREDENTIAL_HEADER[double.name]) == expected, (
        f"upstream {double.name} got credential header "
        f"{CREDENTIAL_HEADER[double.name]}={headers.get(CREDENTIAL_HEADER[double.name])!r}")
    assert upstream_model(entry) == model
    blob = json.dumps(entry)
    for key in GATEWAY_KEYS:
        assert key not in blob, f"the gateway key leaked upstream to {double.name}: {entry}"


def usage_of(entry: dict) -> dict:
    return entry["response"]["usage"]
