"""Where the CPU goes: py-spy samples of a chat_stream instance streaming and of chats_crud listing.

Not a target, a map: it tells which costs are worth cutting (bench/README.md, "Profiles").

* chat_stream: one instance, ``STREAMS`` streams x ``RATE`` chunks/s from the Gemini stand-in,
  its worker process sampled by ``py-spy record --format raw --nonblocking``;
  samples of threads that wait (their leaf frame is a blocking call, :data:`WAITING`) are left
  out: py-spy's own idle detection (and its ``--gil``, on this Python) proved unreliable here;
* chats_crud: one instance answering ``GET /api/chats`` to 8 keep-alive clients, sampled the
  same way.

Each profile is printed as the functions with the most samples, self (the leaf frame) and
inclusive (anywhere on the stack), grouped by module, and the raw collapsed stacks are saved
under bench/results/ for a flame graph (``flamegraph.pl`` or speedscope read them).
``py-spy`` is in requirements-dev.txt; it needs ptrace rights over the instance (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import chat_stream as stream_bench
from bench import chats_crud as crud_bench
from bench.harness import stack_with_model
from bench.load import run_load
from dev.gemini_standin import StandinControl
from dev.stack import LocalStack

STREAMS, RATE = 100, 50
SECONDS = 6
TOP = 25
# Leaf frames of a thread that waits (py-spy's own idle detection misses these when it samples
# without pausing the process): a sample that ends in one is a thread blocked, not working.
WAITING = frozenset(
    {
        "Condition.wait",
        "_worker",  # concurrent.futures' idle worker, blocked on its queue
        "SocketIO.readinto",
        "_Reader.recv",  # a request thread waiting for the model's next bytes (shared.sse_client)
        "EpollSelector.select",
        "Semaphore.acquire",
        "BoundedSemaphore.acquire",
        "Event.wait",
        "Thread.join",
        "_wait_for_tstate_lock",
        "sleep",
    }
)
RESULTS = Path(__file__).parent / "results"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -r requirements-dev.txt")
    return found


def worker_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out``."""
    return subprocess.Popen(
        [
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise(raw: Path) -> dict[str, Any]:
    """Self and inclusive sample shares per function, from py-spy's collapsed stacks."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_module: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";") if not frame.startswith("process ")]
        frames = [frame for frame in frames if not frame.startswith("thread ")]
        if not frames or frames[-1].split(":", 1)[1] in WAITING:
            waiting += count
            continue
        total += count
        self_counts[frames[-1]] += count
        by_module[_module(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100 * n / max(total, 1)) for name, n in counter.most_common(TOP)]

    return {
        "samples": total,
        "waiting_samples": waiting,
        "self_percent": share(self_counts),
        "inclusive_percent": share(inclusive),
        "self_by_module_percent": share(by_module),
    }


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``module.py:func``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "python3.11" in parts:
        parts = ("stdlib", *parts[parts.index("python3.11") + 1 :])
    else:
        parts = parts[-2:]
    return f"{'/'.join(parts)}:{name}"


def _module(short: str) -> str:
    path = short.split(":", 1)[0]
    head = path.split("/")[0]
    if head in ("stdlib", "shared", "functions"):
        return "/".join(path.split("/")[:2])
    return head


def profile_streams(stack: LocalStack, control: StandinControl, token: str) -> dict[str, Any]:
    """Sample the worker while it carries the stream load."""
    result: dict[str, Any] = {}
    out = RESULTS / f"profile-chat_stream-{time.strftime('%Y%m%d-%H%M%S')}.txt"

    @contextlib.contextmanager
    def sampled(pid: int) -> Iterator[dict[str, float]]:
        # Around the load: sample from 2 s into it, for 3 s.
        workers = worker_pids(pid)
        recorder: list[subprocess.Popen[bytes]] = []
        timer = threading.Timer(
            2.0, lambda: recorder.append(record(workers[0] if workers else pid, 3, out))
        )
        timer.start()
        yield {}
        timer.join()
        recorder[0].wait(timeout=60)

    load = stream_bench.stream_load(stack.env, token, control, STREAMS, RATE, probe=sampled)
    result["load"] = load
    result["profile"] = summarise(out)
    result["raw"] = str(out)
    return result


def profile_list(stack: LocalStack, token: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    process, url, _ = crud_bench.start_instance(stack.env, token)
    out = RESULTS / f"profile-chats_crud-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    try:
        for n in range(50):
            body = json.dumps({"title": f"Chat {n}"}).encode()
            request = urllib.request.Request(url + "/api/chats/create", data=body, headers=auth)
            urllib.request.urlopen(request).read()
        run_load(url, "GET", "/api/chats", headers=auth, duration=1.0)
        workers = worker_pids(process.pid)
        starter = threading.Timer(
            0.5, lambda: recorder.append(record(workers[0], SECONDS - 1, out))
        )
        recorder: list[subprocess.Popen[bytes]] = []
        starter.start()
        load = run_load(url, "GET", "/api/chats", headers=auth, duration=SECONDS)
        starter.join()
        for each in recorder:
            each.wait(timeout=60)
    finally:
        process.terminate()
        process.wait()
    return {"load": load.__dict__, "profile": summarise(out), "raw": str(out)}


def _print(title: str, profile: dict[str, Any]) -> None:
    print(f"  {title}: {profile['samples']} samples of working threads")
    print("    self, by module:")
    for name, percent in profile["self_by_module_percent"][:12]:
        print(f"      {percent:5.1f}%  {name}")
    print("    self, by function:")
    for name, percent in profile["self_percent"][:15]:
        print(f"      {percent:5.1f}%  {name}")
    print("    inclusive:")
    for name, percent in profile["inclusive_percent"][:TOP]:
        print(f"      {percent:5.1f}%  {name}")


def run() -> dict[str, Any]:
    py_spy()
    RESULTS.mkdir(exist_ok=True)
    with stack_with_model() as (stack, control):
        token = stack.signer.token("user_bench_profile", lifetime_seconds=7200)
        streams = profile_streams(stack, control, token)
        listing = profile_list(stack, token)
    print("profile (py-spy, samples of working threads)")
    load = streams["load"]
    print(
        f"  chat_stream {STREAMS} streams x {RATE} chunks/s: {load['cpu_us_per_chunk']:.0f} µs "
        f"CPU per chunk, p99 {load['added_latency_p99_ms']:.0f} ms; raw stacks {streams['raw']}"
    )
    _print("chat_stream worker", streams["profile"])
    print(f"  chats_crud GET /api/chats: {listing['load']['requests']} requests")
    _print("chats_crud worker", listing["profile"])
    return {"chat_stream": streams, "chats_crud": listing}
