"""chats_crud on one instance: cold start, list throughput, create throughput.

Targets on the 2-core machine: cold start (process start to first answered request) at most
0.9 s; at least 500 ``GET /api/chats`` per second for a user with 50 chats.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.load import run_load
from dev.stack import LocalStack, free_port, function_command

THREADS = "40"  # the instance's concurrency, as Terraform deploys it (terraform/functions.tf)


def start_instance(env: dict[str, str], token: str) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start one chats_crud instance; returns it, its URL and its cold start in seconds."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        function_command("chats_crud", port),
        env={**env, "PORT": str(port), "THREADS": THREADS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        url + "/api/chats", headers={"Authorization": f"Bearer {token}"}
    )
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
                break
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"instance answered {error.code}") from error
        except OSError:
            time.sleep(0.005)
    return process, url, time.perf_counter() - started


def run(duration: float = 5.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        stack = LocalStack(Path(data_dir), free_port(), log_to_files=True)
        stack.start()
        try:
            token = stack.signer.token("user_bench", lifetime_seconds=3600)
            auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

            cold_starts = []
            for _ in range(5):
                process, url, seconds = start_instance(stack.env, token)
                cold_starts.append(seconds)
                process.terminate()
                process.wait()

            process, url, _ = start_instance(stack.env, token)
            try:
                for n in range(50):
                    body = json.dumps({"title": f"Chat {n}"}).encode()
                    request = urllib.request.Request(
                        url + "/api/chats/create", data=body, headers=auth
                    )
                    urllib.request.urlopen(request).read()
                listed = json.load(
                    urllib.request.urlopen(urllib.request.Request(url + "/api/chats", headers=auth))
                )
                assert len(listed) == 50
                run_load(url, "GET", "/api/chats", headers=auth, duration=1.0)  # warm-up
                listing = run_load(url, "GET", "/api/chats", headers=auth, duration=duration)
                creating = run_load(
                    url,
                    "POST",
                    "/api/chats/create",
                    headers=auth,
                    body=b'{"title": "bench"}',
                    duration=duration,
                )
            finally:
                process.terminate()
                process.wait()
        finally:
            stack.stop()

    results: dict[str, Any] = {
        "cold_start_s": {
            "median": statistics.median(cold_starts),
            "max": max(cold_starts),
            "runs": cold_starts,
        },
        "list_chats_50": listing.__dict__ | {"per_second": listing.per_second},
        "create_chat": creating.__dict__ | {"per_second": creating.per_second},
        "threads": int(THREADS),
    }
    print(f"chats_crud (one instance, THREADS={THREADS})")
    print(
        f"  cold start: median {results['cold_start_s']['median']:.3f} s, "
        f"max {results['cold_start_s']['max']:.3f} s  (target <= 0.9 s)"
    )
    print("  " + listing.row("GET /api/chats (50 chats)") + "  (target >= 500 req/s)")
    print("  " + creating.row("POST /api/chats/create"))
    return results
