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
from shared.file_types import CHECKED_TYPES, TEXT_TYPE, ftyp_brands, matches
from shared.media import link_media_to_chat, resolve_media
from shared.media_references import parse_reference
from shared.object_names import (
    MAX_FILE_NAME_BYTES,
    object_name,
    permanent_object_name,
    safe_file_name,
    user_prefix,
)
from shared.settings import DEFAULT_UPLOAD_TYPES
from shared.signing import KeyFileSigner
from shared.storage import MediaStorage
from tests.conftest import ApiClient, upload_file

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 40

# A tiny file with the real signature of each type the product accepts.
SAMPLES = {
    "image/png": PNG,
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01" + b"\x00" * 20,
    "image/gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 10,
    "image/webp": b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10",
    "image/heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 8,
    "image/heif": b"\x00\x00\x00\x14ftypmif1\x00\x00\x00\x00mif1" + b"\x00" * 8,
    "video/mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 8,
    "video/quicktime": b"\x00\x00\x00\x14ftypqt  \x20\x05\x03\x00qt  " + b"\x00" * 8,
    "video/webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04"
    b"\x42\xf3\x81\x08\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02",
    "audio/mpeg": b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + b"\x00" * 8,
    "audio/mp3": b"\xff\xfb\x90\x64" + b"\x00" * 16,  # a bare MPEG-1 Layer III frame
    "audio/wav": b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x00" * 16,
    "audio/wave": b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x00" * 16,
    "audio/x-wav": b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x00" * 16,
    "audio/mp4": b"\x00\x00\x00\x1cftypM4A \x00\x00\x02\x00M4A isommp42" + b"\x00" * 8,
    "audio/x-m4a": b"\x00\x00\x00\x1cftypM4A \x00\x00\x02\x00M4A isommp42" + b"\x00" * 8,
    "audio/ogg": b"OggS\x00\x02" + b"\x00" * 20,
    "application/pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
    "text/plain": "Grüße, 世界 🙂\n".encode(),
}

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
    assert full.startswith("incoming/user_2abcDEF/") and full.count("/") == 3
    assert len(full.encode()) <= 1024  # GCS's limit on object names
    permanent = permanent_object_name(full)
    assert permanent == "uploads/" + full[len("incoming/") :]
    assert len(permanent.encode()) <= 1024


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
    return error.value.status, {"detail": error.value.detail, "code": error.value.code}


def test_first_use_checks_and_promotes_the_upload_then_needs_no_bucket_call(
    alice: ApiClient, db: Database, media_store: MediaStorage, storage_client: Any
) -> None:
    assert alice.user_id is not None
    answer = upload_file(alice, PNG, "cat.png", "image/png")
    bucket = storage_client.bucket(media_store.bucket_name)
    permanent = permanent_object_name(answer["object_name"])
    assert answer["object_name"].startswith("incoming/") and permanent.startswith("uploads/")
    record = resolve_media(db, media_store, alice.user_id, answer["gcs_url"], "image/png")
    assert record.part() == {
        "type": "image",
        "upload_id": answer["upload_id"],
        "mime_type": "image/png",
        "gcs_uri": f"gs://{media_store.bucket_name}/{permanent}",  # what Gemini reads
    }
    assert record.size == len(PNG) and record.object_name == permanent
    row = db.fetch_one(
        "SELECT state, size, permanent_name, uploaded_at IS NOT NULL AS arrived "
        "FROM uploads WHERE id = :id",
        id=uuid.UUID(answer["upload_id"]),
    )
    assert row == {"state": "uploaded", "size": len(PNG), "permanent_name": permanent,
                   "arrived": True}  # fmt: skip
    # Promoted: a server-side copy under uploads/, the incoming object gone.
    assert bucket.get_blob(answer["object_name"]) is None
    promoted = bucket.get_blob(permanent)
    assert promoted.content_type == "image/png" and promoted.download_as_bytes() == PNG

    # Every other form of the reference, incoming or permanent, resolves to the same record...
    permanent_url = answer["gcs_url"].replace("/incoming/", "/uploads/")
    for reference in (answer["gs_uri"], answer["url"], answer["gcs_url"] + "?x=1",
                      record.gcs_uri, permanent_url):  # fmt: skip
        assert resolve_media(db, media_store, alice.user_id, reference, None) == record
    # ...and later turns trust the record: no bucket call (the object is gone, still resolves).
    bucket.delete_blob(permanent)
    assert resolve_media(db, media_store, alice.user_id, answer["gs_uri"], "image/png") == record


