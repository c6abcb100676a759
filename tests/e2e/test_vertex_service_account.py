"""Vertex AI from a service-account key, on every host.

The edge is given no Vertex token at all. The control plane (`gpu-backend
--service-account VERTEX_SA_TOKEN=key.json`) signs an RS256 assertion with the key, exchanges
it at the key file's `token_uri` (here the Vertex double's Google OAuth token endpoint, which
checks the assertion with google-auth's own JWT code), and hands the access token to the edges
with the key sync under the provider's secret name. The double's tokens live 4 s here, so the
test also sees a refresh: requests keep working after the first token has expired."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import hosts, paths
from .conftest import Gateway, secrets
from .control_plane import EDGE_TOKEN, EDGE_TOKEN_SECRET, ControlPlane
from .gateway_config import KEY_ALL, PRICES, cluster_name, gateway_config, upstreams

SECRET = "VERTEX_SA_TOKEN"
MODEL = "gemini-vertex-sa"
TOKEN_LIFE_S = 4
EMAIL = "switchyard-e2e@switchyard-e2e.iam.gserviceaccount.com"


def grants(doubles) -> list[dict]:
    return httpx.get(doubles["vertex"].base_url + "/_service_accounts", timeout=10).json()[
        "grants"]


@pytest.fixture(scope="module")
def plane(doubles, tmp_path_factory):
    """A control plane minting Vertex tokens from a fresh key the double knows the public
    half of."""
    workdir = Path(tmp_path_factory.mktemp("vertex-sa"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    vertex = doubles["vertex"]
    r = httpx.post(vertex.base_url + "/_service_accounts", json={
        "client_email": EMAIL, "public_key_pem": public, "expires_in": TOKEN_LIFE_S},
        timeout=10)
    r.raise_for_status()
    key_file = workdir / "service-account.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "switchyard-e2e", "private_key_id": "e2e-1",
        "private_key": pem, "client_email": EMAIL, "client_id": "1",
        "token_uri": vertex.base_url + "/token"}))
    cp = ControlPlane(workdir, extra_args=["--service-account", f"{SECRET}={key_file}"])
    yield cp
    cp.stop()


@pytest.fixture(scope="module", params=paths.selected_hosts())
def edge(request, plane, doubles, tmp_path_factory) -> Gateway:
    config = gateway_config(doubles)
    config["control_plane"] = plane.control_plane_config()
    vertex = dict(config["providers"]["vertex"])
    vertex["api_key_secret"] = SECRET  # which the host is never given
    config["providers"]["vertex-sa"] = {**vertex, "cluster": cluster_name("vertex")}
    config["models"].append({"name": MODEL, "deployments": [
        {"provider": "vertex-sa", "model": "gemini-2.0-flash-001", "price": PRICES["vertex"]}]})
    ups = upstreams(doubles)
    ups["control_plane"] = plane.port
    host_secrets = {**secrets(doubles), EDGE_TOKEN_SECRET: EDGE_TOKEN}
    assert SECRET not in host_secrets
    host = hosts.start(request.param, config, ups, host_secrets,
                       Path(tmp_path_factory.mktemp(f"{request.param}-vertex-sa")))
    yield Gateway(host, doubles)
    host.stop()


def ask(edge: Gateway, text: str) -> httpx.Response:
    return edge.post("/v1/chat/completions",
                     {"model": MODEL, "messages": [{"role": "user", "content": text}]},
                     key=KEY_ALL)


def test_vertex_works_on_a_token_minted_from_the_service_account_and_refreshed(edge):
    deadline = time.monotonic() + 15
    while (r := ask(edge, "first")).status_code != 200:
        assert time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(0.2)
    assert r.json()["choices"][0]["message"]["content"]
    ok = [g for g in grants(edge.doubles) if g["ok"]]
    assert ok and all(g["client_email"] == EMAIL for g in ok), grants(edge.doubles)
    assert not [g for g in grants(edge.doubles) if not g["ok"]], "a refused assertion"

    # Past the first token's life: still served, so a refreshed token reached the edge (the
    # double refuses an expired one with 401).
    first_grants = len(ok)
    time.sleep(TOKEN_LIFE_S + 1)
    for i in range(6):
        r = ask(edge, f"after refresh {i}")
        assert r.status_code == 200, r.text
    assert len([g for g in grants(edge.doubles) if g["ok"]]) > first_grants


def test_without_a_credential_the_model_says_which_secret_is_missing(edge, tmp_path):
    """The same config on a host with no control plane: the model is unservable and the 503
    names the secret (never a value)."""
    config = gateway_config(edge.doubles)
    vertex = dict(config["providers"]["vertex"])
    vertex["api_key_secret"] = SECRET
    config["providers"]["vertex-sa"] = {**vertex, "cluster": cluster_name("vertex")}
    config["models"].append({"name": MODEL, "deployments": [
        {"provider": "vertex-sa", "model": "gemini-2.0-flash-001", "price": PRICES["vertex"]}]})
    host = hosts.start(edge.name, config, upstreams(edge.doubles), secrets(edge.doubles),
                       tmp_path)
    try:
        r = Gateway(host, edge.doubles).post(
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, key=KEY_ALL)
        assert r.status_code == 503, r.text
        assert SECRET in r.json()["error"]["message"]
    finally:
        host.stop()
