"""A small closed-loop HTTP load generator: keep-alive connections, latencies per request.

Clients run in separate processes (threads within each) so the generator's own GIL does not
cap the rate it can offer; on a 2-core machine the server under test gets one core to itself.
"""

from __future__ import annotations

import http.client
import multiprocessing
import statistics
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def row(self, name: str) -> str:
        return (
            f"{name:<34} {self.per_second:8.0f} req/s   p50 {self.p50_ms:6.2f} ms   "
            f"p99 {self.p99_ms:6.2f} ms   errors {self.errors}"
        )


def _worker(
    args: tuple[str, str, str, bytes | None, dict[str, str], int, float],
) -> tuple[list[float], int]:
    url, method, path, body, headers, threads, duration = args
    target = urlsplit(url)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def loop() -> None:
        nonlocal errors
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)
        mine: list[float] = []
        failed = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failed += 1
            except (OSError, http.client.HTTPException):
                failed += 1
                connection.close()
                connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors += failed

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies, errors


def run_load(
    url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    body: bytes | None = None,
    concurrency: int = 8,
    duration: float = 5.0,
    processes: int = 2,
) -> LoadResult:
    """Offer ``concurrency`` back-to-back request loops for ``duration`` seconds."""
    per_process = max(1, concurrency // processes)
    job = (url, method, path, body, headers, per_process, duration)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_worker, [job] * processes)
    elapsed = time.perf_counter() - started
    latencies = sorted(latency for part, _ in results for latency in part)
    errors = sum(failed for _, failed in results)
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=min(elapsed, duration) if latencies else elapsed,
        p50_ms=statistics.median(latencies) * 1000 if latencies else float("nan"),
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan"),
    )
