"""The task plane for the e2e tests and the task benchmark: a real `gpu-backend` routing with
the e2e gateway config (control plane and task plane over one SQLite store), and an edge host
whose gateway config forwards `/v1/tasks…` to it."""

from __future__ import annotations

import json
from pathlib import Path

from . import hosts
from .conftest import secrets
from .control_plane import EDGE_TOKEN, EDGE_TOKEN_SECRET, ControlPlane
from .gateway_config import gateway_config, upstreams


def start_task_plane(doubles, workdir: Path, *extra_args: str, config: dict | None = None,
                     env: dict[str, str] | None = None,
                     port: int | None = None,
                     database_url: str | None = None) -> ControlPlane:
    """Webhooks may reach loopback (the tests' receivers); `extra_args` tune leases, retries…
    `config` replaces the e2e gateway config, `env` adds secrets, `port` is the port to use
    (known beforehand when the plane's own URL goes into its arguments), `database_url` a
    PostgreSQL store instead of SQLite."""
    config_file = workdir / "gateway.json"
    config_file.write_text(json.dumps(config or gateway_config(doubles)))
    return ControlPlane(workdir, extra_args=[
        "--gateway-config", str(config_file), "--webhook-allow-net", "127.0.0.0/8",
        *extra_args], env={**secrets(doubles), **(env or {})}, port=port,
        database_url=database_url)


def start_task_edge(name: str, plane: ControlPlane, doubles, workdir: Path,
                    config: dict | None = None, **tasks_section) -> hosts.Host:
    """Host `name` with the e2e gateway config (or `config`) plus a `tasks` section pointing
    at `plane` (`tasks_section` adds fields, e.g. `call_timeout_ms`). A `control_plane`
    section in `config` gets its cluster too (the plane is the control plane as well)."""
    config = dict(config or gateway_config(doubles))
    config["tasks"] = {"base_url": plane.base_url, "cluster": "task_plane",
                       "token_secret": EDGE_TOKEN_SECRET, **tasks_section}
    ups = upstreams(doubles)
    ups["task_plane"] = plane.port
    if "control_plane" in config:
        ups[config["control_plane"].get("cluster", "control_plane")] = plane.port
    return hosts.start(name, config, ups, {**secrets(doubles), EDGE_TOKEN_SECRET: EDGE_TOKEN},
                       workdir)
