"""Fixtures: the provider doubles (once per session), and each host in SWITCHYARD_HOSTS
started once per session with the real filter.wasm and a gateway config pointing at them.
Every test using `gw` runs once per host."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from doubles.server import Doubles

from . import hosts, paths
from .gateway_config import KEY_ALL, gateway_config, upstreams


class Gateway:
    """A running host plus the doubles behind it, with SDK clients pointed at it."""

    def __init__(self, host: hosts.Host, doubles: Doubles) -> None:
        self.host, self.doubles = host, doubles
        self.name = host.name
        self.base_url = host.base_url

    def openai(self, key: str | None = KEY_ALL, **kw) -> openai.OpenAI:
        """An OpenAI SDK client (to send no key, pass
        `extra_headers={"Authorization": openai.omit}` on the call)."""
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key or "unused",
                             max_retries=0, timeout=kw.pop("timeout", 15), **kw)

    def anthropic(self, key: str | None = KEY_ALL, **kw) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.base_url, api_key=key or "unused",
                                   max_retries=0, timeout=kw.pop("timeout", 15), **kw)

    def post(self, path: str, body=None, *, content: bytes | None = None, key: str | None = KEY_ALL,
             headers: dict | None = None) -> httpx.Response:
        h = {"content-type": "application/json"}
        if key:
            h["authorization"] = f"Bearer {key}"
        h.update(headers or {})
        return httpx.post(self.base_url + path, json=body if content is None else None,
                          content=content, headers=h, timeout=30)

    def get(self, path: str, key: str | None = KEY_ALL) -> httpx.Response:
        h = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.base_url + path, headers=h, timeout=30)


def secrets(doubles: Doubles) -> dict[str, str]:
    return {k: v for d in doubles.by_name.values() for k, v in d.secrets.items()}


@pytest.fixture(scope="session")
def doubles():
    d = Doubles().start()
    yield d
    d.stop()


@pytest.fixture(scope="session", params=paths.selected_hosts())
def gw(request, doubles, tmp_path_factory) -> Gateway:
    name = request.param
    workdir = Path(tmp_path_factory.mktemp(f"{name}-main"))
    host = hosts.start(name, gateway_config(doubles), upstreams(doubles), secrets(doubles),
                       workdir)
    yield Gateway(host, doubles)
    host.stop()


@pytest.fixture(autouse=True)
def _fresh_doubles(request):
    if "doubles" in request.fixturenames or "gw" in request.fixturenames:
        request.getfixturevalue("doubles").reset()


