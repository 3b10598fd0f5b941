"""clerk_webhook through HTTP, as Clerk (through Svix) calls it, against the real database.

Deliveries are signed with svix's own code and shaped like Clerk's real events: an envelope
``{"data", "object": "event", "type", "timestamp", "instance_id", ...}`` around Clerk's User
object (``user.created``/``user.updated``) or ``{"id", "deleted": true, "object": "user"}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from svix.webhooks import Webhook

from dev.bundle import REPO_ROOT
from dev.stack import LocalStack, free_port, http_answers
from shared import users
from shared.db import Database
from tests.conftest import ApiClient, assert_error, read_logs, stream_events, upload_file
from tests.helpers import (
    Svix,
    add_messages,
    assert_acknowledged,
    clerk_event,
    clerk_user,
    deleted_event,
    new_msg_id,
    new_user_id,
    now_ms,
    user_row,
)

# Tables holding a user's rows, directly or through a chat.
USER_TABLES = (
    "users WHERE id",
    "chats WHERE user_id",
    "uploads WHERE user_id",
    "usage_daily WHERE user_id",
    "rate_limit_windows WHERE user_id",
)
CHAT_TABLES = ("messages WHERE chat_id", "summaries WHERE chat_id", "chat_uploads WHERE chat_id")


def recorded(db: Database, msg_id: str) -> dict[str, Any] | None:
    return db.fetch_one("SELECT event_type FROM webhook_events WHERE svix_id = :id", id=msg_id)


# --- user.created / user.updated ---------------------------------------------------------------


def test_user_created_stores_the_profile_with_the_primary_email(svix: Svix, db: Database) -> None:
    user_id, msg_id, version = new_user_id(), new_msg_id(), now_ms()
    data = clerk_user(
        user_id, updated_at=version, email="ada@example.com", other_emails=("old@example.com",)
    )
    assert_acknowledged(svix.deliver(clerk_event("user.created", data), msg_id), "user saved")
    assert user_row(db, user_id) == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "image_url": "https://img.clerk.com/ada.png",
        "clerk_updated_at": version,
    }
    assert recorded(db, msg_id) == {"event_type": "user.created"}


def test_user_without_email_or_names_is_stored_with_nulls(svix: Svix, db: Database) -> None:
    user_id = new_user_id()
    data = clerk_user(user_id, updated_at=now_ms(), email=None, first_name=None, last_name=None)
    assert_acknowledged(svix.deliver(clerk_event("user.created", data)), "user saved")
    row = user_row(db, user_id)
    assert row is not None
    assert (row["email"], row["first_name"], row["last_name"]) == (None, None, None)


def test_user_updated_replaces_the_profile(svix: Svix, db: Database) -> None:
    user_id, created = new_user_id(), now_ms()
    svix.deliver(clerk_event("user.created", clerk_user(user_id, updated_at=created)))
    changed = clerk_user(
        user_id,
        updated_at=created + 5000,
        email="countess@example.com",
        first_name="Augusta Ada",
        last_name="King",
        image_url="https://img.clerk.com/king.png",
        other_emails=("ada@example.com",),
    )
    assert_acknowledged(svix.deliver(clerk_event("user.updated", changed)), "user saved")
    assert user_row(db, user_id) == {
        "email": "countess@example.com",
        "first_name": "Augusta Ada",
        "last_name": "King",
        "image_url": "https://img.clerk.com/king.png",
        "clerk_updated_at": created + 5000,
    }


def test_user_updated_first_creates_the_user(svix: Svix, db: Database) -> None:
    user_id = new_user_id()
    data = clerk_user(user_id, updated_at=now_ms(), first_name="Grace")
    assert_acknowledged(svix.deliver(clerk_event("user.updated", data)), "user saved")
    row = user_row(db, user_id)
    assert row is not None and row["first_name"] == "Grace"


def test_an_older_event_arriving_later_never_overwrites_newer_data(
    svix: Svix, db: Database
) -> None:
    user_id, created = new_user_id(), now_ms()
    older = clerk_user(user_id, updated_at=created + 1000, first_name="Older")
    newer = clerk_user(user_id, updated_at=created + 2000, first_name="Newer")
    # Delivered out of order: the newest update first, then the older one, then the creation.
    assert_acknowledged(svix.deliver(clerk_event("user.updated", newer)), "user saved")
    stale = "ignored: a newer profile is already stored"
    assert_acknowledged(svix.deliver(clerk_event("user.updated", older)), stale)
    creation = clerk_user(user_id, updated_at=created, first_name="Original")
    assert_acknowledged(svix.deliver(clerk_event("user.created", creation)), stale)
    row = user_row(db, user_id)
    assert row is not None
    assert (row["first_name"], row["clerk_updated_at"]) == ("Newer", created + 2000)


def test_a_user_first_seen_by_token_merges_with_the_webhook(
    make_user: Any, svix: Svix, db: Database
) -> None:
    client: ApiClient = make_user(email="token@example.com", first_name="Tok", last_name="En")
    chat = client.create_chat("before the webhook")  # creates the bare row from the claims
    assert client.user_id is not None
    before = user_row(db, client.user_id)
    assert before is not None and before["clerk_updated_at"] is None
    version = now_ms()
    data = clerk_user(
        client.user_id,
        updated_at=version,
        email="real@example.com",
        first_name="Real",
        last_name="Name",
    )
    assert_acknowledged(svix.deliver(clerk_event("user.created", data)), "user saved")
    assert user_row(db, client.user_id) == {
        "email": "real@example.com",
        "first_name": "Real",
        "last_name": "Name",
        "image_url": "https://img.clerk.com/ada.png",
        "clerk_updated_at": version,
    }
    # The same user, nothing lost: the chat made before the webhook is still theirs.
    assert [c["chatId"] for c in client.get("/api/chats").json()] == [chat["chatId"]]


# --- a token's user (users.ensure_user) ----------------------------------------------------------


def row_version(db: Database, user_id: str) -> tuple[str, str]:
    """The row's ``xmin`` and ``xmax``: a new version, or a lock (``xmax``), changes them."""
    row = db.fetch_one(
        "SELECT xmin::text AS xmin, xmax::text AS xmax FROM users WHERE id = :id", id=user_id
    )
    assert row is not None
    return row["xmin"], row["xmax"]


