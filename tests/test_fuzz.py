"""schemathesis against the running stack: every check, a fixed seed, thousands of requests.

schemathesis runs from its own virtualenv (``.venv-schemathesis``, pinned in
``tools/requirements-schemathesis.txt``; ``make test`` creates it), as a command, against the
OpenAPI the router serves at ``/dev/openapi.json``, authenticated with a dev token. Its four
phases: the schema's examples, coverage of every boundary the schema states, random fuzzing
(valid and invalid input), and stateful sequences that follow the OpenAPI links
(create -> get -> rename -> delete). ``tools/schemathesis.toml`` lists the few places where a
status the checks would not expect is right, and why.

The bar is zero failures of any check: no 5xx, no response that breaks its schema, no
undocumented status, no valid request refused and no invalid one accepted.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from dev.bundle import REPO_ROOT
from dev.stack import LocalStack

SCHEMATHESIS = REPO_ROOT / ".venv-schemathesis" / "bin" / "st"
CONFIG = REPO_ROOT / "tools" / "schemathesis.toml"
SEED = 20261126
EXAMPLES_PER_OPERATION = 200  # about 2,000-2,400 requests, ~2.5 minutes on a loaded 2-core machine
MINIMUM_REQUESTS = 2000
CHAT_PATH = re.compile(r"/api/chats/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def har_entries(report_dir: Path) -> list[dict[str, Any]]:
    (har,) = report_dir.glob("har-*.json")
    return list(json.loads(har.read_text())["log"]["entries"])


@pytest.mark.slow
def test_schemathesis_finds_nothing(stack: LocalStack, tmp_path: Path) -> None:
    assert SCHEMATHESIS.exists(), "schemathesis is missing: `make test` installs it"
    token = requests.post(
        stack.base_url + "/dev/token",
        json={"sub": "user_fuzz_" + uuid.uuid4().hex[:12]},
        timeout=30,
    ).json()["token"]
    report_dir = tmp_path / "schemathesis"
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{stack.base_url}/dev/openapi.json",
        "--url",
        stack.base_url,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        str(SEED),
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--generation-database",
        "none",  # every run starts from the seed alone, not from examples saved by earlier runs
        "--request-timeout",
        "60",
        "--no-color",
        "--report",
        "json,har",
        "--report-dir",
        str(report_dir),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    output = run.stdout + run.stderr
    (report_file,) = report_dir.glob("json-*.json")
    report = json.loads(report_file.read_text())
    assert report["failures"] == [], output[-6000:]
    assert report["errors"] == [], output[-6000:]
    assert run.returncode == 0, output[-6000:]
    assert all(phase["status"] != "failure" for phase in report["phases"].values()), report
    assert report["phases"]["stateful"]["status"] == "success", report["phases"]

    entries = har_entries(report_dir)
    assert len(entries) >= MINIMUM_REQUESTS, len(entries)
    statuses = collections.Counter(entry["response"]["status"] for entry in entries)
    assert not [status for status in statuses if status >= 500], statuses
    for entry in entries:
        assert entry["response"]["content"].get("mimeType", "").startswith(
            ("application/json", "text/event-stream", "application/x-ndjson")
        ) or entry["response"]["status"] in (204,), entry
    # The stateful phase followed the links: chats it created were read, renamed and deleted.
    followed = collections.Counter(
        entry["request"]["method"]
        for entry in entries
        if CHAT_PATH.search(entry["request"]["url"].split("?")[0])
        and entry["response"]["status"] == 200
    )
    assert followed["GET"] and followed["PATCH"] and followed["DELETE"], followed
