"""The local stack's view of the functions' logs: readable lines and ``/dev/metrics``.

Deployed, the functions' JSON lines go to Cloud Logging, and Terraform's log-based metrics
and dashboard (``terraform/monitoring.tf``) count them. Locally the stack reads the very same
lines, so nothing is added to the functions:

* ``make dev`` pipes each function's output through :class:`LogRelay`, which prints one
  readable line per entry (:func:`shared.log.readable_line`: time, function, level, message,
  fields; a turn summed up as outcome, time to first token, tokens, model) instead of raw
  JSON, and counts each entry in :class:`DevMetrics`;
* with ``--log-to-files`` (the tests, the benchmarks) each function writes its own file, as
  before, and :class:`LogFiles` reads what was added since the last look whenever
  ``/dev/metrics`` is asked for.

``/dev/metrics`` answers plain JSON: request counts, 5xx and latency percentiles per
function, turns by outcome with time-to-first-token, duration and token totals, tasks by
outcome, upload checks, and the storage sweep's last backlog, all since the stack started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from shared.log import NAME_WIDTH, readable_line

# Percentiles are over the newest samples of each series (bounded memory).
MAX_SAMPLES = 10_000


class _Series:
    """The newest values of one measurement, for percentiles."""

    def __init__(self) -> None:
        self.values: deque[float] = deque(maxlen=MAX_SAMPLES)

    def add(self, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.values.append(float(value))

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.values)
        if not ordered:
            return {"count": 0}

        def rank(fraction: float) -> float:
            # Nearest rank: the smallest value with at least `fraction` of the values at or below.
            index = max(0, min(len(ordered) - 1, int(-(-fraction * len(ordered) // 1)) - 1))
            return round(ordered[index], 2)

        return {"count": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99)}


def _latency_ms(value: Any) -> float | None:
    """Cloud Logging's ``httpRequest.latency`` (``"0.012345s"``) in milliseconds."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            return float(value[:-1]) * 1000
        except ValueError:
            return None
    return None


