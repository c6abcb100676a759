"""The README's examples, run as a newcomer would: `./switchyard run`, then every shell and
Python block of the README's "Examples" section, each checked against what the README says it
prints.

Convention: in a block, a comment line `# prints: TEXT` says that TEXT appears in the block's
output; every block carries at least one. Shell blocks run in bash (`set -e`), Python blocks
with the repository's `.venv` interpreter (the official SDKs are installed there)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
# `./switchyard run` may build first: the module's tests share its (long) start.
pytestmark = pytest.mark.timeout(1200)
BLOCK = re.compile(r"```(sh|python)\n(.*?)```", re.S)
PRINTS = re.compile(r"^\s*# prints: (.*)$", re.M)
START_LIMIT_S = 900  # a cold machine builds first; the build has its own progress lines


def examples() -> list[tuple[str, str, list[str]]]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Examples\n", 1)[1].split("\n## ", 1)[0]
    out = []
    for lang, code in BLOCK.findall(section):
        out.append((lang, code, PRINTS.findall(code)))
    return out


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """`./switchyard run`, as the README says; stopped with Ctrl-C (SIGINT) at the end."""
    for port in (8080, 8100, 9901):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"127.0.0.1:{port} is taken: something else runs where "
                            "`./switchyard run` listens")
    log = Path(tmp_path_factory.mktemp("readme")) / "switchyard-run.log"
    out = open(log, "wb")
    proc = subprocess.Popen(["./switchyard", "run"], cwd=REPO, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    out.close()
    deadline = time.monotonic() + START_LIMIT_S
    while "Switchyard is up" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("`./switchyard run` did not come up:\n"
                        + log.read_text(errors="replace")[-4000:])
        time.sleep(1)
    yield log
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ctrl-C stops everything it started.
    for port in (8080, 8100):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_the_readme_has_examples_and_each_says_what_it_prints():
    found = examples()
    assert len(found) >= 6, "the README's Examples section lost its examples"
    for lang, code, expected in found:
        assert expected, f"a {lang} example says nothing about its output:\n{code}"


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example(running, index):
    lang, code, expected = examples()[index]
    if lang == "sh":
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    else:
        cmd = [str(REPO / ".venv/bin/python"), "-c", code]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}\n{code}\n{result.stderr[-2000:]}"
    for text in expected:
        assert text in result.stdout, (
            f"the README says this prints {text!r}; it printed:\n{result.stdout[-3000:]}\n"
            f"--- the example ---\n{code}")
