"""A turn's own database work, in process: CPU and round trips of storing its start and its
end (``python -m bench turn_cost``).

Calls :func:`shared.turn.begin` (a text send to an existing chat of 10 and of 10,000
messages, and to a new chat) and :func:`shared.turn.save_answer` (a complete answer) as
chat_stream does, on a pool whose connections count their round trips (each ``flush`` of
pg8000's socket is one request to PostgreSQL awaiting its reply; a statement prepared on
first use costs one more, so the counts are taken after a warm-up). CPU is this process's
(``time.process_time``: the turn's Python and pg8000, not PostgreSQL's), median of the
samples; the machine is shared, so CPU and round trips are what to compare, not the wall
time. Runs unchanged against an older checkout (the functions' signatures are the same):
that is how the before numbers in bench/README.md were taken.

Also a user's first request on an instance (``KnownUsers``: every user, on every new
instance): :func:`shared.users.ensure_user` for a row that lacks nothing, its wall time at a
turn's pace (one every 10 ms, so each commit is a flush of its own, not one shared by a
batch) and the WAL it writes (``pg_current_wal_insert_lsn`` before and after; the stack is
otherwise quiet, so a few bytes of noise at most).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import pg8000.dbapi

from bench.chat_stream import seed_chat
from bench.harness import stack_with_model
from shared import turn, turn_request, users
from shared.db import Database, connect_kwargs_from_url
from shared.model_events import Finished
from shared.schemas import ChatRequest

SAMPLES = 60


class _CountingSocket:
    """pg8000's buffered socket, counting its flushes: one per round trip."""

    def __init__(self, sock: Any, counter: list[int]) -> None:
        self._sock = sock
        self._counter = counter

    def flush(self) -> None:
        self._counter[0] += 1
        self._sock.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def run() -> dict[str, Any]:
    with stack_with_model() as (stack, _control):
        os.environ.update(stack.env)
        os.environ["RATE_LIMIT_MESSAGES_PER_MINUTE"] = "1000000"
        os.environ["RATE_LIMIT_TOKENS_PER_DAY"] = "1000000000"
        from shared.settings import get_settings

        get_settings.cache_clear()
        settings = get_settings()
        kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])
        trips = [0]

        def connect() -> Any:
            raw = pg8000.dbapi.connect(**kwargs)
            raw._sock = _CountingSocket(raw._sock, trips)
            return raw

        db = Database(connect, 2)
        user = "user_bench_turn_cost"
        chats = {"10": seed_chat(db, user, 10), "10000": seed_chat(db, user, 10_000)}
        system_tokens = turn_request.instruction_tokens("You are Raven.")

        def begin(chat_id: str | None) -> turn.BegunTurn:
            body = ChatRequest.model_validate(
                {
                    "chatId": chat_id,
                    "messages": [
                        {"role": "user", "parts": [{"type": "text", "text": "a question"}]}
                    ],
                }
            )
            asked = turn_request.read_request(body, settings)
            assert asked.message is not None
            question = turn_request.question(asked.message, [], system_tokens, settings)
            return turn.begin(db, settings, user, None, asked, question, system_tokens)

        def measure(action: Any) -> tuple[float, float, int, Any]:
            before_trips = trips[0]
            cpu = time.process_time()
            wall = time.perf_counter()
            value = action()
            return (
                (time.process_time() - cpu) * 1000,
                (time.perf_counter() - wall) * 1000,
                trips[0] - before_trips,
                value,
            )

        finished = Finished(input_tokens=100, output_tokens=3, finish_reason="stop", model="m")
        for _ in range(3):  # warm-up: connections opened, statements prepared
            for chat in (*chats.values(), None):
                begun = begin(chat)
                turn.save_answer(db, settings, user, begun, ["a b c"], 5, finished)
        samples: dict[str, dict[str, list[float]]] = {}
        for _ in range(SAMPLES):
            for name, chat in (
                ("chat_10", chats["10"]),
                ("chat_10000", chats["10000"]),
                ("new_chat", None),
            ):
                cpu, wall, count, begun = measure(lambda chat=chat: begin(chat))
                row = samples.setdefault(
                    name,
                    {
                        "begin_cpu": [],
                        "begin_wall": [],
                        "begin_trips": [],
                        "save_cpu": [],
                        "save_wall": [],
                        "save_trips": [],
                    },
                )
                row["begin_cpu"].append(cpu)
                row["begin_wall"].append(wall)
                row["begin_trips"].append(count)
                cpu, wall, count, saved = measure(
                    lambda begun=begun: turn.save_answer(
                        db, settings, user, begun, ["a b c"], 5, finished
                    )
                )
                assert saved
                row["save_cpu"].append(cpu)
                row["save_wall"].append(wall)
                row["save_trips"].append(count)
        known = _known_user_check(db)
        db.close()
    load = os.getloadavg()[0]
    results: dict[str, Any] = {"load_average": load}
    print(f"turn_cost (in process, median of {SAMPLES}; load average {load:.1f})")
    for name, row in samples.items():
        summary = {key: statistics.median(values) for key, values in row.items()}
        results[name] = summary
        print(
            f"  {name:>10}: begin {summary['begin_trips']:.0f} round trips, CPU "
            f"{summary['begin_cpu']:.2f} ms, wall {summary['begin_wall']:.2f} ms; save "
            f"{summary['save_trips']:.0f} round trips, CPU {summary['save_cpu']:.2f} ms, wall "
            f"{summary['save_wall']:.2f} ms"
        )
    results["known_user_first_request"] = known
    print(
        f"  a known user's first request on an instance (ensure_user, a complete row): wall "
        f"{known['wall_ms']:.2f} ms p50, WAL {known['wal_bytes']:.0f} bytes per call (median)"
    )
    return results


def _known_user_check(db: Database) -> dict[str, float]:
    user = "user_bench_known"
    profile = {"email": "known@example.com", "first_name": "Kay", "last_name": "Known"}
    users.ensure_user(db, user, **profile)
    walls: list[float] = []
    wal: list[float] = []
    for _ in range(SAMPLES):
        time.sleep(0.01)
        before = db.fetch_one("SELECT pg_current_wal_insert_lsn()::text AS lsn")
        started = time.perf_counter()
        users.ensure_user(db, user, **profile)
        walls.append((time.perf_counter() - started) * 1000)
        written = db.fetch_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), CAST(:lsn AS pg_lsn)) AS n",
            lsn=before["lsn"] if before else "0/0",
        )
        wal.append(float(written["n"]) if written else 0.0)
    return {"wall_ms": statistics.median(walls), "wal_bytes": statistics.median(wal)}


if __name__ == "__main__":
    run()
