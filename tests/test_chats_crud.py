"""chats_crud through HTTP, as the frontend calls it, against the real database."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from shared.db import Database
from tests.conftest import ApiClient, assert_error
from tests.helpers import add_messages

# --- create ------------------------------------------------------------------------------


def test_create_with_title_returns_chat_object_and_chat_id(alice: ApiClient) -> None:
    before = time.time()
    response = alice.post("/api/chats/create", json={"title": "Trip to Lisbon"})
    assert response.status_code == 200
    chat = response.json()
    assert chat["chat_id"] == chat["chatId"]
    uuid.UUID(chat["chatId"])
    assert chat["userId"] == alice.user_id
    assert chat["title"] == "Trip to Lisbon"
    assert before - 1 <= chat["createdAt"] <= time.time() + 1
    assert isinstance(chat["createdAt"], float)


def test_create_without_title_is_new_chat(alice: ApiClient) -> None:
    for body in ({}, {"title": None}, {"title": "   "}):
        response = alice.post("/api/chats/create", json=body)
        assert response.status_code == 200, body
        assert response.json()["title"] == "New Chat"
    # The frontend may also send no body at all.
    response = alice.post("/api/chats/create")
    assert response.status_code == 200
    assert response.json()["title"] == "New Chat"


def test_create_ignores_user_id_in_body(alice: ApiClient, bob: ApiClient) -> None:
    chat = alice.post("/api/chats/create", json={"title": "mine", "user_id": bob.user_id}).json()
    assert chat["userId"] == alice.user_id
    assert [c["chatId"] for c in bob.get("/api/chats").json()] == []


def test_create_rejects_bad_input(alice: ApiClient) -> None:
    assert_error(alice.post("/api/chats/create", json={"title": 5}), 422, "validation_error")
    detail = assert_error(alice.post("/api/chats/create", json={"title": "x" * 201}), 422)
    assert "title" in detail["detail"]
    assert_error(
        alice.post(
            "/api/chats/create", data="{not json", headers={"Content-Type": "application/json"}
        ),
        400,
        "invalid_json",
    )
    assert_error(alice.post("/api/chats/create", json=["a list"]), 422)
    assert alice.get("/api/chats").json() == []


def test_first_request_creates_the_user_row(make_user: Any, db: Database) -> None:
    carol = make_user(email="carol@example.com", first_name="Carol", last_name="Jones")
    assert db.fetch_one("SELECT id FROM users WHERE id = :id", id=carol.user_id) is None
    assert carol.get("/api/chats").status_code == 200
    row = db.fetch_one("SELECT * FROM users WHERE id = :id", id=carol.user_id)
    assert row is not None
    assert (row["email"], row["first_name"], row["last_name"]) == (
        "carol@example.com",
        "Carol",
        "Jones",
    )


# --- list ----------------------------------------------------------------------------------


def test_list_is_most_recently_active_first(alice: ApiClient, db: Database) -> None:
    first = alice.create_chat("first")
    second = alice.create_chat("second")
    third = alice.create_chat("third")
    assert [c["title"] for c in alice.get("/api/chats").json()] == ["third", "second", "first"]
    add_messages(db, first["chatId"], ["hello again"])
    listed = alice.get("/api/chats").json()
    assert [c["chatId"] for c in listed] == [first["chatId"], third["chatId"], second["chatId"]]
    assert set(listed[0]) >= {"chatId", "userId", "title", "createdAt", "updatedAt"}


def test_listed_chats_are_the_objects_create_and_rename_return(alice: ApiClient) -> None:
    # The list's JSON is built by Postgres, create's and rename's in Python: same objects.
    created = alice.create_chat('Ünïcode "quoted" title ✓')
    renamed = alice.patch(f"/api/chats/{created['chatId']}", json={"title": "Ravens 🐦"}).json()
    [listed] = alice.get("/api/chats").json()
    assert listed == renamed
    assert {key: value for key, value in created.items() if key != "chat_id"} == {
        **renamed,
        "title": created["title"],
    }


def test_list_pages_with_a_cursor(alice: ApiClient) -> None:
    created = [alice.create_chat(f"chat {n}")["chatId"] for n in range(5)]
    seen: list[str] = []
    url = "/api/chats?limit=2"
    pages = 0
    while True:
        response = alice.get(url)
        assert response.status_code == 200
        seen += [chat["chatId"] for chat in response.json()]
        pages += 1
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in response.headers
            break
        assert 'rel="next"' in response.headers["Link"]
        url = f"/api/chats?limit=2&cursor={cursor}"
    assert pages == 3
    assert seen == list(reversed(created))


def test_list_rejects_bad_paging(alice: ApiClient) -> None:
    assert_error(alice.get("/api/chats?limit=0"), 422)
    assert_error(alice.get("/api/chats?limit=abc"), 422)
    assert_error(alice.get("/api/chats?limit=100000"), 422)
    assert_error(alice.get("/api/chats?cursor=%%%not-a-cursor"), 400, "invalid_cursor")


def test_list_shows_only_own_chats(alice: ApiClient, bob: ApiClient) -> None:
    alice.create_chat("alice's")
    bob.create_chat("bob's")
    assert [c["title"] for c in alice.get("/api/chats").json()] == ["alice's"]
    assert [c["title"] for c in bob.get("/api/chats").json()] == ["bob's"]


# --- read --------------------------------------------------------------------------------------


def test_read_returns_messages_oldest_first(alice: ApiClient, db: Database) -> None:
    chat = alice.create_chat("history")
    ids = add_messages(db, chat["chatId"], ["What is 2+2?", "4", "And 3+3?", "6"])
    response = alice.get(f"/api/chats/{chat['chatId']}")
    assert response.status_code == 200
    messages = response.json()
    assert [m["messageId"] for m in messages] == ids
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages] == ["What is 2+2?", "4", "And 3+3?", "6"]
    first = messages[0]
    assert first["media_type"] is None and first["media_url"] is None
    assert first["parts"] == [{"type": "text", "text": "What is 2+2?"}]
    assert first["status"] == "complete"
    assert isinstance(first["timestamp"], float)


def test_read_empty_chat_is_an_empty_list(alice: ApiClient) -> None:
    chat = alice.create_chat()
    response = alice.get(f"/api/chats/{chat['chatId']}")
    assert response.status_code == 200
    assert response.json() == []


def test_read_pages_back_through_history(alice: ApiClient, db: Database) -> None:
    chat = alice.create_chat()
    texts = [f"message {n}" for n in range(7)]
    add_messages(db, chat["chatId"], texts)
    newest = alice.get(f"/api/chats/{chat['chatId']}?limit=3")
    assert [m["content"] for m in newest.json()] == texts[4:]
    before = newest.headers["X-Next-Cursor"]
    middle = alice.get(f"/api/chats/{chat['chatId']}?limit=3&before={before}")
    assert [m["content"] for m in middle.json()] == texts[1:4]
    oldest = alice.get(
        f"/api/chats/{chat['chatId']}?limit=3&before={middle.headers['X-Next-Cursor']}"
    )
    assert [m["content"] for m in oldest.json()] == texts[:1]
    assert "X-Next-Cursor" not in oldest.headers


# --- rename ----------------------------------------------------------------------------------


def test_rename_returns_updated_chat(alice: ApiClient, db: Database) -> None:
    chat = alice.create_chat()
    response = alice.patch(f"/api/chats/{chat['chatId']}", json={"title": "  Renamed  "})
    assert response.status_code == 200
    updated = response.json()
    assert updated["title"] == "Renamed"
    assert updated["chatId"] == chat["chatId"]
    assert alice.get("/api/chats").json()[0]["title"] == "Renamed"
    row = db.fetch_one(
        "SELECT title_source FROM chats WHERE id = :id", id=uuid.UUID(chat["chatId"])
    )
    assert row == {"title_source": "user"}


def test_rename_rejects_bad_titles(alice: ApiClient) -> None:
    chat = alice.create_chat("keep me")
    path = f"/api/chats/{chat['chatId']}"
    assert_error(alice.patch(path, json={}), 422)
    assert_error(alice.patch(path, json={"title": ""}), 422)
    assert_error(alice.patch(path, json={"title": "   "}), 422)
    assert_error(alice.patch(path, json={"title": None}), 422)
    assert_error(alice.patch(path, json={"title": ["x"]}), 422)
    assert_error(alice.patch(path, json={"title": "t" * 201}), 422)
    assert_error(
        alice.patch(path, data=b"\xff\xfe", headers={"Content-Type": "application/json"}), 400
    )
    assert alice.get("/api/chats").json()[0]["title"] == "keep me"


# --- delete ----------------------------------------------------------------------------------


def test_delete_removes_chat_messages_and_summaries(alice: ApiClient, db: Database) -> None:
    chat = alice.create_chat("doomed")
    chat_id = uuid.UUID(chat["chatId"])
    add_messages(db, chat["chatId"], ["one", "two"])
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO summaries (id, chat_id, version, covers_through_position, content) "
            "VALUES (:id, :chat_id, 1, 1, 'summary')",
            id=uuid.uuid4(),
            chat_id=chat_id,
        )
    response = alice.delete(f"/api/chats/{chat['chatId']}")
    assert response.status_code == 200
    assert isinstance(response.json()["message"], str)
    for table in ("chats WHERE id", "messages WHERE chat_id", "summaries WHERE chat_id"):
        assert db.fetch_one(f"SELECT count(*) AS n FROM {table} = :id", id=chat_id) == {"n": 0}
    assert_error(alice.delete(f"/api/chats/{chat['chatId']}"), 404, "chat_not_found")
    assert_error(alice.get(f"/api/chats/{chat['chatId']}"), 404, "chat_not_found")


def test_delete_queues_only_media_no_other_chat_uses(alice: ApiClient, db: Database) -> None:
    doomed = alice.create_chat("doomed")
    kept = alice.create_chat("kept")
    only_here, shared = uuid.uuid4(), uuid.uuid4()
    with db.transaction() as tx:
        for upload_id in (only_here, shared):
            tx.execute(
                "INSERT INTO uploads (id, user_id, bucket, object_name, content_type, state) "
                "VALUES (:id, :user_id, 'bucket', :name, 'image/png', 'uploaded')",
                id=upload_id,
                user_id=alice.user_id,
                name=f"uploads/{alice.user_id}/{upload_id}/a.png",
            )
        for chat_id, upload_id in (
            (doomed["chatId"], only_here),
            (doomed["chatId"], shared),
            (kept["chatId"], shared),
        ):
            tx.execute(
                "INSERT INTO chat_uploads (chat_id, upload_id) VALUES (:c, :u)",
                c=uuid.UUID(chat_id),
                u=upload_id,
            )
    assert alice.delete(f"/api/chats/{doomed['chatId']}").status_code == 200
    remaining = {
        row["id"]
        for row in db.fetch_all("SELECT id FROM uploads WHERE user_id = :u", u=alice.user_id)
    }
    assert remaining == {shared}
    queued = db.fetch_all(
        "SELECT object_name FROM storage_deletions WHERE object_name LIKE :prefix",
        prefix=f"uploads/{alice.user_id}/%",
    )
    assert [row["object_name"] for row in queued] == [f"uploads/{alice.user_id}/{only_here}/a.png"]


# --- ownership and ids ----------------------------------------------------------------------------


def test_another_users_chat_is_not_found(alice: ApiClient, bob: ApiClient, db: Database) -> None:
    chat = alice.create_chat("private")
    add_messages(db, chat["chatId"], ["secret"])
    path = f"/api/chats/{chat['chatId']}"
    assert_error(bob.get(path), 404, "chat_not_found")
    assert_error(bob.patch(path, json={"title": "pwned"}), 404, "chat_not_found")
    assert_error(bob.delete(path), 404, "chat_not_found")
    assert alice.get("/api/chats").json()[0]["title"] == "private"
    assert [m["content"] for m in alice.get(path).json()] == ["secret"]


def test_unknown_and_malformed_ids_are_not_found(alice: ApiClient) -> None:
    for chat_id in (str(uuid.uuid4()), "not-a-uuid", "1", "%27%3B--"):
        path = f"/api/chats/{chat_id}"
        assert_error(alice.get(path), 404, "chat_not_found")
        assert_error(alice.patch(path, json={"title": "x"}), 404, "chat_not_found")
        assert_error(alice.delete(path), 404, "chat_not_found")


def test_unknown_path_and_method_are_json_errors(alice: ApiClient) -> None:
    assert_error(alice.request("PUT", "/api/chats/create"), 405, "method_not_allowed")
    assert_error(alice.request("POST", "/api/chats"), 405, "method_not_allowed")
    assert_error(alice.get("/api/nothing-here"), 404)


def test_oversized_body_is_413(alice: ApiClient) -> None:
    body = json.dumps({"title": "x" * 70_000})
    response = alice.post(
        "/api/chats/create", data=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")
