"""chat_stream: the backend's own cost of a turn, and one instance carrying 200 streams.

(a) Overhead of a turn, measured from the outside: from sending ``POST /chat`` to the model
    request arriving at the Gemini stand-in, and from the stand-in's last chunk to the
    ``done`` event arriving, in a chat of 10 messages and in one of 10,000 (which must be
    within 20% of each other: the window query reads the window, not the history).
    Target: at most 15 ms at p50.
(b) One instance with 200 concurrent streams, the stand-in sending 50 chunks per second on
    each: errors, the latency each chunk gains between the stand-in and the client (chunks
    carry their send time), and the instance's peak resident memory.
    Targets: 0 errors, p99 added latency at most 50 ms, at most 250 MB resident.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pg8000.dbapi

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack, free_port, function_command
from shared.db import Database, connect_kwargs_from_url

# (concurrent streams, chunks per second on each): the target load, then lighter ones that
# show where one instance's capacity lies.
STREAM_LOADS = [(200, 50), (100, 50), (50, 50), (200, 10)]
STREAM_SECONDS = 5
SAMPLES = 40


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def start_instance(
    env: dict[str, str],
    threads: int,
    log_path: Path | None = None,
    overrides: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """One chat_stream instance with generous rate limits, as a benchmark needs."""
    port = free_port()
    log = log_path.open("ab") if log_path is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        function_command("chat_stream", port),
        env={
            **env,
            "PORT": str(port),
            "THREADS": str(threads),
            "RATE_LIMIT_MESSAGES_PER_MINUTE": "1000000",
            "RATE_LIMIT_TOKENS_PER_DAY": "1000000000",
            **(overrides or {}),
        },
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1)
        except urllib.error.HTTPError:
            return process, url
        except OSError:
            time.sleep(0.05)


def resident_peak_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and its children (gunicorn's worker)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    total_kb = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def seed_chat(db: Database, user_id: str, messages: int) -> str:
    """A chat of ``messages`` alternating messages of ~40 tokens, inserted in bulk."""
    chat_id = uuid.uuid4()
    with db.transaction() as tx:
        tx.execute("INSERT INTO users (id) VALUES (:id) ON CONFLICT DO NOTHING", id=user_id)
        # Titled, as a chat past its first answer is: no title task at the end of its turns.
        tx.execute(
            "INSERT INTO chats (id, user_id, message_count, title, title_source) "
            "VALUES (:id, :user, :n, 'Seeded chat', 'generated')",
            id=chat_id,
            user=user_id,
            n=messages,
        )
        tx.execute(
            """
            INSERT INTO messages (id, chat_id, position, role, content, parts, token_count)
            SELECT gen_random_uuid(), :chat, n,
                   CASE WHEN n % 2 = 0 THEN 'user' ELSE 'assistant' END,
                   'message ' || n || repeat(' lorem ipsum', 12),
                   jsonb_build_array(jsonb_build_object(
                       'type', 'text', 'text', 'message ' || n || repeat(' lorem ipsum', 12))),
                   40
            FROM generate_series(0, :last) AS n
            """,
            chat=chat_id,
            last=messages - 1,
        )
    return str(chat_id)


def frontend_copy(messages: int) -> list[dict[str, Any]]:
    """The messages of a chat :func:`seed_chat` made, as the frontend holds and sends them
    with every new message (the server reads only the new one, but parses them all)."""
    return [
        {
            "role": "user" if n % 2 == 0 else "assistant",
            "parts": [{"type": "text", "text": f"message {n}" + " lorem ipsum" * 12}],
        }
        for n in range(messages)
    ]


def connect(url: str) -> http.client.HTTPConnection:
    target = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)


def send_chat(
    connection: http.client.HTTPConnection,
    token: str,
    chat_id: str | None,
    text: str,
    accept: str | None = None,
    history: list[dict[str, Any]] | None = None,
) -> http.client.HTTPResponse:
    """POST /chat as the frontend does (its copy of the chat, then the new message; no
    Accept: the default framing); the streaming response."""
    new_message = {"role": "user", "parts": [{"type": "text", "text": text}]}
    body = json.dumps({"chatId": chat_id, "messages": [*(history or []), new_message]})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if accept:
        headers["Accept"] = accept
    connection.request("POST", "/chat", body=body.encode(), headers=headers)
    return connection.getresponse()


def read_event(line: bytes) -> dict[str, Any] | None:
    """The event on one line of either framing (SSE ``data:`` or NDJSON); None for the rest."""
    if line.startswith(b"data: "):
        line = line[6:]
    elif not line.startswith(b"{"):
        return None
    event = json.loads(line)
    return event if isinstance(event, dict) else None


def one_turn(
    url: str,
    token: str,
    chat_id: str | None,
    control: StandinControl,
    history: list[dict[str, Any]] | None = None,
) -> tuple[float, float, float]:
    """(request -> model request, model's last chunk -> done, model's last chunk -> end of
    the response) in milliseconds."""
    marker = uuid.uuid4().hex
    control.script(match=marker, chunks=["a ", "b ", "c"])
    connection = connect(url)
    sent = time.time()
    response = send_chat(connection, token, chat_id, f"question {marker}", history=history)
    done_at = None
    while line := response.readline():
        event = read_event(line)
        if event is not None and event["type"] == "done":
            done_at = time.time()
    ended_at = time.time()  # the chunked body's last chunk read: the response has ended
    connection.close()
    assert done_at is not None, "the turn did not finish"
    record = control.requests(match=marker)[0]
    return (
        (record["time"] - sent) * 1000,
        (done_at - record["settled_at"]) * 1000,
        (ended_at - record["settled_at"]) * 1000,
    )


def _stream_worker(
    args: tuple[str, list[tuple[str, str]], float, str | None],
) -> tuple[list[float], int, list[float]]:
    """Open streams (one thread each, a (marker, token) pair each); every chunk's added
    latency, the errors, and each stream's time from sending the request to its first chunk
    (ms)."""
    url, streams, start_at, accept = args
    latencies: list[float] = []
    first_chunks: list[float] = []
    refusals: dict[str, int] = {}
    errors = 0
    lock = threading.Lock()

    def stream(marker: str, token: str) -> None:
        nonlocal errors
        mine: list[float] = []
        first: float | None = None
        ok = False
        try:
            connection = connect(url)
            time.sleep(max(0.0, start_at - time.time()))
            requested = time.time()
            response = send_chat(connection, token, None, f"stream {marker}", accept)
            while line := response.readline():
                event = read_event(line)
                if event is None:
                    continue
                if "type" not in event:  # an error answer instead of a stream
                    with lock:
                        refusals[str(event.get("code"))] = (
                            refusals.get(str(event.get("code")), 0) + 1
                        )
                    break
                if event["type"] == "chunk":
                    # A busy instance joins chunks that piled up: one stamp per model chunk.
                    arrived = time.time()
                    if first is None:
                        first = (arrived - requested) * 1000
                    mine += [(arrived - float(sent)) * 1000 for sent in event["content"].split()]
                elif event["type"] == "done":
                    ok = True
            connection.close()
        except (OSError, ValueError, http.client.HTTPException):
            ok = False
        with lock:
            latencies.extend(mine)
            errors += 0 if ok else 1
            if first is not None:
                first_chunks.append(first)

    threads = [threading.Thread(target=stream, args=pair) for pair in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if refusals:
        print(f"  refused streams: {refusals}")
    return latencies, errors, first_chunks


def process_cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process and its children (gunicorn's worker), in seconds."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    user = system = 0
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11])  # utime, stime: fields 14 and 15 of stat
        system += int(fields[12])
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    return user / ticks_per_second, system / ticks_per_second


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (gunicorn's worker), in seconds."""
    return sum(process_cpu_split(pid))


