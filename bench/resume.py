"""Resumable answers (issue 14): what storing progress costs, and how late a follower is.

(a) CPU: one fresh chat_stream instance, 50 streams x 50 chunks/s for 5 s (the framing
    benchmark's load), plain turns and ``"resumable": true`` turns in interleaved rounds.
    A resumable turn runs in its own thread, which the request relays, and stores its text
    at most every 0.2 s (one UPDATE + NOTIFY). The instance's CPU time per chunk delivered
    (user + system, from /proc) is compared. Target: resumable / plain <= 1.05.
(b) Follower latency: instance A writes 20 resumable answers at 20 chunks/s each while
    instance B follows each one (``GET .../stream`` from the start, through NOTIFY/LISTEN).
    Every chunk carries the stand-in's send time; the follower's delay is its arrival at the
    follower minus that time (an upper bound of the delay behind the generator, which gets
    the chunk a few ms after it is sent). Target: p95 <= 300 ms.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
import uuid
from typing import Any

from bench.chat_stream import (
    connect,
    one_turn,
    percentile,
    process_cpu_seconds,
    read_event,
    start_instance,
)
from bench.harness import describe_instance_row, instance_rounds, stack_with_model
from dev.gemini_standin import StandinControl

ROUNDS = 3
STREAMS, RATE, SECONDS = 50, 50, 5
FOLLOWED, FOLLOW_RATE = 20, 20


def send(url: str, token: str, text: str, resumable: bool) -> tuple[Any, Any]:
    connection = connect(url)
    body = {
        "chatId": None,
        "messages": [{"role": "user", "parts": [{"type": "text", "text": text}]}],
        "resumable": resumable,
    }
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connection.request("POST", "/chat", body=json.dumps(body).encode(), headers=headers)
    return connection, connection.getresponse()


def read_stamps(response: Any, on_start: Any = None) -> tuple[list[float], bool]:
    """Each chunk's delay (arrival - the stand-in's stamp, ms) and whether it ended in done."""
    delays: list[float] = []
    done = False
    while line := response.readline():
        event = read_event(line)
        if event is None:
            continue
        if event["type"] == "start" and on_start is not None:
            on_start(event)
        elif event["type"] == "chunk":
            arrived = time.time()
            delays += [(arrived - float(sent)) * 1000 for sent in event["content"].split()]
        elif event["type"] == "done":
            done = True
    return delays, done


def cpu_round(
    env: dict[str, str], token: str, control: StandinControl, resumable: bool
) -> dict[str, Any]:
    process, url = start_instance(env, threads=STREAMS + 20)
    try:
        markers = [uuid.uuid4().hex for _ in range(STREAMS)]
        for marker in markers:
            control.script(
                match=marker,
                chunks=["x"] * (RATE * SECONDS),
                delay_per_chunk=1 / RATE,
                stamp_chunks=True,
            )
        one_turn(url, token, None, control)  # warm-up: model client and statements
        delays: list[float] = []
        errors = 0
        lock = threading.Lock()
        start_at = time.time() + 1.0

        def stream(marker: str) -> None:
            nonlocal errors
            try:
                time.sleep(max(0.0, start_at - time.time()))
                connection, response = send(url, token, f"stream {marker}", resumable)
                mine, done = read_stamps(response)
                connection.close()
            except (OSError, ValueError, http.client.HTTPException):
                mine, done = [], False
            with lock:
                delays.extend(mine)
                errors += 0 if done else 1

        threads = [threading.Thread(target=stream, args=(m,)) for m in markers]
        cpu_before = process_cpu_seconds(process.pid)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(0.5)  # resumable turns store their ending after the last event
        cpu_seconds = process_cpu_seconds(process.pid) - cpu_before
        return {
            "cpu_us_per_chunk": cpu_seconds * 1e6 / max(len(delays), 1),
            "chunks": len(delays),
            "errors": errors,
            "added_latency_p50_ms": statistics.median(delays),
            "added_latency_p99_ms": percentile(delays, 0.99),
        }
    finally:
        process.terminate()
        process.wait()


def follower_latency(env: dict[str, str], token: str, control: StandinControl) -> dict[str, Any]:
    writer, writer_url = start_instance(env, threads=FOLLOWED + 20)
    follower, follower_url = start_instance(env, threads=FOLLOWED + 20)
    try:
        one_turn(writer_url, token, None, control)
        generator_delays: list[float] = []
        follower_delays: list[float] = []
        errors = 0
        lock = threading.Lock()

        def pair() -> None:
            nonlocal errors
            marker = uuid.uuid4().hex
            control.script(
                match=marker,
                chunks=["x"] * (FOLLOW_RATE * SECONDS),
                delay_per_chunk=1 / FOLLOW_RATE,
                hang=0.5,  # time for the follower to join before the first chunk
                stamp_chunks=True,
            )
            followed: dict[str, Any] = {}

            def follow(start: dict[str, Any]) -> None:
                def run() -> None:
                    connection = connect(follower_url)
                    path = f"/api/chats/{start['chat_id']}/messages/{start['answer_id']}/stream"
                    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                    followed["result"] = read_stamps(connection.getresponse())
                    connection.close()

                followed["thread"] = threading.Thread(target=run)
                followed["thread"].start()

            connection, response = send(writer_url, token, f"follow {marker}", True)
            own, done = read_stamps(response, on_start=follow)
            connection.close()
            followed["thread"].join()
            theirs, followed_done = followed["result"]
            with lock:
                generator_delays.extend(own)
                follower_delays.extend(theirs)
                errors += 0 if done and followed_done else 1

        threads = [threading.Thread(target=pair) for _ in range(FOLLOWED)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {
            "streams": FOLLOWED,
            "chunks_per_second_each": FOLLOW_RATE,
            "errors": errors,
            "generator_client_p50_ms": statistics.median(generator_delays),
            "generator_client_p95_ms": percentile(generator_delays, 0.95),
            "follower_p50_ms": statistics.median(follower_delays),
            "follower_p95_ms": percentile(follower_delays, 0.95),
            "follower_p99_ms": percentile(follower_delays, 0.99),
            "follower_chunks": len(follower_delays),
        }
    finally:
        for process in (writer, follower):
            process.terminate()
            process.wait()


def run() -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {"plain": [], "resumable": []}
    with stack_with_model() as (stack, control):
        token = stack.signer.token("user_bench_resume", lifetime_seconds=7200)
        env = {**stack.env, "CHAT_STREAM_FORMAT": "ndjson"}
        for _ in range(ROUNDS):
            for name in ("plain", "resumable"):
                rounds[name].append(cpu_round(env, token, control, name == "resumable"))
        following = follower_latency(env, token, control)

    results: dict[str, Any] = {name: instance_rounds(entries) for name, entries in rounds.items()}
    results["cpu_ratio"] = results["resumable"]["cpu_us_per_chunk"] / max(
        results["plain"]["cpu_us_per_chunk"], 1e-9
    )
    results["follower"] = following
    print("resumable answers")
    for name in ("plain", "resumable"):
        print(describe_instance_row(name, results[name], STREAMS, RATE))
    print(f"  resumable / plain CPU per chunk: {results['cpu_ratio']:.3f} (target <= 1.05)")
    print(
        f"  follower on another instance, {FOLLOWED} answers x {FOLLOW_RATE} chunks/s: "
        f"p50 {following['follower_p50_ms']:.0f} ms, p95 {following['follower_p95_ms']:.0f} ms "
        f"(target <= 300), p99 {following['follower_p99_ms']:.0f} ms; the writer's own client "
        f"p50 {following['generator_client_p50_ms']:.0f} ms; errors {following['errors']}"
    )
    return results
