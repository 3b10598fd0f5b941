"""The storage deletion queue: chat deletion through HTTP, prefixes, crashes, failures and
concurrent workers, against the real database and the storage emulator."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pg8000.dbapi
import pytest
import requests

from dev.stack import LocalStack
from shared import deletions
from shared.db import Database, connect_kwargs_from_url
from shared.deletions import claim_storage_deletions, process_storage_deletions
from shared.media import resolve_media
from shared.storage import CloudObjectStore, MediaStorage
from tests.conftest import ApiClient, upload_file
from tests.helpers import PNG, add_media_message


def exists(storage_client: Any, bucket: str, name: str) -> bool:
    return storage_client.bucket(bucket).get_blob(name) is not None


def put_objects(storage_client: Any, bucket: str, names: list[str]) -> None:
    for name in names:
        storage_client.bucket(bucket).blob(name).upload_from_string(b"x", content_type="text/plain")


def queue(
    db: Database, bucket: str, *, objects: Sequence[str] = (), prefix: str | None = None
) -> None:
    with db.transaction() as tx:
        for name in objects:
            tx.execute(
                "INSERT INTO storage_deletions (bucket, object_name) VALUES (:b, :o)",
                b=bucket,
                o=name,
            )
        if prefix is not None:
            tx.execute(
                "INSERT INTO storage_deletions (bucket, prefix) VALUES (:b, :p)", b=bucket, p=prefix
            )


def sweep_once(db: Database, storage_client: Any, limit: int) -> int:
    """One pass of the worker over the bucket; how many rows it finished."""
    return process_storage_deletions(db, CloudObjectStore(storage_client), limit).finished


def drain(db: Database, storage_client: Any) -> None:
    """Finish whatever earlier tests left due, so counts below are this test's own."""
    while sweep_once(db, storage_client, 100):
        pass


@pytest.fixture
def quiet_queue(db: Database, storage_client: Any) -> Iterator[None]:
    drain(db, storage_client)
    yield
    drain(db, storage_client)


def test_deleting_a_chat_removes_only_the_objects_no_other_chat_uses(
    alice: ApiClient, db: Database, media_store: MediaStorage, storage_client: Any
) -> None:
    assert alice.user_id is not None
    uploads = [upload_file(alice, PNG, f"{n}.png") for n in ("only", "shared", "unused")]
    records = [resolve_media(db, media_store, alice.user_id, u["gs_uri"], None) for u in uploads]
    doomed_chat, other_chat = alice.create_chat("doomed"), alice.create_chat("keeps one")
    add_media_message(db, doomed_chat["chatId"], "two files", [r.part() for r in records[:2]])
    add_media_message(db, other_chat["chatId"], "one file", [records[1].part()])
    bucket = media_store.bucket_name

    assert alice.delete(f"/api/chats/{doomed_chat['chatId']}").status_code == 200
    deadline = time.monotonic() + 15
    while exists(storage_client, bucket, records[0].object_name):  # the background thread
        assert time.monotonic() < deadline, "the chat's object was not deleted"
        time.sleep(0.1)
    assert exists(storage_client, bucket, records[1].object_name)  # another chat uses it
    assert exists(storage_client, bucket, records[2].object_name)  # no chat uses it
    left = db.fetch_all(
        "SELECT id::text AS id FROM uploads WHERE user_id = :u ORDER BY created_at",
        u=alice.user_id,
    )
    assert {row["id"] for row in left} == {records[1].upload_id, records[2].upload_id}
    pending = db.fetch_one(
        "SELECT count(*) AS n FROM storage_deletions WHERE object_name = :o",
        o=records[0].object_name,
    )
    assert pending == {"n": 0}
    # The shared object is still shown in the other chat's history.
    message = alice.get(f"/api/chats/{other_chat['chatId']}").json()[-1]
    assert requests.get(message["media_url"], timeout=10).content == PNG


