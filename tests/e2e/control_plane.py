"""A real control plane for the e2e tests: `gpu-backend --no-models` on SQLite in a temp dir
(or on PostgreSQL: `postgres_url()` starts the throwaway server of scripts/postgres.sh), with
a bootstrap admin key and an edge token, and helpers for its admin API."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from . import paths

ADMIN_KEY = "sk-e2e-admin-5e1f"
EDGE_TOKEN = "edge-e2e-token-9b7d"
EDGE_TOKEN_SECRET = "SWITCHYARD_EDGE_TOKEN"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControlPlane:
    """One control plane process; `restart` keeps its port and its database."""

    def __init__(self, workdir: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, database_url: str | None = None,
                 port: int | None = None) -> None:
        """`extra_args` and `env` reach `gpu-backend` as given (e.g. the task plane's
        `--gateway-config` and the provider secrets it names); `database_url` selects
        PostgreSQL instead of SQLite in the work dir; `port` fixes the port (a free one by
        default)."""
        self.workdir = workdir
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.database_url = database_url
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "control-plane.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(paths.gpu_backend()), "--no-models", "--listen", f"127.0.0.1:{self.port}",
             "--data-dir", str(self.workdir / "data"), "--admin-key-sha256", sha(ADMIN_KEY),
             "--edge-token-sha256", sha(EDGE_TOKEN), *self.extra_args,
             *(["--database-url", self.database_url] if self.database_url else [])],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=paths.REPO,
            env={**os.environ, **self.env})
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.admin("GET", "/admin/v1/me").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"the control plane did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown path runs, leases and open transactions stay."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def admin(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.request(method, self.base_url + path, json=body, timeout=10,
                             headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def create_key(self, key_id: str, **fields) -> str:
        r = self.admin("POST", "/admin/v1/keys", {"id": key_id, **fields})
        assert r.status_code == 201, r.text
        return r.json()["secret"]

    def control_plane_config(self) -> dict:
        """The gateway config's `control_plane` section pointing at this control plane."""
        return {"base_url": self.base_url, "cluster": "control_plane",
                "token_secret": EDGE_TOKEN_SECRET, "key_sync_interval_ms": 1000,
                "usage_flush_ms": 200, "call_timeout_ms": 2000}


def postgres_url() -> str:
    """A fresh, empty PostgreSQL database (scripts/postgres.sh starts the server if needed and
    recreates the database); stop the server with `scripts/postgres.sh stop`."""
    done = subprocess.run([str(paths.REPO / "scripts" / "postgres.sh")], capture_output=True,
                          text=True, timeout=300, cwd=paths.REPO)
    if done.returncode != 0:
        pytest.fail(f"scripts/postgres.sh failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip()