# What a worker's first turn costs on top of a turn (the model client and its first
# connection, the Cloud Tasks client's import when the new chat asks for a title: ~0.7 s of
# CPU), at the least; a worker that served no turn grows by almost nothing.
FIRST_TURN_CPU_SECONDS = 0.05


def workers_of(overrides: dict[str, str] | None) -> str:
    return (overrides or {}).get("WORKERS", "1")


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_every_worker(
    pid: int, url: str, token: str, control: StandinControl, workers: int
) -> None:
    """Serve a first turn in every worker process of the instance, then wait for it to idle.

    One warm-up turn reaches one worker: with ``WORKERS=2`` the other would pay its first
    turn's costs inside the measured load, which a one-worker instance does not (a burst on
    an instance whose workers are all warm is what both settings are compared on). Turns are
    sent a few at once until each worker's CPU time shows it served one.
    """
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + 30
    while len(worker_pids := [int(c) for c in children.read_text().split()]) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the instance started {len(worker_pids)} of {workers} workers")
        time.sleep(0.1)
    before = {worker: own_cpu_seconds(worker) for worker in worker_pids}
    for _ in range(20):
        turns = [
            threading.Thread(target=one_turn, args=(url, token, None, control))
            for _ in range(2 * workers)
        ]
        for each in turns:
            each.start()
        for each in turns:
            each.join()
        cold = [w for w in worker_pids if own_cpu_seconds(w) - before[w] < FIRST_TURN_CPU_SECONDS]
        if not cold:
            break
    else:
        raise RuntimeError(f"workers {cold} served none of the warm-up turns")
    # Until the first turns' after-response work (title requests) is done.
    last = process_cpu_seconds(pid)
    for _ in range(40):
        time.sleep(0.25)
        now = process_cpu_seconds(pid)
        if now - last < 0.01:
            return
        last = now