def test_someone_elses_object_is_answered_like_a_made_up_one(
    alice: ApiClient, bob: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    assert alice.user_id is not None and bob.user_id is not None
    alices = upload_file(alice, PNG, "secret.png", "image/png")
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
    put = requests.put(answer["url"], data=PNG, headers=answer["headers"], timeout=10)
    assert put.status_code == 200, put.text
    assert resolve_media(db, media_store, alice.user_id, answer["gcs_url"], None).size == len(PNG)


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


def test_a_declared_mime_type_other_than_the_uploads_is_refused(
    alice: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    assert alice.user_id is not None
    answer = upload_file(alice, PNG, "a.png", "image/png")
    status, body = refusal(
        lambda: resolve_media(db, media_store, alice.user_id or "", answer["gs_uri"], "video/mp4")
    )
    assert (status, body["code"]) == (422, "media_type_mismatch")
    # Nothing was checked or deleted: the right type still resolves.
    assert resolve_media(db, media_store, alice.user_id, answer["gs_uri"], "image/png").size


def assert_refused_and_gone(
    db: Database,
    media_store: MediaStorage,
    storage_client: Any,
    user_id: str,
    answer: dict[str, Any],
    code: str,
    storage: MediaStorage | None = None,
) -> dict[str, Any]:
    """First use refuses the upload with ``code``, deletes its object, and stays refused."""
    status, body = refusal(
        lambda: resolve_media(db, storage or media_store, user_id, answer["gcs_url"], None)
    )
    assert (status, body["code"]) == (422, code), body
    bucket = storage_client.bucket(media_store.bucket_name)
    assert bucket.get_blob(answer["object_name"]) is None
    assert bucket.get_blob(permanent_object_name(answer["object_name"])) is None
    row = db.fetch_one(
        "SELECT state, rejected_code, permanent_name FROM uploads WHERE id = :id",
        id=uuid.UUID(answer["upload_id"]),
    )
    assert row == {"state": "rejected", "rejected_code": code, "permanent_name": None}
    # A later reference, in any form, is refused the same way without a bucket call.
    status, again = refusal(lambda: resolve_media(db, media_store, user_id, answer["gs_uri"], None))
    assert (status, again["code"]) == (422, code)
    assert "refused and deleted" in again["detail"] and body["detail"] in again["detail"]
    return body


def test_an_upload_over_the_limit_is_refused_at_first_use_and_deleted(
    alice: ApiClient, db: Database, media_store: MediaStorage, storage_client: Any
) -> None:
    assert alice.user_id is not None
    small = MediaStorage(
        media_store.bucket_name,
        signer=media_store.signer,
        client_factory=lambda: media_store.client,
        public_url=media_store.public_url,
        emulator_url=media_store.emulator_url,
        max_bytes=len(PNG) - 1,
    )
    big = upload_file(alice, PNG, "big.png", "image/png")  # the plain PUT binds no size
    body = assert_refused_and_gone(
        db, media_store, storage_client, alice.user_id, big, "media_too_large", small
    )
    assert str(len(PNG)) in body["detail"] and str(len(PNG) - 1) in body["detail"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"just some text, not an image", "image/png"),
        (PNG, "application/pdf"),
        (b"%PDF-1.4 a document", "image/jpeg"),
        (b"\xff\xd8\xff\xe0 a jpeg", "audio/mpeg"),  # JPEG's FF D8 is no MPEG frame sync
        (b"\xff\xf1\x50\x80 adts aac", "audio/mpeg"),  # AAC ADTS (layer 00) is not MP3
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "image/webp"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x82\x88matroska", "video/webm"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "video/mp4"),  # a HEIC photo
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isomiso2", "image/heic"),
        (b"<html><script>alert(1)</script>", "image/gif"),
    ],
)
def test_bytes_that_are_not_the_declared_type_are_refused_and_deleted(
    alice: ApiClient,
    db: Database,
    media_store: MediaStorage,
    storage_client: Any,
    data: bytes,
    content_type: str,
) -> None:
    assert alice.user_id is not None
    answer = upload_file(alice, data, "mislabelled", content_type)
    body = assert_refused_and_gone(
        db, media_store, storage_client, alice.user_id, answer, "media_content_mismatch"
    )
    assert content_type in body["detail"]


