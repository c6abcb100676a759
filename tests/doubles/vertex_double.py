"""Vertex AI double (Gemini on Vertex): `POST /v1/projects/{project}/locations/{location}/
publishers/google/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`, with an
OAuth 2 access token as `Authorization: Bearer`. Bodies, answers and streams are the Gemini
double's; Vertex's differences: the project and region are in the path (and must be the
double's), the token is a bearer token (a bad one is a 401 `UNAUTHENTICATED`, as Google
answers), and every `contents` entry needs its `role`.

Wire format: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference ,
https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.publishers.models/generateContent
(see README.md).
"""

from __future__ import annotations

from aiohttp import web

from . import common
from .common import DoubleState
from .gemini_double import GeminiDouble, google_error

PROJECT = "switchyard-e2e"
LOCATION = "us-central1"


class VertexDouble(GeminiDouble):
    provider = "vertex"

    def routes(self, app: web.Application) -> None:
        # `v1` is what the gateway sends; `v1beta1` is google-genai's default in Vertex mode.
        for version in ("v1", "v1beta1"):
            app.router.add_post(f"/{version}/projects/{{project}}/locations/{{location}}/"
                                "publishers/google/models/{target}", self.dispatch)

    def authenticate(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
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
