"""Where a streamed chunk's CPU goes in chat_stream: user vs system time, syscalls, switches.

One fresh chat_stream instance (one worker), ``STREAMS`` streams x ``RATE`` chunks/s for 5 s
from the Gemini stand-in (``stream_framing``'s load), SSE. Over the load, per chunk delivered:

* the worker's user and system CPU (``/proc/<pid>/stat``);
* its context switches, voluntary (the thread blocked: a ``poll``, a ``recv``, a GIL or lock
  wait) and not (preempted), summed over its threads (``/proc/<pid>/task/*/status``);
* its syscalls by name, counted by ``perf stat`` on the kernel's syscall tracepoints (every
  thread of the worker, new ones included; in-kernel counting, so unlike ``strace`` it does
  not slow the process down and change how chunks batch).

``perf`` needs the rights to read tracepoints (root, or ``kernel.perf_event_paranoid`` <= 1);
without it the syscall counts are left out. ``ROUNDS`` rounds, one fresh instance each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.chat_stream import stream_load
from bench.harness import stack_with_model
from shared.stream_framing import SSE_MEDIA_TYPE

ROUNDS = 3
STREAMS, RATE = 50, 50
# Turns of this long, and of this short: the difference is the chunks' own cost.
LONG_SECONDS, SHORT_SECONDS = 5.0, 1.0
# The syscalls a chunk's way through the worker makes (the rest is summed as "other").
SYSCALLS = (
    "futex",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_wait",
    "recvfrom",
    "read",
    "sendto",
    "write",
    "writev",
    "mprotect",
)


def worker_pid(pid: int) -> int:
    """gunicorn's (one) worker process of the instance ``pid``."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    workers = [int(child) for child in children.read_text().split()] if children.exists() else []
    return workers[0] if workers else pid


def thread_switches(pid: int) -> dict[int, tuple[int, int]]:
    """Each live thread's (voluntary, involuntary) context switches so far."""
    switches: dict[int, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        voluntary = involuntary = 0
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary = int(line.split()[1])
        except OSError:  # the thread ended meanwhile
            continue
        switches[int(task.name)] = (voluntary, involuntary)
    return switches


def perf_command(pid: int) -> list[str] | None:
    perf = shutil.which("perf")
    if perf is None:
        return None
    events = ["context-switches", "raw_syscalls:sys_enter"]
    events += [f"syscalls:sys_enter_{name}" for name in SYSCALLS]
    return [perf, "stat", "-x", ",", "-e", ",".join(events), "-p", str(pid)]


def parse_perf(text: str) -> dict[str, float]:
    """``perf stat -x ,``'s counts: ``value,unit,event,...`` lines."""
    counts: dict[str, float] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].replace(".", "").isdigit():
            continue
        event = fields[2]
        if event == "context-switches":
            counts["perf_switches"] = float(fields[0])
        elif event == "raw_syscalls:sys_enter":
            counts["syscalls"] = float(fields[0])
        elif event.startswith("syscalls:sys_enter_"):
            counts[f"sys_{event.removeprefix('syscalls:sys_enter_')}"] = float(fields[0])
    if "syscalls" in counts:
        named = sum(value for name, value in counts.items() if name.startswith("sys_"))
        counts["sys_other"] = counts["syscalls"] - named
    return counts


@contextlib.contextmanager
def kernel_counts(instance_pid: int) -> Iterator[dict[str, float]]:
    """Count the worker's switches and syscalls over the block (filled when it ends)."""
    pid = worker_pid(instance_pid)
    counts: dict[str, float] = {}
    command = perf_command(pid)
    perf = None
    if command is not None:
        perf = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        time.sleep(0.3)  # attached to every thread before the load starts
    before = thread_switches(pid)
    try:
        yield counts
    finally:
        after = thread_switches(pid)
        for tid, (voluntary, involuntary) in after.items():
            was_voluntary, was_involuntary = before.get(tid, (0, 0))
            counts["voluntary_switches"] = (
                counts.get("voluntary_switches", 0) + voluntary - was_voluntary
            )
            counts["involuntary_switches"] = (
                counts.get("involuntary_switches", 0) + involuntary - was_involuntary
            )
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            _, report = perf.communicate(timeout=30)
            counts.update(parse_perf(report))


def marginal(long: dict[str, Any], short: dict[str, Any]) -> dict[str, float]:
    """Per chunk, what the long load cost beyond the short one (the same turns, fewer chunks):
    a chunk's own cost, without its turn's start and end spread over it."""
    extra_chunks = max(long["chunks"] - short["chunks"], 1)
    return {
        key: (long[key] * long["chunks"] - short.get(key, 0.0) * short["chunks"]) / extra_chunks
        for key in long
        if key.endswith("_per_chunk")
    }


def _print(title: str, rounds: list[dict[str, float]]) -> dict[str, float]:
    medians = {key: statistics.median(entry.get(key, 0.0) for entry in rounds) for key in rounds[0]}
    spread = ", ".join(f"{entry['cpu_us_per_chunk']:.0f}" for entry in rounds)
    print(
        f"  {title}: CPU {medians['cpu_us_per_chunk']:.0f} µs (rounds {spread}), user "
        f"{medians['user_us_per_chunk']:.0f}, system {medians['system_us_per_chunk']:.0f}; "
        f"switches voluntary {medians['voluntary_switches_per_chunk']:.2f}, involuntary "
        f"{medians['involuntary_switches_per_chunk']:.2f}"
    )
    if "syscalls_per_chunk" in medians:
        named = sorted(
            (key for key in medians if key.startswith("sys_")), key=lambda k: -medians[k]
        )
        print(
            f"    syscalls {medians['syscalls_per_chunk']:.2f}: "
            + ", ".join(f"{key[4:-10]} {medians[key]:.2f}" for key in named if medians[key])
        )
    return medians


def run() -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    with stack_with_model() as (stack, control):
        token = stack.signer.token("user_bench_chunk_cost", lifetime_seconds=7200)
        for _ in range(ROUNDS):
            long, short = (
                stream_load(
                    stack.env,
                    token,
                    control,
                    STREAMS,
                    RATE,
                    SSE_MEDIA_TYPE,
                    seconds=seconds,
                    probe=kernel_counts,
                )
                for seconds in (LONG_SECONDS, SHORT_SECONDS)
            )
            rounds.append({"long": long, "short": short, "marginal": marginal(long, short)})
    results: dict[str, Any] = {"rounds": rounds, "load_average": os.getloadavg()[0]}
    print(
        f"chunk cost ({STREAMS} streams x {RATE} chunks/s, SSE, medians of {ROUNDS} rounds, "
        f"per chunk delivered; load average {results['load_average']:.1f})"
    )
    for name, title in (
        ("long", f"{LONG_SECONDS} s turns (the turns' start and end included)"),
        ("marginal", f"a chunk alone ({LONG_SECONDS} s turns minus {SHORT_SECONDS} s turns)"),
    ):
        results[name] = _print(
            title,
            [
                {k: v for k, v in entry[name].items() if k.endswith("_per_chunk")}
                for entry in rounds
            ],
        )
    return results
