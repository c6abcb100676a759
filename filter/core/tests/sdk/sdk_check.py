"""Feeds the gateway's golden client outputs to the official SDKs.

The golden files under ../fixtures/*/*.{anthropic,openai,responses,gemini}.expected.* are
what the core writes for Anthropic, OpenAI Chat, OpenAI Responses and Gemini clients. This script serves
each one from a local HTTP server (127.0.0.1 only) and checks that the official `anthropic`
and `openai` Python SDKs consume it: `client.messages.stream(...).get_final_message()`,
`messages.create`, `chat.completions.create(stream=True)`,
`responses.stream(...).get_final_response()` (the SDK's strict event accumulator),
`responses.create` (validated against the SDK's pydantic model), `google-genai`'s
`models.generate_content_stream` / `generate_content`, and that error events raise.

Run (the repository's .venv has the pinned SDKs, `scripts/python-env.sh`):
     .venv/bin/python filter/core/tests/sdk/sdk_check.py
"""

import glob
import http.server
import json
import os
import sys
import threading

import anthropic
import openai
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
current = {"body": b"", "type": "application/json"}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server naming)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", current["type"])
        self.send_header("content-length", str(len(current["body"])))
        self.end_headers()
        self.wfile.write(current["body"])

    def log_message(self, *args):
        pass


def serve(path):
    with open(path, "rb") as f:
        current["body"] = f.read()
    current["type"] = "text/event-stream" if path.endswith(".sse") else "application/json"


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    ac = anthropic.Anthropic(api_key="test", base_url=base, max_retries=0)
    oc = openai.OpenAI(api_key="test", base_url=base + "/v1", max_retries=0)
    gc = genai.Client(api_key="test", http_options=genai_types.HttpOptions(base_url=base))
    passed = failed = 0
    args = dict(model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*", "*.expected.*"))):
        name = os.path.relpath(path, FIXTURES)
        if not any(d in name for d in (".anthropic.", ".openai.", ".responses.", ".gemini.")):
            continue
        serve(path)
        expect_error = "error" in name
        try:
            if name.endswith(".anthropic.expected.sse"):
                with ac.messages.stream(**args) as stream:
                    msg = stream.get_final_message()
                summary = [(b.type, getattr(b, "text", None) or getattr(b, "input", None)) for b in msg.content]
                assert msg.stop_reason in ("end_turn", "max_tokens", "tool_use", "refusal"), msg.stop_reason
                for b in msg.content:
                    if b.type == "tool_use":
                        assert isinstance(b.input, dict) and b.id and b.name, b
                detail = f"stop={msg.stop_reason} usage=({msg.usage.input_tokens},{msg.usage.output_tokens}) {summary}"
            elif name.endswith(".anthropic.expected.json"):
                msg = ac.messages.create(**args)
                detail = f"stop={msg.stop_reason} blocks={[b.type for b in msg.content]}"
            elif name.endswith(".openai.expected.sse"):
                text, calls, finish, usage = "", {}, None, None
                for chunk in oc.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
                    if chunk.usage:
                        usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for c in chunk.choices:
                        text += c.delta.content or ""
                        for t in c.delta.tool_calls or []:
                            e = calls.setdefault(t.index, ["", "", ""])
                            e[0] = t.id or e[0]
                            e[1] += (t.function.name or "") if t.function else ""
                            e[2] += (t.function.arguments or "") if t.function else ""
                        finish = c.finish_reason or finish
                for e in calls.values():
                    json.loads(e[2])
                detail = f"finish={finish} usage={usage} text={text!r} calls={list(calls.values())}"
            elif name.endswith(".gemini.expected.sse"):
                text, calls, finish, usage = "", [], None, None
                for chunk in gc.models.generate_content_stream(model="m", contents="hi"):
                    c = chunk.candidates[0]
                    for part in c.content.parts or []:
                        if part.function_call:
                            assert isinstance(part.function_call.args, dict), part
                            calls.append((part.function_call.id, part.function_call.name,
                                          part.function_call.args))
                        elif part.text:
                            text += part.text
                    finish = c.finish_reason or finish
                    if chunk.usage_metadata:
                        u = chunk.usage_metadata
                        usage = (u.prompt_token_count, u.candidates_token_count,
                                 u.cached_content_token_count)
                detail = f"finish={finish} usage={usage} text={text!r} calls={calls}"
            elif name.endswith(".gemini.expected.json"):
                r = gc.models.generate_content(model="m", contents="hi")
                calls = [(f.id, f.name, f.args) for f in r.function_calls or []]
                detail = (f"finish={r.candidates[0].finish_reason} text={r.text!r} calls={calls} "
                          f"usage=({r.usage_metadata.prompt_token_count},"
                          f"{r.usage_metadata.candidates_token_count})")
            elif name.endswith(".responses.expected.sse") and expect_error:
                # The SDK yields a failed response as an event; its accumulator must take it.
                with oc.responses.stream(model="m", input="hi") as stream:
                    events = list(stream)
                last = events[-1]
                assert last.type == "response.failed" and last.response.error.message, last
                print(f"ok    {name}: ends with response.failed: {last.response.error.message}")
                passed += 1
                continue
            elif name.endswith(".responses.expected.sse"):
                with oc.responses.stream(model="m", input="hi") as stream:
                    r = stream.get_final_response()
                for item in r.output:
                    if item.type == "function_call":
                        json.loads(item.arguments)
                        assert item.call_id and item.name, item
                u = r.usage
                detail = (f"status={r.status} usage=({u.input_tokens},{u.output_tokens},"
                          f"cached={u.input_tokens_details.cached_tokens}) "
                          f"text={r.output_text!r} items={[o.type for o in r.output]}")
            elif name.endswith(".responses.expected.json"):
                r = oc.responses.create(model="m", input="hi")
                openai.types.responses.Response.model_validate(r.to_dict())
                detail = f"status={r.status} items={[o.type for o in r.output]}"
            else:
                r = oc.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                detail = f"finish={r.choices[0].finish_reason}"
            if expect_error:
                raise AssertionError("expected the SDK to raise")
            print(f"ok    {name}: {detail}")
            passed += 1
        except (anthropic.APIError, openai.APIError, genai_errors.APIError) as e:
            if expect_error:
                print(f"ok    {name}: raised {type(e).__name__}: {e}")
                passed += 1
            else:
                print(f"FAIL  {name}: {type(e).__name__}: {e}")
                failed += 1
        except Exception as e:  # noqa: BLE001 (report every failure, keep going)
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
            failed += 1
    server.shutdown()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
