"""``GET /api/chats``: chats_crud against the original backend's stack, same load, same run.

The original backend (FastAPI + asyncpg) is not kept here; bench/baseline_app.py is a minimal
list endpoint in its stack over the same PostgreSQL and schema (token verified, one query,
FastAPI's JSON), run by uvicorn with uvloop and httptools from its own virtualenv
(.venv-baseline, tools/requirements-baseline.txt; ``make bench`` installs it).

Both serve the same user with 50 chats to the same load: 8 keep-alive clients in 2 processes
(bench/load.py) for ``SECONDS`` each, rounds interleaved (ours, baseline, ours, ...) so that
the machine's other load falls on both alike. Each is one process: chats_crud as Terraform
deploys it (1 vCPU: WORKERS=1, THREADS=40), the baseline as ``uvicorn app`` runs.

Also each server's CPU time per request (user + system, from /proc, over each round): the
measure other load on the machine moves least, and what bounds a one-process server's
throughput on a core of its own.

Also the serving floor: the same gunicorn worker and pipeline (functions-framework, our
``DirectApp``, CORS, the access log line) with handlers that answer ``[]`` without a token
check or a query (bench/request_path.py's function, here under load). Its CPU per request is
what chats_crud spends before and after its own work: the part no handler change can cut.

And chats_crud under functions-framework's other server (``asgi``: its ``--asgi`` mode, gunicorn
with uvicorn's worker, uvloop and httptools, around the same module and Api; see
bench/asgi_serving.py): what changing the server, not the handlers, would save.

Targets (issue 17): chats_crud >= 2x the baseline's throughput, <= 0.5x its p99.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.chat_stream import process_cpu_seconds
from bench.chats_crud import THREADS, start_instance
from bench.load import LoadResult, run_load
from bench.request_path import FUNCTION_SOURCE
from dev.stack import LocalStack, free_port, function_command

ROOT = Path(__file__).resolve().parent.parent
BASELINE_PYTHON = ROOT / ".venv-baseline" / "bin" / "python"
ROUNDS = 5
SECONDS = 4.0
CHATS = 50


def start_baseline(env: dict[str, str], token: str) -> tuple[subprocess.Popen[bytes], str]:
    if not BASELINE_PYTHON.exists():
        sys.exit(
            "the baseline's virtualenv is missing: make bench installs it "
            "(python3 -m venv .venv-baseline && "
            ".venv-baseline/bin/pip install -r tools/requirements-baseline.txt)"
        )
    port = free_port()
    process = subprocess.Popen(
        [
            str(BASELINE_PYTHON),
            "-m",
            "uvicorn",
            "bench.baseline_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={
            "PATH": env.get("PATH", ""),
            "DATABASE_URL": env["DATABASE_URL"],
            "CLERK_JWKS_URL": env["CLERK_JWKS_URL"],
            "CLERK_ISSUER": env["CLERK_ISSUER"],
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, listing_all_chats(process, port, token, "the baseline")


def start_floor(env: dict[str, str], folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """chats_crud's serving path around handlers that do nothing (see the module's doc)."""
    source = folder / "floor.py"
    source.write_text(
        FUNCTION_SOURCE.format(flask_context=False).replace("def target(", "def chats_crud(")
    )
    port = free_port()
    process = subprocess.Popen(
        function_command("chats_crud", port, source),
        cwd=ROOT,
        env={**env, "PORT": str(port), "THREADS": THREADS, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/api/chats", timeout=5) as response:
                    if response.read() != b"[]":
                        raise RuntimeError("the floor function answered something else")
                    return process, url
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the floor function did not start") from None
                time.sleep(0.05)
    except BaseException:
        stop(process)
        raise


def start_asgi(env: dict[str, str], token: str) -> tuple[subprocess.Popen[bytes], str]:
    """chats_crud's module and Api under functions-framework's ASGI server (asgi_serving.py)."""
    port = free_port()
    process = subprocess.Popen(
        [*function_command("chats_crud", port, ROOT / "bench" / "asgi_serving.py"), "--asgi"],
        cwd=ROOT,
        env={**env, "PORT": str(port), "THREADS": THREADS, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, listing_all_chats(process, port, token, "chats_crud under the ASGI server")


def listing_all_chats(process: subprocess.Popen[bytes], port: int, token: str, what: str) -> str:
    """The server's URL once it lists the user's ``CHATS`` chats; stopped if it does not."""
    url = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        url + "/api/chats", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    listed = json.load(response)
                    if len(listed) != CHATS:
                        raise RuntimeError(f"{what} listed {len(listed)} chats, not {CHATS}")
                    return url
            except urllib.error.HTTPError as error:
                raise RuntimeError(f"{what} answered {error.code}") from error
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start") from None
                time.sleep(0.05)
    except BaseException:
        stop(process)
        raise


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait()


CONTENDERS = ("raven", "asgi", "baseline", "floor")


def run() -> dict[str, Any]:
    per_round: dict[str, list[LoadResult]] = {name: [] for name in CONTENDERS}
    cpu_per_request: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as data_dir:
        stack = LocalStack(Path(data_dir), free_port(), log_to_files=True)
        stack.start()
        try:
            token = stack.signer.token("user_bench_baseline", lifetime_seconds=3600)
            auth = {"Authorization": f"Bearer {token}"}
            ours, our_url, _ = start_instance(stack.env, token)
            try:
                for n in range(CHATS):
                    request = urllib.request.Request(
                        our_url + "/api/chats/create",
                        data=json.dumps({"title": f"Chat {n}"}).encode(),
                        headers={**auth, "Content-Type": "application/json"},
                    )
                    urllib.request.urlopen(request).read()
                with contextlib.ExitStack() as servers:  # each stopped, whatever fails
                    baseline, baseline_url = start_baseline(stack.env, token)
                    servers.callback(stop, baseline)
                    floor, floor_url = start_floor(stack.env, Path(data_dir))
                    servers.callback(stop, floor)
                    asgi, asgi_url = start_asgi(stack.env, token)
                    servers.callback(stop, asgi)
                    urls = {
                        "raven": our_url,
                        "asgi": asgi_url,
                        "baseline": baseline_url,
                        "floor": floor_url,
                    }
                    pids = {
                        "raven": ours.pid,
                        "asgi": asgi.pid,
                        "baseline": baseline.pid,
                        "floor": floor.pid,
                    }
                    for url in urls.values():  # warm-up: statements prepared, pools filled
                        run_load(url, "GET", "/api/chats", headers=auth, duration=1.0)
                    for _ in range(ROUNDS):
                        for name, url in urls.items():
                            cpu_before = process_cpu_seconds(pids[name])
                            load = run_load(
                                url, "GET", "/api/chats", headers=auth, duration=SECONDS
                            )
                            cpu = process_cpu_seconds(pids[name]) - cpu_before
                            per_round[name].append(load)
                            cpu_per_request[name].append(cpu * 1e6 / max(load.requests, 1))
            finally:
                stop(ours)
        finally:
            stack.stop()

    def summary(name: str) -> dict[str, Any]:
        loads = per_round[name]
        return {
            "per_second": statistics.median(load.per_second for load in loads),
            "p50_ms": statistics.median(load.p50_ms for load in loads),
            "p99_ms": statistics.median(load.p99_ms for load in loads),
            "errors": sum(load.errors for load in loads),
            "cpu_us_per_request": statistics.median(cpu_per_request[name]),
            "rounds_cpu_us_per_request": cpu_per_request[name],
            "rounds_per_second": [load.per_second for load in loads],
            "rounds_p99_ms": [load.p99_ms for load in loads],
        }

    raven_row, baseline_row, floor_row = summary("raven"), summary("baseline"), summary("floor")
    asgi_row = summary("asgi")
    throughput_ratios = [
        ours.per_second / theirs.per_second
        for ours, theirs in zip(per_round["raven"], per_round["baseline"], strict=True)
    ]
    p99_ratios = [
        ours.p99_ms / theirs.p99_ms
        for ours, theirs in zip(per_round["raven"], per_round["baseline"], strict=True)
    ]
    results = {
        "raven": raven_row,
        "baseline": baseline_row,
        "throughput_ratio": statistics.median(throughput_ratios),
        "p99_ratio": statistics.median(p99_ratios),
        "floor": floor_row,
        "asgi": asgi_row,
        "cpu_ratio": raven_row["cpu_us_per_request"] / baseline_row["cpu_us_per_request"],
        "asgi_cpu_ratio": asgi_row["cpu_us_per_request"] / baseline_row["cpu_us_per_request"],
        # Per round: the ASGI server's CPU per request over gunicorn's threaded worker's.
        "rounds_asgi_over_gthread_cpu": [
            under_asgi / under_gthread
            for under_asgi, under_gthread in zip(
                cpu_per_request["asgi"], cpu_per_request["raven"], strict=True
            )
        ],
        "rounds_asgi_throughput_ratio": [
            under_asgi.per_second / theirs.per_second
            for under_asgi, theirs in zip(per_round["asgi"], per_round["baseline"], strict=True)
        ],
        "rounds_throughput_ratio": throughput_ratios,
        "rounds_p99_ratio": p99_ratios,
    }
    print(f"GET /api/chats, {CHATS} chats, 8 keep-alive clients, {ROUNDS} interleaved rounds")
    rows = (
        ("chats_crud", raven_row),
        ("chats_crud, ASGI", asgi_row),
        ("FastAPI+asyncpg", baseline_row),
        ("floor", floor_row),
    )
    for name, row in rows:
        rounds = ", ".join(f"{value:.0f}" for value in row["rounds_per_second"])
        print(
            f"  {name:>16}: {row['per_second']:.0f} req/s (rounds {rounds}), p50 "
            f"{row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, errors {row['errors']}; "
            f"server CPU {row['cpu_us_per_request']:.0f} µs per request"
        )
    print(
        f"  ratio: throughput {results['throughput_ratio']:.2f}x (rounds "
        f"{', '.join(f'{r:.2f}' for r in throughput_ratios)}), p99 {results['p99_ratio']:.2f}x "
        f"(rounds {', '.join(f'{r:.2f}' for r in p99_ratios)}); targets >= 2x, <= 0.5x"
    )
    print(
        f"  server CPU per request, chats_crud / baseline: {results['cpu_ratio']:.2f} (what "
        "bounds throughput on a core of its own, and the measure least moved by other load)"
    )
    print(
        f"  serving floor (same server and pipeline, handlers answering [] with no token check "
        f"nor query): {floor_row['cpu_us_per_request']:.0f} µs, "
        f"{floor_row['cpu_us_per_request'] / raven_row['cpu_us_per_request']:.0%} of chats_crud's"
    )
    print(
        "  chats_crud under functions-framework's ASGI server: CPU per request "
        f"{results['asgi_cpu_ratio']:.2f}x the baseline's, "
        f"{', '.join(f'{r:.2f}' for r in results['rounds_asgi_over_gthread_cpu'])}x gunicorn "
        "gthread's (rounds); throughput "
        f"{', '.join(f'{r:.2f}' for r in results['rounds_asgi_throughput_ratio'])}x the baseline's"
    )
    return results