def test_a_complete_user_seen_again_is_neither_written_nor_locked(db: Database) -> None:
    """Every user's first request on each instance ensures their row: for a row that lacks
    nothing, that must not lock it (a lock takes a transaction id, so the commit flushes WAL)."""
    user_id = f"user_{uuid.uuid4().hex}"
    profile = {"email": "a@example.com", "first_name": "Ada", "last_name": "L"}
    assert users.ensure_user(db, user_id, **profile)
    created = row_version(db, user_id)
    assert created[1] == "0"
    assert users.ensure_user(db, user_id, **profile)
    assert users.ensure_user(db, user_id, email=None, first_name=None, last_name=None)
    assert row_version(db, user_id) == created
    assert user_row(db, user_id) == {**profile, "image_url": None, "clerk_updated_at": None}


def test_a_row_is_completed_from_the_claims_only_where_it_is_empty(db: Database) -> None:
    user_id = f"user_{uuid.uuid4().hex}"
    assert users.ensure_user(
        db, user_id, email="first@example.com", first_name=None, last_name=None
    )
    assert users.ensure_user(
        db, user_id, email="other@example.com", first_name="Bo", last_name=None
    )
    assert user_row(db, user_id) == {
        "email": "first@example.com",
        "first_name": "Bo",
        "last_name": None,
        "image_url": None,
        "clerk_updated_at": None,
    }


# --- user.deleted -------------------------------------------------------------------------------


def give_user_everything(db: Database, client: ApiClient, bucket: str) -> list[uuid.UUID]:
    """Chats with messages, a summary, uploads linked to chats, usage and rate-limit rows."""
    assert client.user_id is not None
    chat_ids = [uuid.UUID(client.create_chat(title)["chatId"]) for title in ("one", "two")]
    for chat_id in chat_ids:
        add_messages(db, str(chat_id), ["hello", "hi there"])
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO summaries (id, chat_id, version, covers_through_position, content) "
            "VALUES (:id, :chat_id, 1, 1, 'a summary')",
            id=uuid.uuid4(),
            chat_id=chat_ids[0],
        )
        for n, chat_id in enumerate(chat_ids):
            upload_id = uuid.uuid4()
            tx.execute(
                "INSERT INTO uploads (id, user_id, bucket, object_name, content_type, state) "
                "VALUES (:id, :user_id, :bucket, :name, 'image/png', 'uploaded')",
                id=upload_id,
                user_id=client.user_id,
                bucket=bucket,
                name=f"uploads/{client.user_id}/{upload_id}/photo{n}.png",
            )
            tx.execute(
                "INSERT INTO chat_uploads (chat_id, upload_id) VALUES (:c, :u)",
                c=chat_id,
                u=upload_id,
            )
        tx.execute(
            "INSERT INTO usage_daily (user_id, day, messages, input_tokens, output_tokens) "
            "VALUES (:user_id, current_date, 2, 100, 200)",
            user_id=client.user_id,
        )
        tx.execute(
            "INSERT INTO rate_limit_windows (user_id, window_start, messages) "
            "VALUES (:user_id, date_trunc('minute', now()), 2)",
            user_id=client.user_id,
        )
    return chat_ids