def stream_load(
    env: dict[str, str],
    token: str | list[str],
    control: StandinControl,
    streams: int,
    rate: int,
    accept: str | None = None,
    overrides: dict[str, str] | None = None,
    seconds: float = STREAM_SECONDS,
    log_path: Path | None = None,
    probe: Callable[[int], AbstractContextManager[dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """``streams`` concurrent turns on one fresh instance, the model sending ``rate`` chunks/s
    for ``seconds``; ``overrides`` are the instance's extra environment (``WORKERS``...).
    ``probe(pid)``, if given, runs around the load (its dict's counts are divided by the
    chunks delivered and returned as ``<name>_per_chunk``).

    ``token`` is one user's for every stream, or one per stream (``streams`` users: what an
    instance carries in production; one user's turns all update that user's rate-limit and
    usage rows, so a burst of them queues on those row locks).
    """
    tokens = token if isinstance(token, list) else [token] * streams
    assert len(tokens) >= streams
    process, url = start_instance(env, threads=streams + 20, log_path=log_path, overrides=overrides)
    try:
        markers = [uuid.uuid4().hex for _ in range(streams)]
        for marker in markers:
            control.script(
                match=marker,
                chunks=["x"] * int(rate * seconds),
                delay_per_chunk=1 / rate,
                stamp_chunks=True,
            )
        warm_every_worker(process.pid, url, tokens[0], control, int(workers_of(overrides)))
        memory_before = resident_peak_mb(process.pid)
        pairs = list(zip(markers, tokens, strict=False))
        halves = [pairs[: streams // 2], pairs[streams // 2 :]]
        counts: dict[str, float] = {}
        with (
            multiprocessing.get_context("spawn").Pool(2) as pool,
            probe(process.pid) if probe else contextlib.nullcontext(counts) as counts,
        ):
            start_at = time.time() + 1.0
            user_before, system_before = process_cpu_split(process.pid)
            jobs = [(url, half, start_at, accept) for half in halves]
            parts = pool.map(_stream_worker, jobs)
            user_after, system_after = process_cpu_split(process.pid)
        user_seconds, system_seconds = user_after - user_before, system_after - system_before
        latencies = [latency for part, _, _ in parts for latency in part]
        first_chunks = [value for _, _, part in parts for value in part]
        chunks = max(len(latencies), 1)
        return {
            "cpu_us_per_chunk": (user_seconds + system_seconds) * 1e6 / chunks,
            "user_us_per_chunk": user_seconds * 1e6 / chunks,
            "system_us_per_chunk": system_seconds * 1e6 / chunks,
            **{f"{name}_per_chunk": count / chunks for name, count in counts.items()},
            "streams": streams,
            "chunks_per_second_each": rate,
            "errors": sum(errors for _, errors, _ in parts),
            "chunks": len(latencies),
            "added_latency_p50_ms": statistics.median(latencies),
            "added_latency_p99_ms": percentile(latencies, 0.99),
            "first_chunk_p50_ms": statistics.median(first_chunks) if first_chunks else None,
            "first_chunk_p99_ms": percentile(first_chunks, 0.99) if first_chunks else None,
            "peak_rss_mb": resident_peak_mb(process.pid),
            "rss_before_mb": memory_before,
        }
    finally:
        process.terminate()
        process.wait()


def backend_prepare_ms(log_path: Path, chats: set[str]) -> dict[str, list[float]]:
    """The instance's own share of the way to the model, from its log lines: ``prepare``
    (authenticated -> context ready, the ``turn context`` line's ``prepare_ms``),
    ``since_received`` (request received -> context ready) and ``to_model`` (request
    received -> the model call starting, the ``chat turn`` line's ``to_model_ms``); and the
    turn's end from the model's end of the answer (the ``chat turn`` line's ``stored_ms``,
    ``done_ms``, ``end_ms``: the answer stored, ``done`` written, the events over, after-turn
    tasks included, just before the body's end)."""
    values: dict[str, list[float]] = {
        "prepare": [],
        "since_received": [],
        "to_model": [],
        "stored": [],
        "done": [],
        "end": [],
    }
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("chat") not in chats:
                continue
            if entry.get("message") == "turn context":
                values["prepare"].append(float(entry["prepare_ms"]))
                if "since_received_ms" in entry:
                    values["since_received"].append(float(entry["since_received_ms"]))
            elif entry.get("event") == "chat_turn":
                for name in ("to_model", "stored", "done", "end"):
                    if f"{name}_ms" in entry:  # an older checkout's line has fewer
                        values[name].append(float(entry[f"{name}_ms"]))
    return values


def _present(row: dict[str, Any], *fields: tuple[str, str]) -> str:
    """``label value`` for each (label, key) of ``row`` that was measured, comma-separated
    (an older checkout's log lacks some)."""
    return ", ".join(f"{label} {row[key]:.2f}" for label, key in fields if row[key] is not None)


def run_turn() -> dict[str, Any]:
    """Only (a), the backend's own cost of a turn (``python -m bench chat_stream_turn``)."""
    return run(stream_loads=[])


def run(stream_loads: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    stream_loads = STREAM_LOADS if stream_loads is None else stream_loads
    with tempfile.TemporaryDirectory() as data_dir:
        stack = LocalStack(Path(data_dir), free_port(), log_to_files=True)
        stack.start()
        assert stack.gemini_standin_url is not None
        control = StandinControl(stack.gemini_standin_url)
        database_kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])
        db = Database(lambda: pg8000.dbapi.connect(**database_kwargs), 2)
        log_path = Path(data_dir) / "chat_stream_bench.log"
        user = "user_bench_stream"
        token = stack.signer.token(user, lifetime_seconds=7200)
        # One user per stream, as an instance's streams are in production.
        stream_users = [
            stack.signer.token(f"{user}_{n}", lifetime_seconds=7200)
            for n in range(max((streams for streams, _ in stream_loads), default=0))
        ]
        try:
            process, url = start_instance(stack.env, threads=16, log_path=log_path)
            try:
                small = [seed_chat(db, user, 10) for _ in range(SAMPLES)]
                # 60 messages fill the window (CHAT_WINDOW_SIZE=50) as 10,000 do: the pair
                # that isolates the cost of the chat's length from the size of the window.
                full_window = [seed_chat(db, user, 60) for _ in range(SAMPLES)]
                large = seed_chat(db, user, 10_000)
                for chat in small[:3]:
                    one_turn(url, token, chat, control)  # warm-up: model client, statements
                overhead: dict[str, list[tuple[float, float, float]]] = {
                    "10": [],
                    "60": [],
                    "10000": [],
                }
                cpu_before = process_cpu_seconds(process.pid)
                # Each turn sends the chat as the frontend holds it (the seeded messages).
                copies = {size: frontend_copy(size) for size in (10, 60, 10_000)}
                for index in range(SAMPLES):
                    overhead["10"].append(one_turn(url, token, small[index], control, copies[10]))
                    overhead["60"].append(
                        one_turn(url, token, full_window[index], control, copies[60])
                    )
                    overhead["10000"].append(one_turn(url, token, large, control, copies[10_000]))
                # The instance's CPU per whole turn (request to end of response, 3 chunks).
                turn_cpu_ms = (process_cpu_seconds(process.pid) - cpu_before) * 1000 / (3 * SAMPLES)
            finally:
                process.terminate()
                process.wait()
            prepare = {
                "10": backend_prepare_ms(log_path, set(small[3:])),
                "60": backend_prepare_ms(log_path, set(full_window)),
                "10000": backend_prepare_ms(log_path, {large}),
            }
            loads = [
                stream_load(stack.env, stream_users[:streams], control, streams, rate)
                for streams, rate in stream_loads
            ]
        finally:
            db.close()
            stack.stop()

    def summary(
        pairs: list[tuple[float, float, float]], own: dict[str, list[float]]
    ) -> dict[str, float | None]:
        before = [p[0] for p in pairs]
        after = [p[1] for p in pairs]
        ended = [p[2] for p in pairs]

        def median(values: list[float]) -> float | None:
            return statistics.median(values) if values else None  # an older checkout's log

        return {
            "to_model_p50_ms": statistics.median(before),
            "to_model_p95_ms": percentile(before, 0.95),
            "backend_prepare_p50_ms": median(own["prepare"]),
            "backend_since_received_p50_ms": median(own["since_received"]),
            "backend_to_model_p50_ms": median(own["to_model"]),
            "to_done_p50_ms": statistics.median(after),
            "to_done_p95_ms": percentile(after, 0.95),
            "to_end_p50_ms": statistics.median(ended),
            "to_end_p95_ms": percentile(ended, 0.95),
            "backend_model_end_to_stored_p50_ms": median(own["stored"]),
            "backend_model_end_to_done_p50_ms": median(own["done"]),
            "backend_model_end_to_end_p50_ms": median(own["end"]),
        }

    results: dict[str, Any] = {
        "overhead_chat_10": summary(overhead["10"], prepare["10"]),
        "overhead_chat_60": summary(overhead["60"], prepare["60"]),
        "overhead_chat_10000": summary(overhead["10000"], prepare["10000"]),
        "stream_loads": loads,
        "instance_cpu_ms_per_turn": turn_cpu_ms,
        "load_average": os.getloadavg()[0],
    }
    print("chat_stream")
    print(
        f"  instance CPU per turn (request to end of response, 3 chunks): {turn_cpu_ms:.2f} ms "
        f"(load average {results['load_average']:.1f})"
    )
    for size in ("10", "60", "10000"):
        row = results[f"overhead_chat_{size}"]
        own = _present(
            row,
            ("prepare", "backend_prepare_p50_ms"),
            ("received->context", "backend_since_received_p50_ms"),
            ("received->model call", "backend_to_model_p50_ms"),
        )
        print(
            f"  chat of {size:>5} messages: request->model request p50 "
            f"{row['to_model_p50_ms']:.1f} ms (p95 {row['to_model_p95_ms']:.1f}; the "
            f"backend's own p50: {own}), last chunk->done p50 {row['to_done_p50_ms']:.1f} ms "
            f"(p95 {row['to_done_p95_ms']:.1f}), last chunk->end of response p50 "
            f"{row['to_end_p50_ms']:.1f} ms (p95 {row['to_end_p95_ms']:.1f})"
        )
        ending = _present(
            row,
            ("stored", "backend_model_end_to_stored_p50_ms"),
            ("done written", "backend_model_end_to_done_p50_ms"),
            ("events over", "backend_model_end_to_end_p50_ms"),
        )
        if ending:
            print(f"      in the instance, from the model's end p50 (ms): {ending}")
    for load in loads:
        print(
            f"  {load['streams']:>3} streams x {load['chunks_per_second_each']:>2} chunks/s: "
            f"errors {load['errors']}, added latency per chunk p50 "
            f"{load['added_latency_p50_ms']:.1f} ms p99 {load['added_latency_p99_ms']:.1f} ms, "
            f"peak RSS {load['peak_rss_mb']:.0f} MB"
        )
    print(
        "  targets: overhead p50 <= 15 ms (10 vs 10,000 within 20%); 200 x 50/s: 0 errors, "
        "p99 <= 50 ms, <= 250 MB"
    )
    return results
