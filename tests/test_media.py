"""shared.media: safe object names, every form of media reference, and resolve_media's checks
against the real database and the storage emulator."""

from __future__ import annotations

import random
import unicodedata
import uuid
from typing import Any
from urllib.parse import quote

import pytest
import requests

from dev.stack import LocalStack
from shared.db import Database
from shared.errors import ApiError, NotFound, UnprocessableEntity
from shared.media import (
    MAX_FILE_NAME_BYTES,
    link_media_to_chat,
    object_name,
    parse_reference,
    resolve_media,
    safe_file_name,
    user_prefix,
)
from shared.storage import KeyFileSigner, MediaStorage
from tests.conftest import ApiClient, upload_file

# --- object names ----------------------------------------------------------------------------

NASTY = [
    "/", "\\", ".", "..", "\x00", "\x01", "\x1f", "\x7f", "\n", "\r", "\t", "\u202e", "\u200b",
    "\ufeff", "\u2028", "\u00a0", "#", "?", "*", "[", "]", "%", ":", "\"", "<", ">", "|", " ",
    "e\u0301", "é", "ß", "Ω", "写", "真", "ש", "ع", "न", "\u093f", "🙂", "👍🏽", "\ud7ff", "\ue000",
    "a", "B", "7", "-", "_", "~", "(", ")", "'", ",", ";", "=", "+", "!", "@", "$", "&",
]  # fmt: skip


def random_names(count: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    names = []
    for _ in range(count):
        length = rng.choice([0, 1, 2, 5, 20, 80, 300, 1200])
        names.append("".join(rng.choice(NASTY) for _ in range(length)))
    return names


@pytest.mark.parametrize("filename", random_names(400))
def test_sanitised_names_are_always_safe(filename: str) -> None:
    name = safe_file_name(filename)
    assert name and name not in {".", ".."}
    assert "/" not in name and "\\" not in name
    assert not any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn"} for c in name)
    assert not any(c in name for c in '#?*[]"<>|:')
    assert name == name.strip(" .")
    assert unicodedata.is_normalized("NFC", name)
    assert len(name.encode()) <= MAX_FILE_NAME_BYTES
    assert safe_file_name(name) == name  # sanitising twice changes nothing
    full = object_name("user_2abcDEF", uuid.uuid4(), filename)
    assert full.startswith("uploads/user_2abcDEF/") and full.count("/") == 3
    assert len(full.encode()) <= 1024  # GCS's limit on object names


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\a.dll", "a.dll"),
        ("C:\\fakepath\\photo.png", "photo.png"),
        ("uploads/user_other/1234/x.png", "x.png"),
        ("..", "file"),
        ("...", "file"),
        ("", "file"),
        ("\x00\x00", "file"),
        ("   ", "file"),
        (".env", "env"),
        ("photo\x00.png", "photo.png"),
        ("line\nbreak.png", "linebreak.png"),
        ("exe\u202egnp.scr", "exegnp.scr"),  # a bidi override cannot disguise the extension
        ("zero\u200bwidth.png", "zerowidth.png"),
        ("a  \u00a0 b.png", "a b.png"),
        ("what?*[1].png", "what___1_.png"),
        ("cafe\u0301.png", "café.png"),  # NFC: one spelling per name
        ("résumé – final.pdf", "résumé – final.pdf"),
        ("履歴書 2024.pdf", "履歴書 2024.pdf"),
        ("сообщение.txt", "сообщение.txt"),
        ("صورة العائلة.jpg", "صورة العائلة.jpg"),
        ("परिवार.png", "परिवार.png"),
        ("🙂 party 🎉.gif", "🙂 party 🎉.gif"),
    ],
)
def test_sanitiser_examples(filename: str, expected: str) -> None:
    assert safe_file_name(filename) == expected


def test_long_names_are_cut_by_bytes_and_keep_their_extension() -> None:
    for stem_char in ("a", "é", "写", "🙂"):
        name = safe_file_name(stem_char * 1000 + ".jpeg")
        assert name.endswith(".jpeg")
        assert len(name.encode()) <= MAX_FILE_NAME_BYTES
        assert len(name.encode()) > MAX_FILE_NAME_BYTES - 4  # cut on a character boundary
        assert set(name[: -len(".jpeg")]) == {stem_char}
    no_extension = safe_file_name("x" * 5000)
    assert no_extension == "x" * MAX_FILE_NAME_BYTES


def test_user_folders_never_nest() -> None:
    ids = ["user_a", "user_ab", "a/b", "a", "../a", "user_a/../user_b", "ü", "x" * 300, " a"]
    prefixes = [user_prefix(user_id) for user_id in ids]
    assert len(set(prefixes)) == len(ids)
    for one in prefixes:
        assert one.startswith("uploads/") and one.endswith("/") and one.count("/") == 2
        for other in prefixes:
            assert one == other or not other.startswith(one)
    assert (
        user_prefix("user_2NNEqL2nrIRdJ194ndJqAHwEfxC")
        == "uploads/user_2NNEqL2nrIRdJ194ndJqAHwEfxC/"
    )