def count_rows_of(db: Database, user_id: str, chat_ids: list[uuid.UUID]) -> dict[str, int]:
    """Rows per table that belong to the user, directly or through one of their chats."""

    def count(table: str, key: object) -> int:
        row = db.fetch_one(f"SELECT count(*) AS n FROM {table} = :key", key=key)
        assert row is not None
        return int(row["n"])

    counts = {table: count(table, user_id) for table in USER_TABLES}
    for table in CHAT_TABLES:
        counts[table] = sum(count(table, chat_id) for chat_id in chat_ids)
    return counts


def test_user_deleted_removes_every_row_of_the_user_and_queues_their_objects(
    make_user: Any, stack: LocalStack, svix: Svix, db: Database
) -> None:
    bucket = stack.env["GCS_BUCKET_NAME"]
    doomed: ApiClient = make_user(email="doomed@example.com")
    kept: ApiClient = make_user(email="kept@example.com")
    assert doomed.user_id is not None and kept.user_id is not None
    chat_ids = give_user_everything(db, doomed, bucket)
    kept_chats = give_user_everything(db, kept, bucket)
    assert all(count_rows_of(db, doomed.user_id, chat_ids).values())

    response = svix.deliver(deleted_event(doomed.user_id))

    assert_acknowledged(response, "user deleted")
    assert count_rows_of(db, doomed.user_id, chat_ids) == dict.fromkeys(
        USER_TABLES + CHAT_TABLES, 0
    )
    assert all(count_rows_of(db, kept.user_id, kept_chats).values())
    # Both folders (checked uploads, and files PUT but not yet checked) are queued for a
    # sweep now (or already swept, which removes the row) and for a late sweep once upload
    # URLs signed before the deletion have expired.
    for root in ("uploads", "incoming"):
        sweeps = queued_sweeps(db, doomed.user_id, root)
        assert [sweep["when"] for sweep in sweeps] in (["now", "late"], ["late"]), root
        assert {sweep["bucket"] for sweep in sweeps} == {bucket}
    # Objects under the prefix are covered by it: none was queued one by one.
    singles = db.fetch_one(
        "SELECT count(*) AS n FROM storage_deletions WHERE starts_with(object_name, :prefix)",
        prefix=f"uploads/{doomed.user_id}/",
    )
    assert singles == {"n": 0}


def queued_sweeps(db: Database, user_id: str, root: str = "uploads") -> list[dict[str, Any]]:
    """The storage_deletions rows for one of the user's folders (``uploads/<user>/`` or
    ``incoming/<user>/``): ``when`` is "now" or "late"."""
    return db.fetch_all(
        """
        SELECT bucket, CASE WHEN not_before > now() + INTERVAL '15 minutes'
                            THEN 'late' ELSE 'now' END AS when
        FROM storage_deletions WHERE prefix = :prefix AND object_name IS NULL
        ORDER BY not_before
        """,
        prefix=f"{root}/{user_id}/",
    )


def test_late_sweep_comes_after_every_upload_url_signed_before_the_deletion(
    make_user: Any, stack: LocalStack, svix: Svix, db: Database
) -> None:
    client: ApiClient = make_user()
    assert client.get("/api/chats").status_code == 200
    assert client.user_id is not None
    assert_acknowledged(svix.deliver(deleted_event(client.user_id)), "user deleted")
    late = db.fetch_one(
        "SELECT EXTRACT(EPOCH FROM max(not_before) - now()) AS seconds FROM storage_deletions "
        "WHERE prefix = :prefix",
        prefix=f"uploads/{client.user_id}/",
    )
    assert late is not None
    upload_url_ttl = int(stack.env.get("UPLOAD_URL_TTL_SECONDS", "900"))
    assert upload_url_ttl < float(late["seconds"]) <= upload_url_ttl + 120