class DevMetrics:
    """Counters and latency percentiles since start, from the functions' log entries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self._requests: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._latency: defaultdict[str, _Series] = defaultdict(_Series)
        self._turn_outcomes: Counter[str] = Counter()
        self._turn_models: Counter[str] = Counter()
        self._finish_reasons: Counter[str] = Counter()
        self._turn_series: defaultdict[str, _Series] = defaultdict(_Series)
        self._tokens: Counter[str] = Counter()
        self._task_outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._task_series: defaultdict[str, defaultdict[str, _Series]] = defaultdict(
            lambda: defaultdict(_Series)
        )
        self._media: Counter[str] = Counter()
        self._sweeps = 0
        self._swept = 0
        self._last_sweep: dict[str, Any] | None = None

    def observe(self, function: str, entry: dict[str, Any]) -> None:
        with self._lock:
            request = entry.get("httpRequest")
            if isinstance(request, dict):
                self._requests[function] += 1
                status = request.get("status")
                if isinstance(status, int) and status >= 500:
                    self._errors[function] += 1
                latency = _latency_ms(request.get("latency"))
                if latency is not None:
                    self._latency[function].add(latency)
            event = entry.get("event")
            if event == "chat_turn":
                self._turn_outcomes[str(entry.get("outcome"))] += 1
                self._turn_models[str(entry.get("model"))] += 1
                if entry.get("finish_reason"):
                    self._finish_reasons[str(entry["finish_reason"])] += 1
                for name in ("ttft_ms", "model_ttft_ms", "turn_ms", "window_messages"):
                    self._turn_series[name].add(entry.get(name))
                for name in ("input_tokens", "output_tokens", "retries"):
                    value = entry.get(name)
                    if isinstance(value, int):
                        self._tokens[name] += value
            elif event == "task":
                task = str(entry.get("task"))
                self._task_outcomes[task][str(entry.get("outcome"))] += 1
                for name in ("duration_ms", "queue_delay_s"):
                    self._task_series[task][name].add(entry.get(name))
            elif event == "media_check":
                self._media[str(entry.get("outcome"))] += 1
            elif event == "storage_sweep":
                self._sweeps += 1
                finished = entry.get("finished")
                self._swept += finished if isinstance(finished, int) else 0
                self._last_sweep = {
                    key: entry.get(key) for key in ("pending", "due", "oldest_pending_s")
                }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "uptime_s": round(time.time() - self.started, 1),
                "requests": {
                    function: {
                        "count": count,
                        "5xx": self._errors[function],
                        "latency_ms": self._latency[function].summary(),
                    }
                    for function, count in sorted(self._requests.items())
                },
                "turns": {
                    "count": sum(self._turn_outcomes.values()),
                    "outcomes": dict(self._turn_outcomes),
                    "models": dict(self._turn_models),
                    "finish_reasons": dict(self._finish_reasons),
                    **{name: series.summary() for name, series in self._turn_series.items()},
                    "input_tokens": self._tokens["input_tokens"],
                    "output_tokens": self._tokens["output_tokens"],
                    "retries": self._tokens["retries"],
                },
                "tasks": {
                    task: {
                        "outcomes": dict(outcomes),
                        **{
                            name: series.summary()
                            for name, series in self._task_series[task].items()
                        },
                    }
                    for task, outcomes in self._task_outcomes.items()
                },
                "media_checks": dict(self._media),
                "storage_sweep": {
                    "runs": self._sweeps,
                    "deleted": self._swept,
                    "last": self._last_sweep,
                },
            }


def _fmt_ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def summary(entry: dict[str, Any]) -> str | None:
    """A telemetry event (a chat turn, a task...) in words; None for any other entry."""
    event = entry.get("event")
    if event == "chat_turn":
        parts = [f"turn {entry.get('outcome')}"]
        if "ttft_ms" in entry:
            model_ttft = _fmt_ms(entry.get("model_ttft_ms"))
            parts.append(f"first token {_fmt_ms(entry['ttft_ms'])} (model {model_ttft})")
        parts.append(f"total {_fmt_ms(entry.get('turn_ms'))}")
        if "input_tokens" in entry or "output_tokens" in entry:
            tokens_in, tokens_out = entry.get("input_tokens", "?"), entry.get("output_tokens", "?")
            parts.append(f"tokens {tokens_in} in / {tokens_out} out")
        if entry.get("finish_reason"):
            parts.append(str(entry["finish_reason"]))
        if entry.get("retries"):
            parts.append(f"{entry['retries']} retries")
        parts.append(str(entry.get("model")))
        if "window_messages" in entry:
            parts.append(f"window {entry['window_messages']}")
        if entry.get("code"):
            parts.append(f"code {entry['code']}")
        return " · ".join(parts)
    if event == "task":
        parts = [
            f"{entry.get('task')} task {entry.get('outcome')}",
            _fmt_ms(entry.get("duration_ms")),
        ]
        if isinstance(entry.get("queue_delay_s"), int | float):
            parts.append(f"waited {entry['queue_delay_s']:.1f} s in the queue")
        if entry.get("code"):
            parts.append(f"code {entry['code']}")
        return " · ".join(parts)
    if event == "media_check":
        return f"media check {entry.get('outcome')}"
    if event == "storage_sweep":
        oldest = entry.get("oldest_pending_s")
        text = f"storage sweep · deleted {entry.get('finished')} · {entry.get('pending')} pending"
        if isinstance(oldest, int | float):
            text += f" (oldest {oldest:.0f} s)"
        return text
    return None


def _parse(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def plain_line(name: str, text: str) -> str:
    """A line that is not a log entry (a library's print, a traceback's line), with the
    time and the name of the process that wrote it, like every other line."""
    return f"{time.strftime('%H:%M:%S')} {name:<{NAME_WIDTH}} {'':<5} {text}"


def readable(function: str, line: str) -> str:
    """One line of a process's output as a person reads it (:func:`shared.log.readable_line`);
    a telemetry event is summed up in words, a line that is not JSON is kept as it is."""
    entry = _parse(line)
    if entry is None:
        return plain_line(function, line)
    return readable_line(entry, function, summary(entry))


class LogRelay:
    """Reads each process's output (``make dev``): prints it readably and counts it."""

    def __init__(self, metrics: DevMetrics, out: TextIO = sys.stdout) -> None:
        self._metrics = metrics
        self._out = out
        self._print_lock = threading.Lock()
        self._last_line = time.monotonic()

    def attach(self, name: str, process: subprocess.Popen[bytes], skip: Iterable[str] = ()) -> None:
        """Relay ``process``'s stdout (started with ``stdout=PIPE``) until it ends.

        Args:
            name: what its lines are prefixed with (a function's name).
            process: the process.
            skip: lines (exactly) not worth printing: what it says on every start.
        """
        assert process.stdout is not None
        threading.Thread(
            target=self._relay,
            args=(name, process.stdout, frozenset(skip)),
            name=f"logs-{name}",
            daemon=True,
        ).start()

    def wait_quiet(self, quiet_seconds: float, timeout: float) -> None:
        """Wait until no line came for ``quiet_seconds`` (at most ``timeout``), so that what
        is printed next comes after what the processes said while starting."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            silent_for = time.monotonic() - self._last_line
            if silent_for >= quiet_seconds:
                return
            time.sleep(quiet_seconds - silent_for)

    def _relay(self, name: str, stream: Iterable[bytes], skip: frozenset[str]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line or line in skip:
                continue
            self._last_line = time.monotonic()
            entry = _parse(line)
            if entry is not None:
                self._metrics.observe(name, entry)
            text = readable(name, line)
            with self._print_lock:
                self._out.write(text + "\n")  # one write: lines of two threads never mix
                self._out.flush()


class LogFiles:
    """Counts what the functions wrote to ``<log_dir>/<function>.log`` since the last look."""

    def __init__(self, metrics: DevMetrics, log_dir: Path, functions: Iterable[str]) -> None:
        self._metrics = metrics
        self._paths = {function: log_dir / f"{function}.log" for function in functions}
        # Only what is written from now on counts (the files outlive a stack).
        self._offsets = {
            function: path.stat().st_size if path.exists() else 0
            for function, path in self._paths.items()
        }
        self._lock = threading.Lock()

    def collect(self) -> None:
        with self._lock:
            for function, path in self._paths.items():
                try:
                    with path.open("rb") as handle:
                        handle.seek(self._offsets[function])
                        data = handle.read()
                except FileNotFoundError:
                    continue
                complete = data[: data.rfind(b"\n") + 1]  # a line being written waits
                self._offsets[function] += len(complete)
                for raw in complete.splitlines():
                    entry = _parse(raw.decode("utf-8", "replace"))
                    if entry is not None:
                        self._metrics.observe(function, entry)