# --- references ------------------------------------------------------------------------------


def local_storage() -> MediaStorage:
    return MediaStorage(
        "raven-uploads",
        signer=KeyFileSigner("/nonexistent"),
        client_factory=lambda: None,  # never called: parsing needs no client
        public_url="http://localhost:8000",
        emulator_url="http://127.0.0.1:9023",
        max_bytes=100,
    )


NAME = "uploads/user_a/7d3c/My photo é.png"
ENCODED = quote(NAME)


@pytest.mark.parametrize(
    "reference",
    [
        f"gs://raven-uploads/{NAME}",
        f"https://storage.googleapis.com/raven-uploads/{ENCODED}",
        f"https://storage.googleapis.com/raven-uploads/{ENCODED}?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Signature=abc",
        f"https://raven-uploads.storage.googleapis.com/{ENCODED}",
        f"https://storage.cloud.google.com/raven-uploads/{ENCODED}",
        f"https://storage.googleapis.com/storage/v1/b/raven-uploads/o/{quote(NAME, safe='')}",
        f"https://storage.googleapis.com/download/storage/v1/b/raven-uploads/o/"
        f"{quote(NAME, safe='')}?alt=media",
        f"https://www.googleapis.com/storage/v1/b/raven-uploads/o/{quote(NAME, safe='')}",
        f"http://localhost:8000/raven-uploads/{ENCODED}",  # the local router
        f"http://127.0.0.1:9023/raven-uploads/{ENCODED}#fragment",  # the emulator itself
        f"http://127.0.0.1:9023/download/storage/v1/b/raven-uploads/o/{quote(NAME, safe='')}",
        f"  gs://raven-uploads/{NAME}  ",
    ],
)
def test_every_reference_form_names_the_same_object(reference: str) -> None:
    assert parse_reference(local_storage(), reference) == ("raven-uploads", NAME)


@pytest.mark.parametrize(
    "reference",
    [
        "",
        "   ",
        "photo.png",
        NAME,
        "gs://",
        "gs://raven-uploads",
        "gs://raven-uploads/",
        "ftp://storage.googleapis.com/raven-uploads/x",
        "file:///etc/passwd",
        "https://evil.example.com/raven-uploads/x",
        "https://storage.googleapis.com.evil.example.com/raven-uploads/x",
        "http://localhost:8001/raven-uploads/x",
        "https://storage.googleapis.com/",
        "https://storage.googleapis.com/raven-uploads",
        "https://storage.googleapis.com/raven-uploads/%FF%FE.png",
        "gs://raven-uploads/a\nb",
        "https://storage.googleapis.com/raven-uploads/" + "a" * 5000,
    ],
)
def test_anything_else_is_an_invalid_reference(reference: str) -> None:
    with pytest.raises(UnprocessableEntity) as error:
        parse_reference(local_storage(), reference)
    assert error.value.code == "invalid_media_reference"


# --- resolve_media against the stack ------------------------------------------------------------


def refusal(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiError) as error:
        call()
    return error.value.status, error.value.body()


def test_resolving_records_arrival_once_then_needs_no_bucket_call(
    alice: ApiClient, db: Database, media_store: MediaStorage, storage_client: Any
) -> None:
    assert alice.user_id is not None
    answer = upload_file(alice, b"\x89PNG" + b"0" * 96, "cat.png", "image/png")
    record = resolve_media(db, media_store, alice.user_id, answer["gcs_url"], "image/png")
    assert record.part() == {
        "type": "image",
        "upload_id": answer["upload_id"],
        "mime_type": "image/png",
        "gcs_uri": answer["gs_uri"],
    }
    assert record.size == 100
    row = db.fetch_one(
        "SELECT state, size, uploaded_at IS NOT NULL AS arrived FROM uploads WHERE id = :id",
        id=uuid.UUID(answer["upload_id"]),
    )
    assert row == {"state": "uploaded", "size": 100, "arrived": True}
    blob = storage_client.bucket(media_store.bucket_name).get_blob(answer["object_name"])
    assert blob.custom_time is not None and blob.custom_time.year >= 2024  # marked referenced

    # Every other form of the reference resolves to the same record...
    for reference in (answer["gs_uri"], answer["url"], answer["gcs_url"] + "?x=1"):
        assert resolve_media(db, media_store, alice.user_id, reference, None) == record
    # ...and later turns trust the record: no bucket call (the object is gone, still resolves).
    storage_client.bucket(media_store.bucket_name).delete_blob(answer["object_name"])
    assert resolve_media(db, media_store, alice.user_id, answer["gs_uri"], "image/png") == record