def test_an_event_retried_after_the_deletion_does_not_bring_the_user_back(
    svix: Svix, db: Database
) -> None:
    user_id, created = new_user_id(), now_ms()
    svix.deliver(clerk_event("user.created", clerk_user(user_id, updated_at=created)))
    assert_acknowledged(svix.deliver(deleted_event(user_id)), "user deleted")
    # An update Clerk sent before the deletion, retried by Svix after it.
    update = clerk_event("user.updated", clerk_user(user_id, updated_at=created + 1000))
    assert_acknowledged(svix.deliver(update), "ignored: the user was deleted")
    assert user_row(db, user_id) is None


def test_a_deleted_users_token_does_not_bring_them_back(
    stack: LocalStack, svix: Svix, db: Database
) -> None:
    # Known through the webhook only, so no instance remembers the user from a request.
    user_id = new_user_id()
    svix.deliver(clerk_event("user.created", clerk_user(user_id, updated_at=now_ms())))
    token = stack.signer.token(user_id, extra_claims={"email": "gone@example.com"})
    client = ApiClient(stack.base_url, token, user_id)
    assert_acknowledged(svix.deliver(deleted_event(user_id)), "user deleted")
    # Clerk's session token outlives the deletion by up to a minute.
    assert_error(client.get("/api/chats"), 401, "user_deleted")
    assert_error(client.post("/api/chats/create", json={"title": "x"}), 401, "user_deleted")
    assert user_row(db, user_id) is None


def test_an_instance_that_remembers_a_deleted_user_refuses_their_token_at_once(
    make_user: Any, svix: Svix, db: Database
) -> None:
    client: ApiClient = make_user(email="cached@example.com")
    client.create_chat("before")  # chats_crud has verified the token and synced the user
    with client.send("hello") as streamed:  # and so has chat_stream
        assert streamed.status_code == 200
        streamed.content  # noqa: B018 - read the whole stream
    assert client.user_id is not None
    assert_acknowledged(svix.deliver(deleted_event(client.user_id)), "user deleted")
    # Every function, whatever it remembers, answers 401 from the next request on.
    assert_error(client.get("/api/chats"), 401, "user_deleted")
    assert_error(client.post("/api/chats/create", json={"title": "x"}), 401, "user_deleted")
    assert_error(client.send("still there?"), 401, "user_deleted")
    refused = client.post("/api/upload-url", json={"filename": "a.png", "contentType": "image/png"})
    assert_error(refused, 401, "user_deleted")
    assert user_row(db, client.user_id) is None


def test_the_chat_list_refuses_a_deleted_user_it_has_listed_for(
    make_user: Any, svix: Svix, db: Database
) -> None:
    # The list reads the user's row in the page's own statement (web.checks_user_itself)
    # instead of a separate check: an instance that has listed for the user must still
    # refuse them at once, on every way through the handler.
    client: ApiClient = make_user(email="lister@example.com")
    client.create_chat("before")
    listed = client.get("/api/chats")
    assert listed.status_code == 200 and len(listed.json()) == 1
    assert client.user_id is not None
    assert_acknowledged(svix.deliver(deleted_event(client.user_id)), "user deleted")
    assert_error(client.get("/api/chats"), 401, "user_deleted")
    assert_error(client.get("/api/chats", params={"limit": 5}), 401, "user_deleted")
    assert_error(client.get("/api/chats", params={"q": "before"}), 401, "user_deleted")
    # A request the handler refuses on its own still hears about the deletion first.
    assert_error(client.get("/api/chats", params={"limit": "many"}), 401, "user_deleted")
    assert_error(client.get("/api/chats", params={"cursor": "not-ours"}), 401, "user_deleted")
    assert user_row(db, client.user_id) is None


def test_a_send_refuses_a_deleted_user_its_instance_has_answered(
    make_user: Any, svix: Svix, db: Database
) -> None:
    # A text send's statement is its user check (web.checks_user_itself): its rows name the
    # user, and a deleted user's chats are gone with them. Every way through must say 401.
    client: ApiClient = make_user(email="sender@example.com")
    chat_id = stream_events(client.send("hello"))[0]["chat_id"]
    assert client.user_id is not None
    assert_acknowledged(svix.deliver(deleted_event(client.user_id)), "user deleted")
    assert_error(client.send("a new chat"), 401, "user_deleted")
    assert_error(client.send("the old chat", chat_id), 401, "user_deleted")
    edit = {"chatId": chat_id, "editMessageId": str(uuid.uuid4()), "messages": []}
    assert_error(client.post("/chat", json=edit), 401, "user_deleted")
    assert_error(
        client.post("/chat", json={"chatId": chat_id, "regenerate": True}), 401, "user_deleted"
    )
    assert_error(client.post("/chat", json={"messages": []}), 401, "user_deleted")
    assert user_row(db, client.user_id) is None


