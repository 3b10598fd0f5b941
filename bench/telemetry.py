"""The per-turn event's cost: what one ``chat_turn`` line adds to a turn, and to cold starts.

(a) Per turn: the same turn's events (``start``, N text chunks, ``done``) passed through
    :meth:`shared.telemetry.TurnRecord.observe`, with the line formatted by the functions' own
    Cloud Logging formatter and written to a stream (/dev/null, so the terminal's speed does
    not count), against the bare events, in CPU time of the process, best of several repeats,
    so other load on the shared machine inflates neither.
    Target: < 0.2 ms per turn, for 1 and for 200 chunks.
(b) Import time: each function's ``main`` imported in a fresh process (bytecode compiled
    beforehand, as deployed), its CPU time measured, in this tree and in the base commit
    (``git merge-base HEAD main``, exported with ``git archive``), interleaved, median of
    several runs; and shared.telemetry's own (``python -X importtime``, wall time).
    Target: no function's import time grows (beyond run-to-run noise).
"""

from __future__ import annotations

import io
import logging
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from dev.bundle import REPO_ROOT, function_names
from dev.stack import read_env_file
from shared.log import CloudLoggingFormatter, lean_records
from shared.model_events import TextChunk
from shared.stream_events import DoneEvent, StartEvent, Usage
from shared.telemetry import TurnRecord

TURNS = 2_000
IMPORT_RUNS = 7


def _events(chunks: int) -> list[Any]:
    start = StartEvent(chat_id="c" * 36, message_id="m" * 36)
    done = DoneEvent(
        message_id="a" * 36,
        usage=Usage(input_tokens=812, output_tokens=240, total_tokens=1052),
        finish_reason="stop",
    )
    return [
        start,
        *[TextChunk("some forty to sixty characters of text") for _ in range(chunks)],
        done,
    ]


def per_turn_ms(chunks: int) -> dict[str, float]:
    """ms the event adds to one turn of ``chunks`` chunks (best of 7 repeats)."""
    lean_records()  # as configure_logging() does in every function
    telemetry = logging.getLogger("raven.telemetry")
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - closed below
    handler.setFormatter(CloudLoggingFormatter("raven-bench", "chat_stream"))
    telemetry.addHandler(handler)
    telemetry.propagate = False
    telemetry.setLevel(logging.INFO)
    events = _events(chunks)

    def bare() -> None:
        for _ in iter(events):
            pass

    def recorded() -> None:
        record = TurnRecord(0.0, "gemini-2.5-flash")
        record.chat = "c" * 36
        record.window_messages = 11
        for event in record.observe(iter(events), TextChunk):
            if type(event) is DoneEvent:
                record.model_finished(812, 240, "STOP")
                record.answer_stored()
        # observe wrote the line as the events ended (log() writes it exactly once)
        record.log()

    try:
        # CPU time of this process: what the event costs a turn on a core of its own, without
        # the waits for a core that other load on a shared machine adds to wall time.
        cpu = time.process_time
        base = min(timeit.repeat(bare, number=TURNS, repeat=9, timer=cpu)) / TURNS
        with_event = min(timeit.repeat(recorded, number=TURNS, repeat=9, timer=cpu)) / TURNS
    finally:
        telemetry.removeHandler(handler)
        handler.stream.close()
        telemetry.propagate = True
    return {
        "chunks": chunks,
        "bare_ms": round(base * 1e3, 4),
        "with_event_ms": round(with_event * 1e3, 4),
        "added_ms": round((with_event - base) * 1e3, 4),
    }


def _import_us(tree: Path, function: str, env: dict[str, str]) -> dict[str, int]:
    """CPU time (µs) to import the function's main, and shared.telemetry's cumulative import.

    CPU time of the importing process, not wall time: on a shared machine, waiting for a core
    would swamp a difference of a millisecond.
    """
    code = (
        "import sys, time; "
        f"sys.path[:0] = [{str(tree)!r}, {str(tree / 'functions' / function)!r}]; "
        "started = time.process_time(); import main; "
        "print(int((time.process_time() - started) * 1e6))"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    times = {"main": int(result.stdout.strip().splitlines()[-1])}
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*shared\.telemetry$", line)
        if match:
            times["shared.telemetry"] = int(match.group(2))
    return times


def _base_tree(into: Path) -> Path:
    base = subprocess.run(
        ["git", "merge-base", "HEAD", "main"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", base], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def import_times() -> dict[str, Any]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        **read_env_file(REPO_ROOT / ".env.example"),
        "DATABASE_URL": "postgresql://postgres@/postgres?host=/nonexistent",
        "CLERK_JWKS_URL": "http://127.0.0.1:9/jwks.json",  # never fetched at import
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        base = _base_tree(Path(folder) / "base")
        # Compiled once, as a deployed function's bytecode is, so only imports are timed.
        env["PYTHONPYCACHEPREFIX"] = str(Path(folder) / "pycache")
        for function in function_names():
            _import_us(base, function, env)
            _import_us(REPO_ROOT, function, env)
            samples: dict[str, list[int]] = {"base": [], "branch": [], "telemetry": []}
            for tree, key in [(base, "base"), (REPO_ROOT, "branch")] * IMPORT_RUNS:
                times = _import_us(tree, function, env)
                samples[key].append(times["main"])
                if key == "branch" and "shared.telemetry" in times:
                    samples["telemetry"].append(times["shared.telemetry"])
            results[function] = {
                "base_ms": round(statistics.median(samples["base"]) / 1e3, 1),
                "branch_ms": round(statistics.median(samples["branch"]) / 1e3, 1),
                "telemetry_ms": (
                    round(statistics.median(samples["telemetry"]) / 1e3, 2)
                    if samples["telemetry"]
                    else None
                ),
            }
            print(f"  import {function}: {results[function]}", flush=True)
    return results


def run() -> dict[str, Any]:
    print("telemetry: the per-turn event's cost")
    turns = [per_turn_ms(chunks) for chunks in (1, 50, 200)]
    for turn in turns:
        print(
            f"  turn of {turn['chunks']} chunks: +{turn['added_ms']} ms "
            f"({turn['bare_ms']} -> {turn['with_event_ms']} ms; target < 0.2 ms)",
            flush=True,
        )
    return {"per_turn": turns, "import": import_times()}