def test_a_prefix_row_deletes_every_object_of_that_user_only(
    db: Database,
    media_store: MediaStorage,
    storage_client: Any,
    quiet_queue: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = media_store.bucket_name
    user = "user_" + uuid.uuid4().hex[:12]
    mine = [f"uploads/{user}/{uuid.uuid4()}/{n}.png" for n in range(5)]
    neighbours = [f"uploads/{user}x/{uuid.uuid4()}/a.png", f"uploads/x{user}/1/b.png"]
    put_objects(storage_client, bucket, mine + neighbours)
    monkeypatch.setattr(deletions, "PREFIX_OBJECTS_PER_PASS", 2)  # several passes for 5 objects
    queue(db, bucket, prefix=f"uploads/{user}/")

    passes = 0
    while db.fetch_one(
        "SELECT 1 AS x FROM storage_deletions WHERE prefix = :p", p=f"uploads/{user}/"
    ):
        sweep_once(db, storage_client, 10)
        passes += 1
        assert passes < 10
    assert passes == 3  # 2 + 2 + 1 objects: a pass that finds fewer than 2 finishes the row
    assert not any(exists(storage_client, bucket, name) for name in mine)
    assert all(exists(storage_client, bucket, name) for name in neighbours)


def test_a_row_left_by_a_crashed_worker_is_retried_when_its_lease_ends(
    db: Database, media_store: MediaStorage, storage_client: Any, quiet_queue: None
) -> None:
    bucket = media_store.bucket_name
    name = f"uploads/user_crash/{uuid.uuid4()}/a.png"
    put_objects(storage_client, bucket, [name])
    queue(db, bucket, objects=[name])

    claimed = claim_storage_deletions(db, 10, lease_seconds=2)  # ...and the worker dies here
    assert [row["object_name"] for row in claimed] == [name]
    assert sweep_once(db, storage_client, 10) == 0  # leased: nobody else takes it
    assert exists(storage_client, bucket, name)
    time.sleep(2.2)
    assert sweep_once(db, storage_client, 10) == 1
    assert not exists(storage_client, bucket, name)
    assert (
        db.fetch_one("SELECT 1 AS x FROM storage_deletions WHERE object_name = :o", o=name) is None
    )
    # Done twice is still done: the object is already gone when a retry comes.
    queue(db, bucket, objects=[name])
    assert sweep_once(db, storage_client, 10) == 1


def test_failures_back_off_exponentially_and_are_never_dropped(
    db: Database, media_store: MediaStorage, storage_client: Any, quiet_queue: None
) -> None:
    # A prefix that is not one user's folder is refused: it would empty the bucket.
    queue(db, media_store.bucket_name, prefix="uploads/")
    try:
        for attempt, backoff in ((1, 60), (2, 120), (3, 240)):
            assert sweep_once(db, storage_client, 10) == 0
            row = db.fetch_one(
                "SELECT attempts, EXTRACT(EPOCH FROM not_before - now())::int AS wait "
                "FROM storage_deletions WHERE prefix = 'uploads/'"
            )
            assert row is not None and row["attempts"] == attempt
            assert backoff - 5 <= row["wait"] <= backoff
            db.fetch_all(
                "UPDATE storage_deletions SET not_before = now() WHERE prefix = 'uploads/' "
                "RETURNING id"
            )  # time passes
    finally:
        db.fetch_all("DELETE FROM storage_deletions WHERE prefix = 'uploads/' RETURNING id")
    assert deletions.backoff_seconds(30) == 6 * 3600  # capped


def test_concurrent_workers_never_take_the_same_row(
    stack: LocalStack,
    db: Database,
    media_store: MediaStorage,
    storage_client: Any,
    quiet_queue: None,
) -> None:
    bucket = media_store.bucket_name
    kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])
    pool = Database(lambda: pg8000.dbapi.connect(**kwargs), pool_size=8)
    try:
        # The claims alone: eight workers at once split 40 rows without overlap.
        names = [f"uploads/user_claims/{uuid.uuid4()}/{n}.png" for n in range(40)]
        queue(db, bucket, objects=names)
        claims: list[list[str]] = []
        barrier = threading.Barrier(8)

        def claim() -> None:
            barrier.wait()
            mine: list[str] = []
            while rows := claim_storage_deletions(pool, 3):
                mine += [row["object_name"] for row in rows]
            claims.append(mine)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        taken = [name for mine in claims for name in mine]
        assert sorted(taken) == sorted(names)  # each exactly once
        db.fetch_all(
            "DELETE FROM storage_deletions "
            "WHERE object_name LIKE 'uploads/user_claims/%' RETURNING id"
        )

        # The whole worker: four instances draining 30 objects finish each exactly once.
        names = [f"uploads/user_workers/{uuid.uuid4()}/{n}.png" for n in range(30)]
        put_objects(storage_client, bucket, names)
        queue(db, bucket, objects=names)
        finished: list[int] = []

        def work() -> None:
            total = 0
            while done := process_storage_deletions(
                pool, CloudObjectStore(storage_client), 4
            ).finished:
                total += done
            finished.append(total)

        workers = [threading.Thread(target=work) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert sum(finished) == 30
        assert not any(exists(storage_client, bucket, name) for name in names)
    finally:
        pool.close()


def test_the_sweep_function_drains_what_is_due(
    stack: LocalStack,
    db: Database,
    media_store: MediaStorage,
    storage_client: Any,
    quiet_queue: None,
) -> None:
    bucket = media_store.bucket_name
    names = [f"uploads/user_sweep/{uuid.uuid4()}/{n}.png" for n in range(3)]
    put_objects(storage_client, bucket, names)
    queue(db, bucket, objects=names[:2], prefix="uploads/user_sweep/")
    response = requests.post(stack.function_urls["storage_sweep"] + "/", timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"finished": 3, "due": 0}
    assert not any(exists(storage_client, bucket, name) for name in names)
    # Nothing due: the sweep is one cheap query.
    assert requests.post(stack.function_urls["storage_sweep"] + "/", timeout=60).json() == {
        "finished": 0,
        "due": 0,
    }


def test_a_claim_skips_rows_another_worker_is_claiming_without_waiting(
    db: Database, media_store: MediaStorage, storage_client: Any, quiet_queue: None
) -> None:
    names = [f"uploads/user_locks/{n}.png" for n in range(6)]
    queue(db, media_store.bucket_name, objects=names)
    # Another worker's claim, caught between taking its row locks and committing.
    with db.transaction() as other:
        held = other.fetch_all(
            "SELECT id FROM storage_deletions WHERE object_name IN (:a, :b) FOR UPDATE",
            a=names[0],
            b=names[1],
        )
        assert len(held) == 2
        started = time.monotonic()
        rows = claim_storage_deletions(db, 100)  # on the pool's second connection
        assert time.monotonic() - started < 2  # skipped, not waited for
        assert sorted(row["object_name"] for row in rows) == names[2:]
    # Released without being claimed: still due, for the next worker.
    assert sorted(row["object_name"] for row in claim_storage_deletions(db, 100)) == names[:2]
    db.fetch_all(
        "UPDATE storage_deletions SET not_before = now() "
        "WHERE object_name LIKE 'uploads/user_locks/%' RETURNING id"
    )
    assert sweep_once(db, storage_client, 100) == 6
