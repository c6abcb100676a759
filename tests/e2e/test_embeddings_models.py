"""Embeddings and the model list through the gateway."""

from __future__ import annotations

import openai
import pytest

from doubles.openai_double import embedding_vector

from .checks import assert_upstream_request
from .gateway_config import CHAT_MODELS, KEY_LIMITED


def test_embeddings_default_base64(gw):
    """The OpenAI SDK asks for base64 by default and decodes it: the vectors must survive."""
    r = gw.openai().embeddings.create(model="text-embed", input=["alpha beta", "gamma"])
    entry = gw.doubles["openai"].last()
    assert_upstream_request(gw.doubles["openai"], entry, "text-embedding-3-small")
    assert [d.index for d in r.data] == [0, 1]
    for d, text in zip(r.data, ["alpha beta", "gamma"]):
        assert d.embedding == pytest.approx(embedding_vector(text, 8), abs=1e-5)
    assert r.usage.prompt_tokens == 3


def test_embeddings_float_and_dimensions(gw):
    r = gw.openai().embeddings.create(model="text-embed", input="delta", encoding_format="float",
                                      dimensions=16)
    assert len(r.data) == 1
    assert r.data[0].embedding == pytest.approx(embedding_vector("delta", 16), abs=1e-6)
    assert gw.doubles["openai"].last()["body"]["dimensions"] == 16


def test_embeddings_errors(gw):
    with pytest.raises(openai.NotFoundError):
        gw.openai().embeddings.create(model="no-such-embedder", input="x")
    with pytest.raises(openai.AuthenticationError):
        gw.openai(key="sk-wrong").embeddings.create(model="text-embed", input="x")


def test_list_models(gw):
    listing = gw.openai().models.list()
    ids = {m.id for m in listing.data}
    for name in [*CHAT_MODELS, "text-embed", "fallback-chain"]:
        assert name in ids, f"{name} missing from /v1/models: {sorted(ids)}"
    assert all(m.object == "model" for m in listing.data)
    for d in gw.doubles.by_name.values():
        assert d.requests() == [], "/v1/models is answered by the gateway itself"


def test_list_models_respects_key_globs(gw):
    listing = gw.openai(key=KEY_LIMITED).models.list()
    ids = {m.id for m in listing.data}
    assert "gpt-4o-mini" in ids
    assert "claude-haiku" not in ids and "qwen-plus" not in ids


def test_list_models_requires_key(gw):
    with pytest.raises(openai.AuthenticationError):
        gw.openai(key="sk-wrong").models.list()
