"""Media in POST /chat: uploads through signed URLs, the inclusion rules, ownership refusals."""

from __future__ import annotations

import time
import uuid
from typing import Any

import requests

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared.db import Database
from tests.conftest import ApiClient, assert_error, function_process, stream_events, upload_file

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def image_part(upload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image", "text": upload["gcs_url"], "mimeType": "image/png"}


def promoted_uri(upload: dict[str, Any]) -> str:
    """The gs:// URI of the upload once checked: its permanent name under uploads/."""
    return upload["gs_uri"].replace("/incoming/", "/uploads/", 1)


def file_parts(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The file parts the model received, in order."""
    found = []
    for content in request["body"]["contents"]:
        for part in content["parts"]:
            data = part.get("fileData") or part.get("file_data")
            if data:
                found.append(
                    {
                        "uri": data.get("fileUri") or data.get("file_uri"),
                        "mime": data.get("mimeType") or data.get("mime_type"),
                    }
                )
    return found


def send_and_capture(
    client: ApiClient,
    model: StandinControl,
    text: str,
    chat_id: str | None = None,
    media: list[dict[str, Any]] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    marker = uuid.uuid4().hex[:10]
    events = stream_events(client.send(f"{text} [{marker}]", chat_id, media=media))
    assert events[-1]["type"] == "done", events
    # The turn's own model call (a title task may quote the message too).
    calls = model.requests(match=marker)
    return events, next(r for r in calls if r["method"] == "streamGenerateContent")


def test_current_media_is_sent_and_shown_in_history(
    alice: ApiClient, model: StandinControl
) -> None:
    upload = upload_file(alice, PNG)
    events, request = send_and_capture(
        alice, model, "What is in this picture?", media=[image_part(upload)]
    )
    # The model reads the checked file under its permanent name, never the incoming one.
    assert file_parts(request) == [{"uri": promoted_uri(upload), "mime": "image/png"}]
    reply = "".join(e["content"] for e in events if e["type"] == "chunk")
    assert promoted_uri(upload) in reply  # the stand-in says which media it received

    history = alice.get(f"/api/chats/{events[0]['chat_id']}").json()
    question = history[0]
    assert question["media_type"] == "image/png"
    assert [p["type"] for p in question["parts"]] == ["text", "image"]
    assert question["content"].startswith("What is in this picture?")
    assert "/uploads/" in question["media_url"]
    fetched = requests.get(question["media_url"], timeout=10)  # signed GET through the router
    assert fetched.status_code == 200 and fetched.content == PNG
    # The same reference sent again later still names the promoted upload.
    events, again = send_and_capture(
        alice, model, "And now?", events[0]["chat_id"], media=[image_part(upload)]
    )
    assert file_parts(again)[-1] == {"uri": promoted_uri(upload), "mime": "image/png"}


def test_earlier_media_only_when_the_text_refers_to_it(
    alice: ApiClient, model: StandinControl
) -> None:
    upload = upload_file(alice, PNG)
    events, _ = send_and_capture(alice, model, "Here is my cat", media=[image_part(upload)])
    chat_id = events[0]["chat_id"]

    _, unrelated = send_and_capture(alice, model, "What is the capital of France?", chat_id)
    assert file_parts(unrelated) == []
    texts = [p.get("text", "") for c in unrelated["body"]["contents"] for p in c["parts"]]
    assert any("earlier image attachment" in text for text in texts)  # a note, not the bytes

    _, referring = send_and_capture(alice, model, "What colour is the cat in the photo?", chat_id)
    assert file_parts(referring) == [{"uri": promoted_uri(upload), "mime": "image/png"}]


def test_only_current_media_when_configured(
    stack: LocalStack, make_user: Any, model: StandinControl
) -> None:
    with function_process(stack, "chat_stream", MEDIA_INCLUDE_ONLY_CURRENT="true") as base:
        user = make_user()
        client = ApiClient(base, user.token, user.user_id)
        upload = upload_file(user, PNG)
        events, first = send_and_capture(client, model, "Look", media=[image_part(upload)])
        assert len(file_parts(first)) == 1
        _, later = send_and_capture(client, model, "Describe the image again", events[0]["chat_id"])
        assert file_parts(later) == []


def test_caps_keep_the_newest_media(
    stack: LocalStack, make_user: Any, model: StandinControl
) -> None:
    with function_process(stack, "chat_stream", MEDIA_MAX_IMAGES="1") as base:
        user = make_user()
        client = ApiClient(base, user.token, user.user_id)
        older, newer = upload_file(user, PNG), upload_file(user, PNG + b"2")
        events, _ = send_and_capture(client, model, "First", media=[image_part(older)])
        chat_id = events[0]["chat_id"]
        send_and_capture(client, model, "Second", chat_id, media=[image_part(newer)])
        _, comparing = send_and_capture(client, model, "Compare the two pictures", chat_id)
        assert file_parts(comparing) == [{"uri": promoted_uri(newer), "mime": "image/png"}]
        too_many = client.send("Both at once", media=[image_part(older), image_part(newer)])
        assert_error(too_many, 422, "too_many_media")


def test_someone_elses_or_unknown_media_is_refused_before_anything_is_stored(
    alice: ApiClient, bob: ApiClient, db: Database, model: StandinControl, stack: LocalStack
) -> None:
    alices = upload_file(alice, PNG)
    marker = uuid.uuid4().hex
    bucket = stack.env["GCS_BUCKET_NAME"]
    cases = [
        (image_part(alices), 404, "media_not_found"),
        (
            {
                "type": "image",
                "text": f"gs://{bucket}/uploads/{bob.user_id}/made/up.png",
                "mimeType": "image/png",
            },
            404,
            "media_not_found",
        ),
        (
            {"type": "image", "text": "gs://someone-elses-bucket/cat.png", "mimeType": "image/png"},
            422,
            "media_bucket_not_allowed",
        ),
        (
            {"type": "image", "text": "not a reference", "mimeType": "image/png"},
            422,
            "invalid_media_reference",
        ),
    ]
    for part, status, code in cases:
        assert_error(bob.send(f"steal {marker}", media=[part]), status, code)
    never_put = bob.post("/api/upload-url", json={"filename": "x.png", "contentType": "image/png"})
    assert never_put.status_code == 200
    assert_error(
        bob.send(f"steal {marker}", media=[image_part(never_put.json())]),
        422,
        "media_not_uploaded",
    )
    assert bob.get("/api/chats").json() == []  # no chat, no message stored
    assert model.requests(match=marker) == []  # the model was never called
    owned = db.fetch_all(
        "SELECT user_id FROM uploads WHERE object_name = :o", o=alices["object_name"]
    )
    assert owned == [{"user_id": alice.user_id}]


def test_deleting_the_chat_deletes_its_media_from_the_bucket(
    alice: ApiClient, model: StandinControl, storage_client: Any, stack: LocalStack
) -> None:
    upload = upload_file(alice, PNG)
    events, _ = send_and_capture(alice, model, "keep this safe", media=[image_part(upload)])
    bucket = storage_client.bucket(stack.env["GCS_BUCKET_NAME"])
    permanent = promoted_uri(upload).split("/", 3)[3]
    assert bucket.blob(permanent).exists()
    assert not bucket.blob(upload["object_name"]).exists()  # moved at first use
    assert alice.delete(f"/api/chats/{events[0]['chat_id']}").status_code == 200
    deadline = time.monotonic() + 10
    while bucket.blob(permanent).exists():
        assert time.monotonic() < deadline, "the object outlived its chat"
        time.sleep(0.2)


def test_oversized_and_mislabelled_uploads_are_refused_at_first_use_and_deleted(
    stack: LocalStack,
    make_user: Any,
    db: Database,
    model: StandinControl,
    storage_client: Any,
) -> None:
    """The plain PUT binds no size and no bytes: chat_stream checks both before anything is
    stored or sent to the model, answers a 4xx and deletes the object."""
    bucket = storage_client.bucket(stack.env["GCS_BUCKET_NAME"])
    marker = uuid.uuid4().hex
    with function_process(stack, "chat_stream", UPLOAD_MAX_BYTES=str(len(PNG) - 1)) as base:
        user = make_user()
        client = ApiClient(base, user.token, user.user_id)
        big = upload_file(user, PNG)  # one byte over this instance's limit
        body = assert_error(
            client.send(f"too big {marker}", media=[image_part(big)]), 422, "media_too_large"
        )
        assert str(len(PNG) - 1) in body["detail"]
        assert not bucket.blob(big["object_name"]).exists()
        # Referenced again (the deployed limit now fits it): still refused, the file is gone.
        again = assert_error(
            user.send(f"again {marker}", media=[image_part(big)]), 422, "media_too_large"
        )
        assert "refused and deleted" in again["detail"]

    text_as_png = upload_file(user, b"not a picture at all", "fake.png", "image/png")
    body = assert_error(
        user.send(f"fake {marker}", media=[image_part(text_as_png)]),
        422,
        "media_content_mismatch",
    )
    assert "image/png" in body["detail"]
    assert not bucket.blob(text_as_png["object_name"]).exists()
    png_as_pdf = upload_file(user, PNG, "doc.pdf", "application/pdf")
    pdf_part = {"type": "file", "text": png_as_pdf["gcs_url"], "mimeType": "application/pdf"}
    assert_error(user.send(f"pdf {marker}", media=[pdf_part]), 422, "media_content_mismatch")
    assert not bucket.blob(png_as_pdf["object_name"]).exists()

    assert user.get("/api/chats").json() == []  # nothing stored
    assert model.requests(match=marker) == []  # the model never saw them
    states = db.fetch_all(
        "SELECT rejected_code FROM uploads WHERE user_id = :u ORDER BY created_at", u=user.user_id
    )
    assert [row["rejected_code"] for row in states] == [
        "media_too_large",
        "media_content_mismatch",
        "media_content_mismatch",
    ]