def test_someone_elses_object_is_answered_like_a_made_up_one(
    alice: ApiClient, bob: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    assert alice.user_id is not None and bob.user_id is not None
    alices = upload_file(alice, b"secret", "secret.png", "image/png")
    bucket = media_store.bucket_name
    made_up_own = f"gs://{bucket}/{user_prefix(bob.user_id)}{uuid.uuid4()}/x.png"
    made_up_other = f"gs://{bucket}/{user_prefix(alice.user_id)}{uuid.uuid4()}/x.png"
    outside = f"gs://{bucket}/elsewhere/{alices['upload_id']}/secret.png"
    traversal = f"gs://{bucket}/{user_prefix(bob.user_id)}../{alice.user_id}/secret.png"
    answers = [
        refusal(lambda ref=ref: resolve_media(db, media_store, bob.user_id or "", ref, None))
        for ref in (alices["gcs_url"], alices["gs_uri"], made_up_own, made_up_other, outside,
                    traversal)
    ]  # fmt: skip
    assert answers[0][0] == 404 and answers[0][1]["code"] == "media_not_found"
    assert all(answer == answers[0] for answer in answers)
    # The owner still resolves it.
    assert resolve_media(db, media_store, alice.user_id, alices["gs_uri"], None).upload_id


def test_an_upload_never_put_is_refused_until_it_arrives(
    alice: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    assert alice.user_id is not None
    answer = alice.post(
        "/api/upload-url", json={"filename": "later.png", "contentType": "image/png"}
    ).json()
    status, body = refusal(
        lambda: resolve_media(db, media_store, alice.user_id or "", answer["gcs_url"], None)
    )
    assert (status, body["code"]) == (422, "media_not_uploaded")
    requests.put(answer["url"], data=b"now", headers=answer["headers"], timeout=10)
    assert resolve_media(db, media_store, alice.user_id, answer["gcs_url"], None).size == 3


def test_another_bucket_and_non_storage_urls_are_refused(
    alice: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    assert alice.user_id is not None
    prefix = user_prefix(alice.user_id)
    cases = {
        f"gs://someone-elses-bucket/{prefix}1/a.png": "media_bucket_not_allowed",
        f"https://storage.googleapis.com/other-bucket/{prefix}1/a.png": "media_bucket_not_allowed",
        f"https://other-bucket.storage.googleapis.com/{prefix}1/a.png": "media_bucket_not_allowed",
        "https://example.com/cat.png": "invalid_media_reference",
        "data:image/png;base64,iVBORw0KGgo=": "invalid_media_reference",
    }
    for reference, code in cases.items():
        status, body = refusal(
            lambda ref=reference: resolve_media(db, media_store, alice.user_id or "", ref, None)
        )
        assert (status, body["code"]) == (422, code), reference
        assert "upload-url" in body["detail"]


def test_type_and_size_are_checked_even_where_the_signature_is_not(
    stack: LocalStack, alice: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    """The emulator enforces nothing a signed URL binds: resolve_media checks the object."""
    assert alice.user_id is not None
    answer = alice.post(
        "/api/upload-url", json={"filename": "a.png", "contentType": "image/png"}
    ).json()
    status, body = refusal(
        lambda: resolve_media(db, media_store, alice.user_id or "", answer["gs_uri"], "video/mp4")
    )
    assert (status, body["code"]) == (422, "media_type_mismatch")
    # A PUT with another type than signed (GCS would refuse it; the emulator stores it).
    requests.put(answer["url"], data=b"<html>", headers={**answer["headers"],
                 "Content-Type": "text/html"}, timeout=10)  # fmt: skip
    status, body = refusal(
        lambda: resolve_media(db, media_store, alice.user_id or "", answer["gs_uri"], None)
    )
    assert (status, body["code"]) == (422, "media_type_mismatch")

    small = MediaStorage(
        media_store.bucket_name,
        signer=media_store.signer,
        client_factory=lambda: media_store.client,
        public_url=media_store.public_url,
        emulator_url=media_store.emulator_url,
        max_bytes=10,
    )
    big = upload_file(alice, b"x" * 11, "big.png", "image/png")
    status, body = refusal(
        lambda: resolve_media(db, small, alice.user_id or "", big["gs_uri"], None)
    )
    assert (status, body["code"]) == (422, "media_too_large")
    assert "10" in body["detail"]


def test_links_tie_uploads_to_chats_and_a_vanished_upload_is_not_found(
    alice: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    assert alice.user_id is not None
    chat = alice.create_chat("links")
    chat_id = uuid.UUID(chat["chatId"])
    record = resolve_media(
        db, media_store, alice.user_id, upload_file(alice, b"a", "a.png")["gs_uri"], None
    )
    with db.transaction() as tx:
        link_media_to_chat(tx, chat_id, [record.upload_id, record.upload_id])
        link_media_to_chat(tx, chat_id, [])
    with db.transaction() as tx:  # linking again is harmless
        link_media_to_chat(tx, chat_id, [uuid.UUID(record.upload_id)])
    links = db.fetch_all(
        "SELECT upload_id::text AS id FROM chat_uploads WHERE chat_id = :c", c=chat_id
    )
    assert links == [{"id": record.upload_id}]
    with pytest.raises(NotFound) as error, db.transaction() as tx:
        link_media_to_chat(tx, chat_id, [uuid.uuid4()])
    assert error.value.code == "media_not_found"