def test_a_send_brings_back_a_row_gone_without_a_queued_deletion(
    make_user: Any, db: Database
) -> None:
    client: ApiClient = make_user(email="returning-sender@example.com")
    with client.send("hello") as streamed:
        assert streamed.status_code == 200
        streamed.content  # noqa: B018 - read the whole stream
    assert client.user_id is not None
    with db.transaction() as tx:
        tx.execute("DELETE FROM users WHERE id = :id", id=client.user_id)
    assert stream_events(client.send("hello again"))[-1]["type"] == "done"
    row = user_row(db, client.user_id)
    assert row is not None and row["email"] == "returning-sender@example.com"


def test_the_chat_list_brings_back_a_row_gone_without_a_queued_deletion(
    make_user: Any, db: Database
) -> None:
    # Past the late sweep nothing remembers a deleted user: a token then creates the row
    # again, as on a first request (KnownUsers), whichever check finds it missing.
    client: ApiClient = make_user(email="returning@example.com")
    assert client.get("/api/chats").status_code == 200
    assert client.user_id is not None
    with db.transaction() as tx:
        tx.execute("DELETE FROM users WHERE id = :id", id=client.user_id)
    listed = client.get("/api/chats")
    assert listed.status_code == 200 and listed.json() == []
    row = user_row(db, client.user_id)
    assert row is not None and row["email"] == "returning@example.com"


def test_user_deleted_also_queues_uploads_outside_the_user_prefix(
    make_user: Any, svix: Svix, db: Database
) -> None:
    client: ApiClient = make_user()
    assert client.get("/api/chats").status_code == 200
    stray = f"legacy/{uuid.uuid4()}.png"
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO uploads (id, user_id, bucket, object_name, content_type, state) "
            "VALUES (:id, :user_id, 'raven-old-bucket', :name, 'image/png', 'uploaded')",
            id=uuid.uuid4(),
            user_id=client.user_id,
            name=stray,
        )
    assert client.user_id is not None
    assert_acknowledged(svix.deliver(deleted_event(client.user_id)), "user deleted")
    queued = db.fetch_all(
        "SELECT bucket, prefix FROM storage_deletions WHERE object_name = :name", name=stray
    )
    assert queued in ([], [{"bucket": "raven-old-bucket", "prefix": None}])


def test_user_deleted_removes_the_users_objects_from_the_bucket(
    make_user: Any, stack: LocalStack, svix: Svix, db: Database
) -> None:
    if not stack.env.get("STORAGE_EMULATOR_HOST"):
        pytest.skip("the local stack has no storage emulator")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=stack.env.get("PROJECT_ID") or "raven-local",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": stack.env["STORAGE_EMULATOR_HOST"]},
    )
    bucket = client.bucket(stack.env["GCS_BUCKET_NAME"])
    doomed: ApiClient = make_user()
    kept: ApiClient = make_user()
    assert doomed.user_id is not None and kept.user_id is not None
    give_user_everything(db, doomed, bucket.name)  # recorded uploads (rows only)
    names = [
        row["object_name"]
        for row in db.fetch_all(
            "SELECT object_name FROM uploads WHERE user_id = :id", id=doomed.user_id
        )
    ]
    # ...their objects, one the database never knew (a PUT it did not see complete), and
    # files PUT but never used in a message (under incoming/)
    names.append(f"uploads/{doomed.user_id}/{uuid.uuid4()}/unrecorded.txt")
    names.append(f"incoming/{doomed.user_id}/{uuid.uuid4()}/never-sent.txt")
    names.append(upload_file(doomed, b"unchecked", "later.txt", "text/plain")["object_name"])
    kept_names = [
        f"uploads/{kept.user_id}/{uuid.uuid4()}/mine.txt",
        f"incoming/{kept.user_id}/{uuid.uuid4()}/mine.txt",
    ]
    for name in [*names, *kept_names]:
        bucket.blob(name).upload_from_string(b"content", content_type="text/plain")

    assert_acknowledged(svix.deliver(deleted_event(doomed.user_id)), "user deleted")

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [
            blob.name
            for root in ("uploads", "incoming")
            for blob in client.list_blobs(bucket, prefix=f"{root}/{doomed.user_id}/")
        ]
        if not left:
            break
        time.sleep(0.2)
    assert left == []
    assert all(bucket.get_blob(name) is not None for name in kept_names)
    # The sweeps due now are done and their rows gone; the late ones stay queued until they run.
    for root in ("uploads", "incoming"):
        assert [sweep["when"] for sweep in queued_sweeps(db, doomed.user_id, root)] == ["late"]


