"""What most benchmarks start from: the whole local stack in a throwaway data folder."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack, free_port


@contextlib.contextmanager
def stack_with_model() -> Iterator[tuple[LocalStack, StandinControl]]:
    """The local stack (functions' logs to files, so the terminal stays the bench's) and the
    control of its Gemini stand-in; stopped, its data folder deleted, when the block ends."""
    with tempfile.TemporaryDirectory() as data_dir:
        stack = LocalStack(Path(data_dir), free_port(), log_to_files=True)
        stack.start()
        try:
            assert stack.gemini_standin_url is not None
            yield stack, StandinControl(stack.gemini_standin_url)
        finally:
            stack.stop()


def best_cpu_seconds_per_call(call: Callable[[], object], calls: int, warmup: int) -> float:
    """CPU seconds one ``call()`` takes: the best of 5 timed runs of ``calls`` calls each,
    after ``warmup`` untimed ones (process time, so other processes' load counts less)."""
    for _ in range(warmup):
        call()
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls):
            call()
        best = min(best, time.process_time() - started)
    return best / calls


def instance_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's interleaved stream-load rounds in one row: the medians of CPU per chunk
    and added latency, every round's CPU (their spread is the noise), the errors summed."""

    def median(key: str) -> float:
        return statistics.median(entry[key] for entry in rounds)

    return {
        "cpu_us_per_chunk": median("cpu_us_per_chunk"),
        "rounds_cpu_us_per_chunk": [entry["cpu_us_per_chunk"] for entry in rounds],
        "added_latency_p50_ms": median("added_latency_p50_ms"),
        "added_latency_p99_ms": median("added_latency_p99_ms"),
        "errors": sum(entry["errors"] for entry in rounds),
    }


def describe_instance_row(name: str, row: dict[str, Any], streams: int, rate: int) -> str:
    """The line a bench prints for an :func:`instance_rounds` row."""
    spread = ", ".join(f"{value:.0f}" for value in row["rounds_cpu_us_per_chunk"])
    return (
        f"  {name:>9}, {streams} streams x {rate} chunks/s: instance CPU "
        f"{row['cpu_us_per_chunk']:.0f} µs per chunk (rounds {spread}), added latency "
        f"p50 {row['added_latency_p50_ms']:.1f} ms p99 {row['added_latency_p99_ms']:.1f} ms, "
        f"errors {row['errors']}"
    )
