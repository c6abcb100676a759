"""Writes the webhooks the asynchronous doubles send — signed by the doubles' own code — as
fixtures for the core's verifier (`filter/core/tests/async_providers.rs`), so the Rust check
and the doubles' signing are held against each other:

    cd tests && ../.venv/bin/python -m doubles.async_fixtures ../filter/core/tests/fixtures/async_webhooks

Each file: `provider`, `key` (a `whsec_` secret, or fal's JWKS document), `timestamp`,
`headers`, `body` (the exact bytes as text).
"""

from __future__ import annotations

import json
import pathlib
import sys

from . import fal_double, replicate_double, wavespeed_double
from .async_tasks import Job

TIMESTAMP = 1_758_798_328


def job(model: str, prompt: str, state: str) -> Job:
    j = Job(id="7c3e1a9b5d2f4e6a8c0b1d3f5a7c9e1b", model=model, input={"prompt": prompt},
            webhook="https://gw.example/v1/provider-webhooks/x/t_1", base_url="https://cdn.example",
            state=state, created=TIMESTAMP - 5)
    return j


def fixtures() -> dict[str, dict]:
    out = {}
    cases = [("wavespeed", wavespeed_double.webhook, wavespeed_double.WEBHOOK_SECRET,
              "wavespeed-ai/flux-dev"),
             ("replicate", replicate_double.webhook, replicate_double.WEBHOOK_SECRET,
              "black-forest-labs/flux-schnell"),
             ("fal", fal_double.webhook, fal_double.jwks(), "fal-ai/flux/dev")]
    for provider, make, key, model in cases:
        for state in ("succeeded", "failed"):
            body, headers = make(job(model, "a lighthouse at dawn", state), timestamp=TIMESTAMP)
            out[f"{provider}.{state}.json"] = {"provider": provider, "key": key,
                                                "timestamp": TIMESTAMP, "headers": headers,
                                                "body": body.decode()}
    return out


def main() -> None:
    folder = pathlib.Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for name, fixture in fixtures().items():
        (folder / name).write_text(json.dumps(fixture, indent=2) + "\n")
        print(folder / name)


if __name__ == "__main__":
    main()