def test_deleting_an_unknown_user_is_a_noop(svix: Svix, db: Database) -> None:
    user_id = new_user_id()
    assert_acknowledged(svix.deliver(deleted_event(user_id)), "no such user")
    assert db.fetch_one(
        "SELECT count(*) AS n FROM storage_deletions WHERE prefix = :prefix",
        prefix=f"uploads/{user_id}/",
    ) == {"n": 0}


# --- verification ---------------------------------------------------------------------------------


def assert_nothing_written(db: Database, user_id: str, msg_id: str) -> None:
    assert user_row(db, user_id) is None
    assert recorded(db, msg_id) is None


def test_a_wrong_signature_is_refused(svix: Svix, db: Database) -> None:
    user_id, msg_id = new_user_id(), new_msg_id()
    body = json.dumps(clerk_event("user.created", clerk_user(user_id, updated_at=now_ms())))
    other_secret = Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    for headers in (
        svix.headers(body, msg_id, webhook=other_secret),
        # signed for another message id, or another body
        {**svix.headers(body, msg_id), "svix-id": new_msg_id()},
        {**svix.headers(body.replace("Ada", "Eve"), msg_id)},
    ):
        response = svix.post(body, headers)
        assert_error(response, 400, "invalid_signature")
    assert_nothing_written(db, user_id, msg_id)


def test_each_missing_header_is_refused(svix: Svix, db: Database) -> None:
    user_id, msg_id = new_user_id(), new_msg_id()
    body = json.dumps(clerk_event("user.created", clerk_user(user_id, updated_at=now_ms())))
    signed = svix.headers(body, msg_id)
    for header in ("svix-id", "svix-timestamp", "svix-signature"):
        headers = {name: value for name, value in signed.items() if name != header}
        body_error = assert_error(svix.post(body, headers), 400, "missing_webhook_headers")
        assert header in body_error["detail"]
        assert_error(svix.post(body, {**headers, header: ""}), 400, "missing_webhook_headers")
    assert_nothing_written(db, user_id, msg_id)


def test_malformed_headers_are_refused_not_crashed_on(svix: Svix, db: Database) -> None:
    user_id, msg_id = new_user_id(), new_msg_id()
    body = json.dumps(clerk_event("user.created", clerk_user(user_id, updated_at=now_ms())))
    signed = svix.headers(body, msg_id)
    for header, value in (
        ("svix-signature", "garbage"),
        ("svix-signature", "v1,not base64!"),
        ("svix-signature", "v1,a,b"),
        ("svix-timestamp", "yesterday"),
        ("svix-timestamp", "nan"),
        ("svix-timestamp", "1e400"),
    ):
        assert_error(svix.post(body, {**signed, header: value}), 400, "invalid_signature")
    non_utf8 = body.encode() + b"\xff"
    assert_error(svix.post(non_utf8, signed), 400, "invalid_signature")
    assert_nothing_written(db, user_id, msg_id)


