"""Slow clients on one instance: does a normal request wait for 100 stalled request bodies?

One chats_crud instance, 16 threads (as ``make dev`` runs it). ``GET /api/chats`` latency is
measured three ways: on an idle instance; while 100 connections have sent their headers and
stall their bodies (each waits for its 408 after ``REQUEST_BODY_TIMEOUT_SECONDS``); and
``POST /api/chats/create`` (a request with a body) under the same 100 stalls.

Target: the stalls add at most 100 ms to a normal request's p50 and p99.
(tests/test_hostile_input.py checks the functional part: answered while they wait, 408 each.)
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from dev.stack import LocalStack, free_port, function_command

THREADS = "16"
STALLED = 100
SAMPLES = 200
BODY_TIMEOUT_SECONDS = 30  # long enough that every stall stays open while we measure


def _latencies(url: str, token: str, body: bytes | None) -> list[float]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    samples = []
    for _ in range(SAMPLES):
        request = urllib.request.Request(url, data=body, headers=headers)
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            assert response.status == 200
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
        "max_ms": round(ordered[-1], 2),
    }


def _stall(port: int, token: str) -> list[socket.socket]:
    sockets = []
    for index in range(STALLED):
        conn = socket.create_connection(("127.0.0.1", port), timeout=60)
        conn.sendall(
            (
                f"POST /api/chats/create HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100\r\n\r\n"
                '{"title": "stalled ' + str(index)
            ).encode()
        )
        sockets.append(conn)
    time.sleep(0.5)  # every one is waiting for its body now
    return sockets


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        stack = LocalStack(Path(data_dir), free_port(), log_to_files=True)
        stack.start()
        port = free_port()
        process = subprocess.Popen(
            function_command("chats_crud", port),
            env={
                **stack.env,
                "PORT": str(port),
                "THREADS": THREADS,
                "REQUEST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            token = stack.signer.token("user_bench_hostile", lifetime_seconds=3600)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    _latencies(base + "/api/chats", token, None)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            idle = _summary(_latencies(base + "/api/chats", token, None))
            stalled = _stall(port, token)
            try:
                under_stall = _summary(_latencies(base + "/api/chats", token, None))
                create = _summary(
                    _latencies(base + "/api/chats/create", token, b'{"title": "normal"}')
                )
            finally:
                for conn in stalled:
                    conn.close()
            added_p50 = round(under_stall["p50_ms"] - idle["p50_ms"], 2)
            added_p99 = round(under_stall["p99_ms"] - idle["p99_ms"], 2)
            result = {
                "idle GET /api/chats": idle,
                f"GET /api/chats with {STALLED} stalled bodies": under_stall,
                f"POST /api/chats/create with {STALLED} stalled bodies": create,
                "added_p50_ms": added_p50,
                "added_p99_ms": added_p99,
                "target_met": added_p50 <= 100 and added_p99 <= 100,
            }
        finally:
            process.terminate()
            process.wait(timeout=10)
            stack.stop()
    for name, value in result.items():
        print(f"hostile: {name}: {value}")
    return result
