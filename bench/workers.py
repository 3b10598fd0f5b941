"""One chat_stream instance with WORKERS=1 vs WORKERS=2 (one gunicorn process per vCPU).

Rounds interleaved (1, 2, 1, 2...), each on a fresh instance, the same loads:

* 200 streams x 15 chunks/s (Gemini's real pace) and 200 x 50 chunks/s for 5 s: the latency
  each chunk gains between the stand-in and the client, and the instance's CPU per chunk;
* 50 turns started at once (the model sending 50 chunks/s, so its first chunk comes 20 ms
  after the request): each turn's time from request to its first chunk.

Targets (issue 17): 200 x 15/s p99 <= 50 ms, 200 x 50/s p99 <= 150 ms, burst first chunk
p50 <= 100 ms. The load generator, the stand-in and PostgreSQL share the machine's two cores
with the instance, so a second worker process competes with them for the second core.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.chat_stream import percentile, stream_load
from bench.harness import stack_with_model

ROUNDS = 2
LOADS = [("200x15", 200, 15, 5.0), ("200x50", 200, 50, 5.0), ("burst50", 50, 50, 1.0)]
WORKER_COUNTS = ("1", "2")


def run() -> dict[str, Any]:
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
        workers: {name: [] for name, *_ in LOADS} for workers in WORKER_COUNTS
    }
    with stack_with_model() as (stack, control):
        # One user per stream, as an instance's streams are in production.
        tokens = [
            stack.signer.token(f"user_bench_workers_{n}", lifetime_seconds=7200)
            for n in range(max(streams for _, streams, _, _ in LOADS))
        ]
        for _ in range(ROUNDS):
            for name, streams, rate, seconds in LOADS:
                for workers in WORKER_COUNTS:
                    load = stream_load(
                        stack.env,
                        tokens,
                        control,
                        streams,
                        rate,
                        overrides={"WORKERS": workers},
                        seconds=seconds,
                    )
                    rounds[workers][name].append(load)

    def median(values: list[Any]) -> float:
        return statistics.median(value for value in values if value is not None)

    results: dict[str, Any] = {}
    print("chat_stream, WORKERS=1 vs 2 (median of rounds; rounds interleaved)")
    for name, *_ in LOADS:
        for workers in WORKER_COUNTS:
            loads = rounds[workers][name]
            row = {
                "added_latency_p50_ms": median([x["added_latency_p50_ms"] for x in loads]),
                "added_latency_p99_ms": median([x["added_latency_p99_ms"] for x in loads]),
                "rounds_p99_ms": [x["added_latency_p99_ms"] for x in loads],
                "first_chunk_p50_ms": median([x["first_chunk_p50_ms"] for x in loads]),
                "first_chunk_p99_ms": median([x["first_chunk_p99_ms"] for x in loads]),
                "cpu_us_per_chunk": median([x["cpu_us_per_chunk"] for x in loads]),
                "errors": sum(x["errors"] for x in loads),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in loads),
            }
            results[f"{name}_workers_{workers}"] = row
            rounds_p99 = ", ".join(f"{value:.0f}" for value in row["rounds_p99_ms"])
            print(
                f"  {name:>8} WORKERS={workers}: added latency p50 "
                f"{row['added_latency_p50_ms']:.1f} ms p99 {row['added_latency_p99_ms']:.1f} ms "
                f"(rounds {rounds_p99}); first chunk p50 {row['first_chunk_p50_ms']:.0f} ms "
                f"p99 {row['first_chunk_p99_ms']:.0f} ms; CPU {row['cpu_us_per_chunk']:.0f} "
                f"µs/chunk; errors {row['errors']}; peak RSS {row['peak_rss_mb']:.0f} MB"
            )
    print("  targets: 200x15 p99 <= 50 ms; 200x50 p99 <= 150 ms; burst50 first chunk p50 <= 100 ms")
    return results


BURST_ROUNDS = 3


def turn_phases(log_path: Path) -> dict[str, list[float]]:
    """Each burst turn's phases from its ``chat turn`` line: request received -> model call
    (``to_model_ms``: authentication, the new user's row, the turn's statement), model call ->
    first model chunk (``model_ttft_ms``: the model client, the stand-in's 20 ms), request
    received -> first chunk written (``ttft_ms``)."""
    phases: dict[str, list[float]] = {"to_model_ms": [], "model_ttft_ms": [], "ttft_ms": []}
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "chat_turn" and entry.get("outcome") == "ok":
                for name, values in phases.items():
                    if name in entry:
                        values.append(float(entry[name]))
    return phases


def run_burst() -> dict[str, Any]:
    """Only the burst (``python -m bench burst``): 50 turns at once, one brand-new user each,
    WORKERS=1 and 2 interleaved, with each turn's phases from the instance's log."""
    results: dict[str, Any] = {}
    with stack_with_model() as (stack, control), tempfile.TemporaryDirectory() as logs:
        rounds: dict[str, list[dict[str, Any]]] = {workers: [] for workers in WORKER_COUNTS}
        for round_index in range(BURST_ROUNDS):
            for workers in WORKER_COUNTS:
                # Brand-new users every round: their first request creates their row.
                tokens = [
                    stack.signer.token(
                        f"user_burst_{round_index}_{workers}_{n}", lifetime_seconds=7200
                    )
                    for n in range(50)
                ]
                log_path = Path(logs) / f"burst-{round_index}-{workers}.log"
                load = stream_load(
                    stack.env,
                    tokens,
                    control,
                    50,
                    50,
                    overrides={"WORKERS": workers},
                    seconds=1.0,
                    log_path=log_path,
                )
                load["phases"] = turn_phases(log_path)
                rounds[workers].append(load)
    print("chat_stream, 50 turns at once (one new user each; median of rounds, interleaved)")
    for workers in WORKER_COUNTS:
        loads = rounds[workers]
        phases: dict[str, list[float]] = {}
        for load in loads:
            for name, values in load["phases"].items():
                phases.setdefault(name, []).extend(values)
        row = {
            "first_chunk_p50_ms": statistics.median(x["first_chunk_p50_ms"] for x in loads),
            "rounds_first_chunk_p50_ms": [x["first_chunk_p50_ms"] for x in loads],
            "first_chunk_p99_ms": statistics.median(x["first_chunk_p99_ms"] for x in loads),
            "errors": sum(x["errors"] for x in loads),
            # The instance's CPU per turn, its 1 s of 50 chunks included: steadier than the
            # latencies on a shared machine.
            "cpu_ms_per_turn": statistics.median(
                x["cpu_us_per_chunk"] * x["chunks"] / 1000 / 50 for x in loads
            ),
        }
        for name, values in phases.items():
            if values:
                row[f"{name}_p50"] = statistics.median(values)
                row[f"{name}_p90"] = percentile(values, 0.9)
        results[f"burst50_workers_{workers}"] = row
        rounds_text = ", ".join(f"{value:.0f}" for value in row["rounds_first_chunk_p50_ms"])
        phase_text = "; ".join(
            f"{name} p50 {row[f'{name}_p50']:.0f} p90 {row[f'{name}_p90']:.0f}"
            for name in phases
            if f"{name}_p50" in row
        )
        print(
            f"  WORKERS={workers}: first chunk p50 {row['first_chunk_p50_ms']:.0f} ms "
            f"(rounds {rounds_text}), p99 {row['first_chunk_p99_ms']:.0f} ms; errors "
            f"{row['errors']}; instance CPU per turn {row['cpu_ms_per_turn']:.1f} ms; in the "
            f"instance: {phase_text}"
        )
    print("  target: first chunk p50 <= 100 ms")
    return results