@pytest.mark.parametrize("content_type", DEFAULT_UPLOAD_TYPES)
def test_every_allowed_types_real_signature_is_accepted(
    alice: ApiClient, db: Database, media_store: MediaStorage, content_type: str
) -> None:
    assert alice.user_id is not None
    answer = upload_file(alice, SAMPLES[content_type], "sample", content_type)
    record = resolve_media(db, media_store, alice.user_id, answer["gcs_url"], content_type)
    assert record.mime_type == content_type and record.object_name.startswith("uploads/")


def test_the_samples_cover_every_allowed_and_checkable_type(stack: LocalStack) -> None:
    from shared.settings import load_settings

    assert set(load_settings(stack.env).upload_allowed_types) == set(DEFAULT_UPLOAD_TYPES)
    assert set(SAMPLES) == CHECKED_TYPES


@pytest.mark.parametrize("content_type", sorted(SAMPLES))
def test_each_sample_matches_its_own_type_only_where_formats_differ(content_type: str) -> None:
    if content_type == TEXT_TYPE:
        return
    assert matches(content_type, SAMPLES[content_type])
    # A file of another kind never passes. ISO media files (MP4, M4A, MOV, HEIC) share one
    # container whose brands overlap (an M4A is an MP4), so among them only HEIC is apart.
    kind = content_type.split("/")[0]
    for other, data in SAMPLES.items():
        if other.split("/")[0] == kind or other == TEXT_TYPE:
            continue
        if ftyp_brands(data) and ftyp_brands(SAMPLES[content_type]) and kind != "image":
            continue
        assert not matches(content_type, data), (content_type, other)


def test_text_must_be_utf8_throughout(
    alice: ApiClient, db: Database, media_store: MediaStorage, storage_client: Any
) -> None:
    assert alice.user_id is not None
    # Streamed in network chunks (of a power of two bytes): three-byte runs of "aé" put
    # many chunk boundaries inside a two-byte character.
    chunk = 1024 * 1024
    text = ("aé" * (chunk // 3 + 1000)).encode()
    good = upload_file(alice, text, "notes.txt", "text/plain")
    assert resolve_media(db, media_store, alice.user_id, good["gcs_url"], None).size == len(text)
    # One invalid byte far past the first chunk is found: the whole file is read.
    bad_late = upload_file(alice, b"a" * (chunk + 10) + b"\xff", "late.txt", "text/plain")
    body = assert_refused_and_gone(
        db, media_store, storage_client, alice.user_id, bad_late, "media_content_mismatch"
    )
    assert "UTF-8" in body["detail"]
    for data in (b"caf\xe9 latin-1", "truncated é".encode()[:-1], b"\xff\xfeu\x00t\x00"):
        answer = upload_file(alice, data, "notes.txt", "text/plain")
        assert_refused_and_gone(
            db, media_store, storage_client, alice.user_id, answer, "media_content_mismatch"
        )


def test_an_empty_file_or_a_stored_type_other_than_declared_is_refused(
    alice: ApiClient, db: Database, media_store: MediaStorage, storage_client: Any
) -> None:
    assert alice.user_id is not None
    # (Written with the SDK: gcp-storage-emulator fails an empty XML API PUT, which GCS
    # accepts.)
    empty = alice.post(
        "/api/upload-url", json={"filename": "empty.txt", "contentType": "text/plain"}
    ).json()
    storage_client.bucket(media_store.bucket_name).blob(empty["object_name"]).upload_from_string(
        b"", content_type="text/plain"
    )
    body = assert_refused_and_gone(
        db, media_store, storage_client, alice.user_id, empty, "media_content_mismatch"
    )
    assert "empty" in body["detail"]
    # The local front refuses a PUT of another type; an object written another way (as a
    # client with bucket credentials could) is still checked.
    answer = alice.post(
        "/api/upload-url", json={"filename": "a.png", "contentType": "image/png"}
    ).json()
    storage_client.bucket(media_store.bucket_name).blob(answer["object_name"]).upload_from_string(
        PNG, content_type="text/html"
    )
    assert_refused_and_gone(
        db, media_store, storage_client, alice.user_id, answer, "media_type_mismatch"
    )


def test_links_tie_uploads_to_chats_and_a_vanished_upload_is_not_found(
    alice: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    assert alice.user_id is not None
    chat = alice.create_chat("links")
    chat_id = uuid.UUID(chat["chatId"])
    record = resolve_media(
        db, media_store, alice.user_id, upload_file(alice, PNG, "a.png")["gs_uri"], None
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
