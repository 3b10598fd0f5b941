"""Conversation controls: search latency over a large user, and what titles cost a turn.

Targets on the 2-core machine:

* ``GET /api/chats?q=`` p50 <= 20 ms for a user with 1,000 chats x 20 messages (another
  user's 1,000 x 20 in the same tables, so the index holds more than the caller's rows);
* titles add nothing to a turn's latency: the title task is enqueued after ``done`` was
  written, so request -> ``done`` is the same for a chat that gets a title and one that
  does not; the enqueue only shows between ``done`` and the end of the stream.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pg8000.dbapi

from bench.chat_stream import connect, percentile, start_instance
from dev.stack import LocalStack, free_port
from shared.db import Database, connect_kwargs_from_url

CHATS = 1000
MESSAGES_PER_CHAT = 20
WORDS_PER_MESSAGE = 40
SEARCH_SAMPLES = 200
TITLE_SAMPLES = 40

# A vocabulary with a long tail, like real text: a few words are everywhere, most are rare.
VOCABULARY = [f"w{n}" for n in range(5000)]
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCABULARY))]


def seed_user(db: Database, user_id: str, rng: random.Random) -> None:
    """``CHATS`` chats of ``MESSAGES_PER_CHAT`` messages of Zipf-distributed words."""
    with db.transaction() as tx:
        tx.execute("INSERT INTO users (id) VALUES (:id) ON CONFLICT DO NOTHING", id=user_id)
    for _batch in range(CHATS // 100):
        chats, messages = [], []
        for _ in range(100):
            chat_id = str(uuid.uuid4())
            title = " ".join(rng.choices(VOCABULARY, WEIGHTS, k=3))
            chats.append({"id": chat_id, "title": title})
            for position in range(MESSAGES_PER_CHAT):
                text = " ".join(rng.choices(VOCABULARY, WEIGHTS, k=WORDS_PER_MESSAGE))
                messages.append({"chat": chat_id, "position": position, "text": text})
        with db.transaction() as tx:
            tx.execute(
                "INSERT INTO chats (id, user_id, title, message_count) "
                "SELECT (c->>'id')::uuid, :user, c->>'title', :count "
                "FROM jsonb_array_elements(CAST(:chats AS jsonb)) c",
                user=user_id,
                count=MESSAGES_PER_CHAT,
                chats=chats,
            )
            tx.execute(
                "INSERT INTO messages (id, chat_id, position, role, content, parts) "
                "SELECT gen_random_uuid(), (m->>'chat')::uuid, (m->>'position')::int, "
                "CASE WHEN (m->>'position')::int % 2 = 0 THEN 'user' ELSE 'assistant' END, "
                "m->>'text', jsonb_build_array(jsonb_build_object('type', 'text', "
                "'text', m->>'text')) "
                "FROM jsonb_array_elements(CAST(:messages AS jsonb)) m",
                messages=messages,
            )


def timed_get(url: str, token: str) -> tuple[float, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    return (time.perf_counter() - started) * 1000, body


def bench_search(stack: LocalStack, db: Database) -> dict[str, Any]:
    rng = random.Random(13)
    seeded = time.perf_counter()
    seed_user(db, "user_search_bench", rng)
    seed_user(db, "user_search_other", rng)
    db.fetch_all("ANALYZE chats")
    db.fetch_all("ANALYZE messages")
    seed_seconds = time.perf_counter() - seeded
    token = stack.signer.token("user_search_bench", lifetime_seconds=3600)
    base = stack.function_urls["chats_crud"] + "/api/chats?"
    # Words by how many of the user's chats contain them: common, middling, rare, and a
    # two-word query; plus the plain list for comparison.
    queries = {"common (w3)": "w3", "middling (w300)": "w300", "rare (w4000)": "w4000"}
    queries["two words (w40 w90)"] = "w40 w90"
    results: dict[str, Any] = {"seed_seconds": round(seed_seconds, 1)}
    for _ in range(20):  # warm-up: connections, caches, the token cache
        timed_get(base + urllib.parse.urlencode({"q": "w7"}), token)
    runs: list[tuple[str, str | None, int | None]] = [
        (label, q, None) for label, q in queries.items()
    ]
    runs += [(f"{label}, limit=100", q, 100) for label, q in queries.items()]
    for label, q, limit in [*runs, ("plain list (no q)", None, None)]:
        params: dict[str, Any] = {"q": q} if q else {}
        if limit:
            params["limit"] = limit
        url = base + urllib.parse.urlencode(params)
        timings, hits = [], 0
        for _ in range(SEARCH_SAMPLES):
            ms, body = timed_get(url, token)
            timings.append(ms)
            hits = len(body)
        matching = None
        if q:
            matching = db.fetch_one(
                "SELECT count(DISTINCT m.chat_id) AS n FROM messages m JOIN chats c "
                "ON c.id = m.chat_id WHERE c.user_id = 'user_search_bench' "
                "AND m.content_search @@ websearch_to_tsquery('simple', :q)",
                q=q,
            )
        results[label] = {
            "p50_ms": round(statistics.median(timings), 2),
            "p95_ms": round(percentile(timings, 0.95), 2),
            "page": hits,
            "matching_chats": matching["n"] if matching else None,
        }
        print(
            f"search {label:>32}: p50 {results[label]['p50_ms']:6.2f} ms, "
            f"p95 {results[label]['p95_ms']:6.2f} ms, page {hits}, "
            f"chats matching {results[label]['matching_chats']}"
        )
    return results


def timed_turn(url: str, token: str, chat_id: str | None) -> tuple[float, float]:
    """(request -> done line, done line -> end of stream) in milliseconds."""
    connection = connect(url)
    body = json.dumps(
        {"chatId": chat_id, "messages": [{"role": "user", "parts": [{"text": "Hello there"}]}]}
    )
    started = time.perf_counter()
    connection.request(
        "POST",
        "/chat",
        body=body.encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        },
    )
    response = connection.getresponse()
    done_at = None
    while line := response.readline():
        if line.startswith(b"data: ") and b'"type":"done"' in line:
            done_at = time.perf_counter()
    ended = time.perf_counter()
    connection.close()
    assert done_at is not None, "the turn did not end with done"
    return (done_at - started) * 1000, (ended - done_at) * 1000


def bench_titles(stack: LocalStack) -> dict[str, Any]:
    process, url = start_instance(stack.env, threads=8)
    try:
        token = stack.signer.token("user_title_bench", lifetime_seconds=3600)
        for _ in range(5):
            timed_turn(url, token, None)  # warm-up (the tasks client's first import)
        cases: dict[str, list[tuple[float, float]]] = {"new chat (title asked)": []}
        cases["user-titled chat (no title)"] = []
        for _ in range(TITLE_SAMPLES):
            cases["new chat (title asked)"].append(timed_turn(url, token, None))
            request = urllib.request.Request(
                url.replace(url, stack.function_urls["chats_crud"]) + "/api/chats/create",
                data=json.dumps({"title": "Mine"}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            chat_id = json.load(urllib.request.urlopen(request))["chatId"]
            cases["user-titled chat (no title)"].append(timed_turn(url, token, chat_id))
    finally:
        process.terminate()
        process.wait()
    results = {}
    for label, samples in cases.items():
        to_done = [sample[0] for sample in samples]
        tail = [sample[1] for sample in samples]
        results[label] = {
            "request_to_done_p50_ms": round(statistics.median(to_done), 2),
            "done_to_end_p50_ms": round(statistics.median(tail), 2),
        }
        print(
            f"turn {label:>28}: request -> done p50 {results[label]['request_to_done_p50_ms']:6.2f}"
            f" ms, done -> end of stream p50 {results[label]['done_to_end_p50_ms']:6.2f} ms"
        )
    return results


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        stack = LocalStack(Path(data_dir), free_port(), log_to_files=True)
        stack.start()
        kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])
        db = Database(lambda: pg8000.dbapi.connect(**kwargs), pool_size=2)
        try:
            return {"search": bench_search(stack, db), "titles": bench_titles(stack)}
        finally:
            db.close()
            stack.stop()
