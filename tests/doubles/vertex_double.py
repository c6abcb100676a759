"""Vertex AI double (Gemini on Vertex): `POST /v1/projects/{project}/locations/{location}/
publishers/google/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`, with an
OAuth 2 access token as `Authorization: Bearer`. Bodies, answers and streams are the Gemini
double's; Vertex's differences: the project and region are in the path (and must be the
double's), the token is a bearer token (a bad one is a 401 `UNAUTHENTICATED`, as Google
answers), and every `contents` entry needs its `role`.

Wire format: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference ,
https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.publishers.models/generateContent
(see README.md).

It is also Google's OAuth 2.0 token endpoint for service accounts (`POST /token`, the
`token_uri` of a key file pointed here): a form with
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and `assertion=<RS256 JWT>` gets
`{"access_token", "expires_in", "token_type": "Bearer"}`, and a bad grant a 400
`{"error": "invalid_grant", "error_description"}`
(https://developers.google.com/identity/protocols/oauth2/service-account#httprest). The
assertion is checked with google-auth's own JWT code against the public keys registered with
`POST /_service_accounts` (`{"client_email", "public_key_pem", "expires_in"}`); tokens it
mints are accepted beside the static one, and `GET /_service_accounts` lists what was minted.
"""

from __future__ import annotations

import itertools
import time

from aiohttp import web
from google.auth import exceptions as google_exceptions
from google.auth import jwt as google_jwt

from . import common
from .common import DoubleState
from .gemini_double import GeminiDouble, google_error

PROJECT = "switchyard-e2e"
LOCATION = "us-central1"


CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class VertexDouble(GeminiDouble):
    provider = "vertex"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.accounts: dict[str, dict] = {}   # client_email → {public_key_pem, expires_in}
        self.minted: dict[str, dict] = {}     # token → {client_email, expires_at}
        self.grants: list[dict] = []          # every token request: {client_email, ok, why}
        self._serial = itertools.count(1)

    def routes(self, app: web.Application) -> None:
        # `v1` is what the gateway sends; `v1beta1` is google-genai's default in Vertex mode.
        for version in ("v1", "v1beta1"):
            app.router.add_post(f"/{version}/projects/{{project}}/locations/{{location}}/"
                                "publishers/google/models/{target}", self.dispatch)
        app.router.add_post("/token", self.token)
        app.router.add_post("/_service_accounts", self.add_account)
        app.router.add_get("/_service_accounts", self.list_accounts)

    async def add_account(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.accounts[body["client_email"]] = {"public_key_pem": body["public_key_pem"],
                                               "expires_in": int(body.get("expires_in", 3600))}
        return web.json_response({})

    async def list_accounts(self, request: web.Request) -> web.Response:
        return web.json_response({"grants": self.grants, "minted": list(self.minted)})

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        url = f"{request.scheme}://{request.host}{request.path}"

        def refuse(why: str, email: str = "") -> web.Response:
            self.grants.append({"client_email": email, "ok": False, "why": why})
            return web.json_response({"error": "invalid_grant", "error_description": why},
                                     status=400)

        if form.get("grant_type") != JWT_BEARER:
            return web.json_response({"error": "unsupported_grant_type",
                                      "error_description": "Invalid grant_type."}, status=400)
        assertion = str(form.get("assertion") or "")
        try:
            unverified = google_jwt.decode(assertion, verify=False)
        except (ValueError, google_exceptions.GoogleAuthError):
            return refuse("Invalid JWT: malformed.")
        email = str(unverified.get("iss", ""))
        account = self.accounts.get(email)
        if account is None:
            return refuse("Invalid grant: account not found", email)
        try:
            claims = google_jwt.decode(assertion, certs=account["public_key_pem"], audience=url)
        except (ValueError, google_exceptions.GoogleAuthError) as e:
            return refuse(f"Invalid JWT Signature. ({e})", email)
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            return refuse("Invalid OAuth scope or ID token audience provided.", email)
        if int(claims["exp"]) - int(claims["iat"]) > 3600:
            return refuse("Invalid JWT: Token must be a short-lived token (60 minutes)", email)
        token = f"ya29.minted-{next(self._serial)}-{email.split('@')[0]}"
        self.minted[token] = {"client_email": email,
                              "expires_at": time.time() + account["expires_in"]}
        self.grants.append({"client_email": email, "ok": True, "why": ""})
        return web.json_response({"access_token": token, "expires_in": account["expires_in"],
                                  "token_type": "Bearer"})

    def token_ok(self, header: str | None) -> bool:
        if header == f"Bearer {self.api_key}":
            return True
        minted = self.minted.get((header or "").removeprefix("Bearer "))
        return minted is not None and minted["expires_at"] > time.time()

    def authenticate(self, request: web.Request) -> web.Response | None:
        if not self.token_ok(request.headers.get("Authorization")):
            return common.json_response(google_error(
                401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project."), 401)
        if (request.match_info["project"], request.match_info["location"]) != (PROJECT, LOCATION):
            return common.json_response(google_error(
                403, f"Permission 'aiplatform.endpoints.predict' denied on resource "
                f"'//aiplatform.googleapis.com/projects/{request.match_info['project']}/"
                f"locations/{request.match_info['location']}' (or it may not exist)."), 403)
        return None

    def check_body(self, body: dict) -> web.Response | None:
        for i, content in enumerate(body.get("contents") or []):
            if content.get("role") not in ("user", "model"):
                return common.json_response(google_error(
                    400, f"Please use a valid role: user, model. (contents[{i}])"), 400)
        return None


def make_app(token: str) -> tuple[web.Application, DoubleState]:
    state = DoubleState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    VertexDouble(token, state).routes(app)
    common.add_side_routes(app, state)
    return app, state
