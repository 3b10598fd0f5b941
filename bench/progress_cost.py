"""The CPU a resumable answer adds per chunk, in process: progress notes, the writer, the listener.

``resume`` compares whole instances, whose CPU per chunk spreads by 50-100 µs between rounds
on a shared machine; this isolates what a resumable turn adds. In one process, on the
stack's database: this process's answers listener (as every chat_stream turn starts it) and
its progress writer; ``ANSWERS`` streaming answers grow by one stamped piece each,
``RATE`` times a second for ``SECONDS``, noted as a resumable turn notes them
(``ProgressWriter.note``) or not noted (a plain turn). The process's CPU per chunk of both,
rounds interleaved; their difference is the resumable answer's extra CPU per chunk. Run it
on another checkout (its own ``python -m bench progress_cost``) for a before/after.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

import pg8000.dbapi

from bench.harness import stack_with_model
from shared import answer_progress, answers
from shared.db import Database, connect_kwargs_from_url

ROUNDS = 3
ANSWERS, RATE, SECONDS = 50, 50, 5


def streaming_answers(db: Database) -> list[uuid.UUID]:
    """``ANSWERS`` empty answer rows with a live lease, one chat each."""
    user = f"user_bench_progress_{uuid.uuid4().hex[:8]}"
    ids = []
    with db.transaction() as tx:
        tx.execute("INSERT INTO users (id) VALUES (:id)", id=user)
        for _ in range(ANSWERS):
            chat, answer = uuid.uuid4(), uuid.uuid4()
            tx.execute(
                "INSERT INTO chats (id, user_id, message_count) VALUES (:id, :user, 1)",
                id=chat,
                user=user,
            )
            tx.execute(
                """
                INSERT INTO messages (id, chat_id, position, role, streaming_until)
                VALUES (:id, :chat, 0, 'assistant', now() + interval '10 minutes')
                """,
                id=answer,
                chat=chat,
            )
            ids.append(answer)
    return ids


def cpu_us_per_chunk(db: Database, resumable: bool) -> float:
    """The process's CPU per chunk while ``ANSWERS`` answers grow (noted if ``resumable``)."""
    writer = answer_progress.progress_writer(db)
    lives = [answers.register(answer_id, 600) for answer_id in streaming_answers(db)]
    pieces: dict[uuid.UUID, list[str]] = {live.answer_id: [] for live in lives}
    lengths = dict.fromkeys(pieces, 0)
    started = time.process_time()
    tick = time.monotonic()
    for _ in range(RATE * SECONDS):
        for live in lives:
            text = f"{time.time():.6f} "
            answer = pieces[live.answer_id]
            answer.append(text)
            lengths[live.answer_id] += len(text)
            if resumable:
                writer.note(live, answer, lengths[live.answer_id])
        tick += 1 / RATE
        time.sleep(max(0.0, tick - time.monotonic()))
    time.sleep(2 * answer_progress.PROGRESS_INTERVAL_SECONDS)  # the last write
    cpu = time.process_time() - started
    for live in lives:
        writer.forget(live)
        answers.unregister(live)
    return cpu * 1e6 / (ANSWERS * RATE * SECONDS)


def run() -> dict[str, Any]:
    rounds: dict[str, list[float]] = {"plain": [], "resumable": []}
    with stack_with_model() as (stack, _):
        kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])

        def connect() -> Any:
            return pg8000.dbapi.connect(**kwargs)

        db = Database(connect, 3)
        try:
            answers.listener(connect).listening.wait(10)
            for _ in range(ROUNDS):
                for name in rounds:
                    rounds[name].append(cpu_us_per_chunk(db, name == "resumable"))
        finally:
            db.close()
    plain, resumable = (statistics.median(rounds[name]) for name in ("plain", "resumable"))
    results = {
        "rounds_us_per_chunk": rounds,
        "extra_us_per_chunk": resumable - plain,
        "load_average": os.getloadavg()[0],
    }
    print(f"progress cost ({ANSWERS} answers x {RATE} chunks/s, in process)")
    print(
        f"  process CPU per chunk: plain {plain:.1f} µs, resumable {resumable:.1f} µs: "
        f"{resumable - plain:.1f} µs extra (load average {results['load_average']:.1f})"
    )
    return results