@pytest.mark.parametrize("skew", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_a_stale_or_future_timestamp_is_refused(svix: Svix, db: Database, skew: timedelta) -> None:
    user_id, msg_id = new_user_id(), new_msg_id()
    body = json.dumps(clerk_event("user.created", clerk_user(user_id, updated_at=now_ms())))
    # Correctly signed, but outside svix's 5-minute tolerance: a replay, or a skewed clock.
    headers = svix.headers(body, msg_id, at=datetime.now(tz=UTC) + skew)
    detail = assert_error(svix.post(body, headers), 400, "invalid_signature")["detail"]
    assert "timestamp" in detail
    assert_nothing_written(db, user_id, msg_id)


def test_a_timestamp_within_tolerance_is_accepted(svix: Svix, db: Database) -> None:
    user_id = new_user_id()
    body = json.dumps(clerk_event("user.created", clerk_user(user_id, updated_at=now_ms())))
    at = datetime.now(tz=UTC) - timedelta(minutes=4)
    assert_acknowledged(svix.post(body, svix.headers(body, new_msg_id(), at=at)), "user saved")


def test_one_valid_signature_among_several_is_enough(svix: Svix, db: Database) -> None:
    user_id, msg_id = new_user_id(), new_msg_id()
    body = json.dumps(clerk_event("user.created", clerk_user(user_id, updated_at=now_ms())))
    at = datetime.now(tz=UTC)
    headers = svix.headers(body, msg_id, at=at)
    rotated_out = Webhook("whsec_" + "b2xkIHNlY3JldCBvbGQgc2VjcmV0IG9sZCBz").sign(msg_id, at, body)
    forged = "v1," + "A" * 43 + "="
    # Svix sends one v1 item per active secret while a secret is rotated, space-separated.
    headers["svix-signature"] = f"{rotated_out} {forged} {headers['svix-signature']}"
    assert_acknowledged(svix.post(body, headers), "user saved")
    assert user_row(db, user_id) is not None

    other_id, other_msg = new_user_id(), new_msg_id()
    body = json.dumps(clerk_event("user.created", clerk_user(other_id, updated_at=now_ms())))
    headers = svix.headers(body, other_msg, at=at)
    headers["svix-signature"] = f"{rotated_out} {forged}"  # several, none valid
    assert_error(svix.post(body, headers), 400, "invalid_signature")
    assert_nothing_written(db, other_id, other_msg)


# --- verified but unusable bodies --------------------------------------------------------------


def test_a_verified_body_that_is_not_an_event_is_refused(svix: Svix, db: Database) -> None:
    user_id = new_user_id()
    cases = [
        ("{not json", "invalid_json"),
        ("", "invalid_json"),
        ('["a", "list"]', "invalid_event"),
        (json.dumps({"data": {"id": user_id}}), "invalid_event"),
        ('{"type": "user.created"}', "invalid_event"),
        ('{"type": "user.created", "data": "text"}', "invalid_event"),
        ('{"type": 5, "data": {}}', "invalid_event"),
        # a handled type whose data is not a user: no id, or no updated_at
        (json.dumps(clerk_event("user.created", {"object": "user"})), "invalid_event"),
        (
            json.dumps(clerk_event("user.updated", {"id": user_id, "first_name": "X"})),
            "invalid_event",
        ),
        (json.dumps(clerk_event("user.deleted", {"deleted": True})), "invalid_event"),
    ]
    for body, code in cases:
        msg_id = new_msg_id()
        assert_error(svix.post(body, svix.headers(body, msg_id)), 400, code)
        assert recorded(db, msg_id) is None, body
    assert user_row(db, user_id) is None


def test_an_unknown_event_type_is_acknowledged_and_changes_nothing(
    make_user: Any, svix: Svix, db: Database
) -> None:
    client: ApiClient = make_user(email="still@example.com")
    client.create_chat("stays")
    assert client.user_id is not None
    before = user_row(db, client.user_id)
    for event_type, data in (
        (
            "session.created",
            {"id": "sess_123", "object": "session", "user_id": client.user_id, "status": "active"},
        ),
        ("organization.deleted", {"id": "org_123", "deleted": True}),
        ("email.created", {"id": "ema_1", "to_email_address": "still@example.com"}),
    ):
        msg_id = new_msg_id()
        response = svix.deliver(clerk_event(event_type, data), msg_id)
        assert_acknowledged(response, "ignored: event type not handled")
        assert recorded(db, msg_id) is None
    assert user_row(db, client.user_id) == before
    assert [c["title"] for c in client.get("/api/chats").json()] == ["stays"]


# --- exactly once ------------------------------------------------------------------------------


def test_a_redelivered_id_is_not_applied_again(svix: Svix, db: Database) -> None:
    user_id, msg_id, version = new_user_id(), new_msg_id(), now_ms()
    event = clerk_event("user.created", clerk_user(user_id, updated_at=version))
    assert_acknowledged(svix.deliver(event, msg_id), "user saved")
    # Make a re-application visible: were it applied again, it would restore these fields.
    with db.transaction() as tx:
        tx.execute(
            "UPDATE users SET first_name = 'Edited', clerk_updated_at = NULL WHERE id = :id",
            id=user_id,
        )
    # Svix retries with the same id but a fresh timestamp and signature.
    time.sleep(1.1)
    assert_acknowledged(svix.deliver(event, msg_id), "already processed")
    row = user_row(db, user_id)
    assert row is not None and row["first_name"] == "Edited"


@contextmanager
def another_instance(stack: LocalStack) -> Iterator[str]:
    """A further clerk_webhook instance on the same database, as Cloud Run scales out."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--target",
            "clerk_webhook",
            "--source",
            str(REPO_ROOT / "functions" / "clerk_webhook" / "main.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO_ROOT,
        env={**stack.env, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not http_answers(url + "/__healthz"):
            assert process.poll() is None, "the instance exited during start"
            assert time.monotonic() < deadline, "the instance did not start"
            time.sleep(0.1)
        yield url + "/clerk-webhook"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def second_instance(stack: LocalStack) -> Iterator[str]:
    with another_instance(stack) as url:
        yield url


def race(urls: list[str], body: str, headers: dict[str, str], senders: int = 8) -> list[str]:
    """The same delivery from ``senders`` threads at once, spread over ``urls``."""
    start = threading.Barrier(senders)
    messages: list[str] = []

    def send(url: str) -> None:
        start.wait()
        response = requests.post(url, data=body.encode(), headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        messages.append(response.json()["message"])

    threads = [threading.Thread(target=send, args=(urls[n % len(urls)],)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(messages) == senders
    return messages


@pytest.mark.slow
@pytest.mark.parametrize("event_type", ["user.created", "user.deleted"])
def test_concurrent_duplicates_on_two_instances_apply_exactly_once(
    make_user: Any, svix: Svix, second_instance: str, db: Database, event_type: str
) -> None:
    urls = [svix.url, second_instance]
    for _ in range(3):  # a few rounds, each a fresh delivery racing itself
        client: ApiClient = make_user()
        assert client.get("/api/chats").status_code == 200
        assert client.user_id is not None
        if event_type == "user.deleted":
            event = deleted_event(client.user_id)
        else:
            event = clerk_event(event_type, clerk_user(client.user_id, updated_at=now_ms()))
        body, msg_id = json.dumps(event), new_msg_id()
        messages = race(urls, body, svix.headers(body, msg_id))
        applied = [message for message in messages if message != "already processed"]
        assert applied == ["user deleted" if event_type == "user.deleted" else "user saved"]
        assert recorded(db, msg_id) == {"event_type": event_type}
        if event_type == "user.deleted":
            late_sweeps = [s for s in queued_sweeps(db, client.user_id) if s["when"] == "late"]
            assert len(late_sweeps) == 1


# --- operations --------------------------------------------------------------------------------


def test_logs_carry_no_personal_data(stack: LocalStack, svix: Svix) -> None:
    user_id, msg_id = new_user_id(), new_msg_id()
    email, first, last = "private.person@example.org", "Privatefirst", "Privatelast"
    data = clerk_user(user_id, updated_at=now_ms(), email=email, first_name=first, last_name=last)
    svix.deliver(clerk_event("user.created", data), msg_id)
    svix.deliver(clerk_event("user.updated", {**data, "first_name": "Privatesecond"}), msg_id)
    body = json.dumps(clerk_event("user.created", data))
    svix.post(body, {**svix.headers(body, new_msg_id()), "svix-signature": "v1,AAAA"})
    time.sleep(0.2)
    lines = [json.dumps(entry) for entry in read_logs(stack, "clerk_webhook")]
    assert any(msg_id in line and "user.created" in line for line in lines)
    for secret in (email, first, last, "Privatesecond", stack.env["CLERK_WEBHOOK_SECRET"]):
        assert not [line for line in lines if secret in line], secret


@pytest.mark.slow
def test_old_webhook_events_are_pruned(stack: LocalStack, svix: Svix, db: Database) -> None:
    old_id, recent_id = new_msg_id(), new_msg_id()
    with db.transaction() as tx:
        for msg_id, age in ((old_id, "31 days"), (recent_id, "29 days")):
            tx.execute(
                "INSERT INTO webhook_events (svix_id, event_type, processed_at) "
                "VALUES (:id, 'user.updated', now() - CAST(:age AS interval))",
                id=msg_id,
                age=age,
            )
    # A fresh instance prunes after its first delivery (then at most hourly).
    with another_instance(stack) as url:
        user_id = new_user_id()
        body = json.dumps(clerk_event("user.created", clerk_user(user_id, updated_at=now_ms())))
        response = requests.post(url, data=body, headers=svix.headers(body, new_msg_id()))
        assert_acknowledged(response, "user saved")
    assert recorded(db, old_id) is None
    assert recorded(db, recent_id) == {"event_type": "user.updated"}
