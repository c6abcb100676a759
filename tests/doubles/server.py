"""Run the provider doubles: in a background thread for the tests (`Doubles`), or standalone.

    cd tests && ../.venv/bin/python -m doubles.server            # ephemeral ports, printed
    cd tests && ../.venv/bin/python -m doubles.server --openai 18001 --anthropic 18002
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
import urllib.request

from aiohttp import web

from . import (anthropic_double, azure_double, bedrock_double, cohere_double,
               dashscope_double, dashscope_tasks_double, fal_double, gemini_double,
               mistral_double, openai_double, replicate_double, vertex_double, veo_double,
               wavespeed_double)

PROVIDERS = {
    "openai": (openai_double.make_app, "OPENAI_API_KEY", "sk-upstream-openai-7f3a"),
    "anthropic": (anthropic_double.make_app, "ANTHROPIC_API_KEY", "sk-ant-upstream-91c2"),
    "gemini": (gemini_double.make_app, "GEMINI_API_KEY", "AIza-upstream-gemini-55d0"),
    "dashscope": (dashscope_double.make_app, "DASHSCOPE_API_KEY", "sk-upstream-dashscope-c41e"),
    "azure": (azure_double.make_app, "AZURE_OPENAI_API_KEY", "azure-upstream-key-3b9d0c"),
    "cohere": (cohere_double.make_app, "COHERE_API_KEY", "co-upstream-cohere-8e2a41"),
    "mistral": (mistral_double.make_app, "MISTRAL_API_KEY", "mistral-upstream-key-6c7d2f"),
    "vertex": (vertex_double.make_app, "VERTEX_ACCESS_TOKEN", "ya29.upstream-vertex-token-91d3"),
}

# Asynchronous media providers (submit, poll, cancel, their own signed webhooks): started
# beside the chat providers, but no gateway provider kind of their own in the e2e config.
ASYNC_PROVIDERS = {
    "wavespeed": (wavespeed_double.make_app, "WAVESPEED_API_KEY", "ws-upstream-wavespeed-2c8e"),
    "replicate": (replicate_double.make_app, "REPLICATE_API_TOKEN", "r8_upstream-replicate-5a1f"),
    "fal": (fal_double.make_app, "FAL_KEY", "fal-upstream-key-id:7d3b9e"),
    "dashscope_tasks": (dashscope_tasks_double.make_app, "DASHSCOPE_TASKS_API_KEY",
                        "sk-upstream-dashscope-tasks-0b7c"),
    "veo": (veo_double.make_app, "VEO_API_KEY", "AIza-upstream-veo-61fa"),
}

# Bedrock signs with an AWS key pair (SigV4) instead of one API key: its secrets.
BEDROCK_CREDENTIALS = bedrock_double.new_credentials()
BEDROCK_SECRETS = {"BEDROCK_AWS_ACCESS_KEY_ID": BEDROCK_CREDENTIALS["access_key_id"],
                   "BEDROCK_AWS_SECRET_ACCESS_KEY": BEDROCK_CREDENTIALS["secret_access_key"]}


class Double:
    """A running double: its base URL and the credentials it expects (`secrets`: secret
    name → value, as a gateway host must be given them)."""

    def __init__(self, name: str, port: int, secret_env: str, api_key: str,
                 secrets: dict[str, str] | None = None) -> None:
        self.name, self.port, self.secret_env, self.api_key = name, port, secret_env, api_key
        self.secrets = secrets if secrets is not None else {secret_env: api_key}
        self.base_url = f"http://127.0.0.1:{port}"

    def _call(self, method: str, path: str, payload=None):
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def last(self) -> dict:
        return self._call("GET", "/_last")

    def requests(self) -> list[dict]:
        return self._call("GET", "/_requests")

    def reset(self) -> None:
        self._call("POST", "/_reset", {})

    def fault(self, **fault) -> None:
        self._call("POST", "/_faults", {"faults": [fault]})

    def cap(self, concurrent: int) -> None:
        """At most `concurrent` requests per upstream model in flight; more get a 429."""
        self._call("POST", "/_limits", {"concurrent": concurrent})

    def limits(self) -> dict:
        """The cap's counters: `in_flight`, `peak` and `refused` per upstream model."""
        return self._call("GET", "/_limits")


def _quiet_loop_errors(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Faults (dropped connections, cancelled handlers) are the doubles' job, not errors.

    Nothing in the doubles' thread may format a traceback: on CPython 3.11 that runs
    `ast.parse` (caret anchors), which races with pytest's own `ast.parse` in the main thread
    and aborts the session with "SystemError: AST constructor recursion depth mismatch"."""


class Doubles:
    """All four doubles on ephemeral loopback ports, served from one background thread."""

    def __init__(self) -> None:
        for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal",
                     "asyncio"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.CRITICAL + 1)
            logger.propagate = False
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_quiet_loop_errors)
        self.runners: list[web.AppRunner] = []
        self.by_name: dict[str, Double] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, name="doubles", daemon=True)

    def __getitem__(self, name: str) -> Double:
        return self.by_name[name]

    def start(self, ports: dict[str, int] | None = None) -> "Doubles":
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(ports or {}), self.loop)
        fut.result(timeout=30)
        return self

    async def _start(self, ports: dict[str, int]) -> None:
        apps = [(name, make_app(key), env, key, None)
                for name, (make_app, env, key) in {**PROVIDERS, **ASYNC_PROVIDERS}.items()]
        apps.append(("bedrock", bedrock_double.make_app(BEDROCK_CREDENTIALS),
                     "BEDROCK_API_KEY", BEDROCK_CREDENTIALS["api_key"], BEDROCK_SECRETS))
        for name, (app, _state), env, key, secrets in apps:
            runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                   shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", ports.get(name, 0))
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.runners.append(runner)
            self.by_name[name] = Double(name, port, env, key, secrets)

    def reset(self) -> None:
        for d in self.by_name.values():
            d.reset()

    def stop(self) -> None:
        async def _stop():
            for runner in self.runners:
                await runner.cleanup()
        try:
            asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    names = [*PROVIDERS, *ASYNC_PROVIDERS, "bedrock"]
    for name in names:
        parser.add_argument(f"--{name}", type=int, default=0, help=f"port for the {name} double")
    args = parser.parse_args()
    doubles = Doubles().start({n: getattr(args, n) for n in names})
    for d in doubles.by_name.values():
        expects = " ".join(f"{k}={v}" for k, v in d.secrets.items())
        print(f"{d.name}: {d.base_url}  (expects {expects})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        doubles.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
