"""The shipped envoy.yaml: Envoy itself validates it (loading the real filter.wasm, which
parses the inline gateway config), and its inline gateway config is config/demo.json."""

from __future__ import annotations

import hashlib
import json
import subprocess

import yaml

from . import paths

DEFAULT_WASM = "target/wasm32-wasip1/release/switchyard_filter.wasm"
SECRETS = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DASHSCOPE_API_KEY",
           "SWITCHYARD_EDGE_TOKEN"]


def shipped() -> dict:
    return yaml.safe_load((paths.REPO / "envoy.yaml").read_text())


def wasm_plugin(cfg: dict) -> dict:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = hcm["typed_config"]["http_filters"]
    assert [f["name"] for f in filters][-1] == "envoy.filters.http.router"
    return next(f for f in filters if f["name"] == "envoy.filters.http.wasm")["typed_config"]["config"]


def test_envoy_validates_envoy_yaml(tmp_path):
    envoy = paths.envoy()
    wasm = paths.filter_wasm()
    text = (paths.REPO / "envoy.yaml").read_text()
    assert DEFAULT_WASM in text
    target = paths.REPO / "envoy.yaml"
    if wasm.resolve() != (paths.REPO / DEFAULT_WASM).resolve():
        target = tmp_path / "envoy.yaml"  # same file, pointed at the filter under test
        target.write_text(text.replace(DEFAULT_WASM, str(wasm)))
    r = subprocess.run([str(envoy), "--mode", "validate", "-c", str(target)], cwd=paths.REPO,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "OK" in out, out[-4000:]
    assert "configured 7 models, 5 providers, 1 keys" in out, out[-4000:]


def test_inline_gateway_config_is_config_demo_json():
    inline = json.loads(wasm_plugin(shipped())["configuration"]["value"])
    assert inline == json.loads((paths.REPO / "config/demo.json").read_text())


def test_demo_gateway_config_contents():
    demo = json.loads((paths.REPO / "config/demo.json").read_text())
    assert demo["keys"][0]["id"] == "demo"
    assert demo["keys"][0]["sha256"] == hashlib.sha256(b"sk-switchyard-demo").hexdigest()
    models = {m["name"]: m for m in demo["models"]}
    assert set(models) == {"smollm2", "minilm", "whisper", "gpt-4o-mini", "claude-3-5-haiku",
                           "gemini-2.0-flash", "qwen-plus"}
    assert models["whisper"]["deployments"][0]["model"] == "whisper-tiny-en"
    assert models["smollm2"]["aliases"] == ["default"]
    assert models["smollm2"]["deployments"][0]["model"] == "smollm2-135m-instruct"
    assert models["minilm"]["deployments"][0]["model"] == "all-minilm-l6-v2"
    local = demo["providers"]["local"]
    assert local == {"kind": "openai", "base_url": "http://127.0.0.1:8100",
                     "cluster": "gpu_backend"}
    for name, secret in zip(["openai", "anthropic", "gemini", "dashscope"], SECRETS):
        p = demo["providers"][name]
        assert p["kind"] == name and p["cluster"] == name and p["api_key_secret"] == secret
        assert p["base_url"].startswith("https://")


def test_envoy_yaml_shape():
    cfg = shipped()
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1",
                                                         "port_value": 9901}
    listener = cfg["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}
    plugin = wasm_plugin(cfg)
    vm = plugin["vm_config"]
    assert vm["runtime"] == "envoy.wasm.runtime.v8"
    assert vm["code"]["local"]["filename"] == DEFAULT_WASM
    assert vm["environment_variables"] == {"host_env_keys": SECRETS}  # names only, no values
    assert plugin["configuration"]["@type"] == "type.googleapis.com/google.protobuf.StringValue"
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"][0]["routes"]
    assert routes[0]["route"]["cluster_header"] == "x-switchyard-cluster"
    assert routes[0]["route"]["timeout"] == "0s"  # streams are not cut by a whole-request timeout
    tags = {t["tag_name"]: t["regex"] for t in cfg["stats_config"]["stats_tags"]}
    assert set(tags) >= {"key", "model", "provider", "status"}
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    # The demo's control plane lives in gpu-backend; the filter calls it off the request path.
    inline = json.loads(plugin["configuration"]["value"])
    cp = clusters[inline["control_plane"]["cluster"]]
    addr = cp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert addr["socket_address"] == {"address": "127.0.0.1", "port_value": 8100}
    gpu = clusters["gpu_backend"]
    assert gpu["health_checks"][0]["http_health_check"]["path"] == "/healthz"
    assert "outlier_detection" in gpu
    hosts = {"openai": "api.openai.com", "anthropic": "api.anthropic.com",
             "gemini": "generativelanguage.googleapis.com",
             "dashscope": "dashscope-intl.aliyuncs.com"}
    for name, host in hosts.items():
        c = clusters[name]
        assert c["type"] in ("STRICT_DNS", "LOGICAL_DNS")
        addr = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert addr["socket_address"] == {"address": host, "port_value": 443}
        tls = c["transport_socket"]
        assert tls["name"] == "envoy.transport_sockets.tls"
        assert tls["typed_config"]["sni"] == host
    text = (paths.REPO / "envoy.yaml").read_text()
    for marker in ("sk-ant-", "AIza", "sk-proj-"):
        assert marker not in text, "no secret values in envoy.yaml"
