"""Uploaded media: the caller's uploads behind media references, and the checks before a
model sees one.

The flow, for the functions involved:

1. upload_url records an upload (table ``uploads``: owner, object, declared type and size,
   state ``pending``) and signs a PUT URL for ``incoming/<user>/<upload id>/<file name>``
   (:func:`shared.object_names.object_name`); the browser PUTs the file straight to the
   bucket. Objects left under ``incoming/`` are deleted by a bucket lifecycle rule after a day.
2. chat_stream calls :func:`resolve_attachments` (:func:`resolve_media` for each media part
   of a new message, then :func:`check_media_counts`). Whatever form
   the reference takes (``gcs_url`` as returned, ``gs://bucket/object``, any storage URL of the
   uploads bucket, signed or not, of the incoming or the permanent name), it resolves to one
   of the caller's own upload records or is refused with a 4xx. On first use the object is
   checked (exists, declared type, size limit, magic numbers; see :mod:`shared.file_types`),
   then promoted to ``uploads/<user>/<upload id>/<file name>``
   (:func:`shared.object_names.permanent_object_name`) and the record set to ``uploaded``,
   or deleted and the record set to ``rejected``. Later turns need no bucket call.
   chat_stream then stores :meth:`MediaRecord.part` (naming the permanent object) in
   ``messages.parts`` and calls :func:`link_media_to_chat` in the turn's transaction.
3. chats_crud signs short-lived GET URLs for stored parts (:func:`media_url_signer`), and
   deleting a chat queues the objects only that chat used (``shared.chats.delete_chat``).

Errors (all ``{"detail", "code"}``): 422 ``invalid_media_reference`` (not a reference to
the uploads bucket at all), 422 ``media_bucket_not_allowed`` (another bucket), 404
``media_not_found`` (no such upload *of the caller's*: someone else's object is answered
exactly like a made-up one), 422 ``media_not_uploaded``, 422 ``media_type_mismatch``,
422 ``media_too_large``, 422 ``media_content_mismatch`` (the bytes are not the declared type),
503 ``storage_unavailable``. A refused upload's object is deleted; referencing it again
answers the same code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import pg8000.exceptions

from shared import file_types
from shared.db import FOREIGN_KEY_VIOLATION, Database, Row, Transaction, sqlstate
from shared.errors import NotFound, UnprocessableEntity
from shared.media_references import parse_reference
from shared.object_names import permanent_object_name, user_prefixes
from shared.schemas import MediaUrlSigner
from shared.telemetry import logs_media_check

MEDIA_KINDS = {"image": "image", "video": "video", "audio": "audio"}


# --- what media needs of the bucket (shared.storage.MediaStorage in production) -------------


class StoredObject(Protocol):
    """What the bucket says about an object."""

    @property
    def content_type(self) -> str | None: ...
    @property
    def size(self) -> int: ...
    @property
    def generation(self) -> int | None: ...


class UploadsBucket(Protocol):
    """The uploads bucket as media uses it; passed in by the entry point, so this module
    never imports the Cloud Storage adapter (see tools/layers.py)."""

    bucket_name: str
    public_url: str
    emulator_url: str | None
    max_bytes: int

    def stat(self, object_name: str) -> StoredObject | None: ...
    def read(self, object_name: str, generation: int | None, start: int, end: int) -> bytes: ...
    def stream(
        self, object_name: str, generation: int | None, sink: Callable[[bytes], None]
    ) -> None: ...
    def promote(self, source: str, generation: int | None, destination: str) -> None: ...
    def delete(self, object_name: str) -> None: ...
    def download_urls(self, object_names: Iterable[str]) -> dict[str, str]: ...


def content_type_essence(content_type: str) -> str:
    """``Image/PNG; charset=x`` as ``image/png``: the part allowlists and comparisons use."""
    return content_type.split(";", 1)[0].strip().lower()


def media_kind(content_type: str) -> str:
    """The part type a content type is stored as: image, video, audio or document."""
    return MEDIA_KINDS.get(content_type.split("/", 1)[0], "document")


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRecord:
    """One of the caller's uploads, confirmed to be in the bucket."""

    upload_id: str
    type: str  # image | video | audio | document, from the upload's content type
    mime_type: str
    gcs_uri: str  # gs://bucket/object: what Gemini reads
    bucket: str
    object_name: str
    size: int | None

    def part(self) -> dict[str, Any]:
        """The part as ``messages.parts`` stores it."""
        return {
            "type": self.type,
            "upload_id": self.upload_id,
            "mime_type": self.mime_type,
            "gcs_uri": self.gcs_uri,
        }


def record_upload(
    tx: Transaction,
    *,
    upload_id: uuid.UUID,
    user_id: str,
    bucket: str,
    object_name: str,
    content_type: str,
    declared_size: int | None,
) -> None:
    """Record a new upload as ``pending``: it ties the object to its owner before it exists."""
    tx.execute(
        "INSERT INTO uploads (id, user_id, bucket, object_name, content_type, declared_size) "
        "VALUES (:id, :user_id, :bucket, :object_name, :content_type, :declared_size)",
        id=upload_id,
        user_id=user_id,
        bucket=bucket,
        object_name=object_name,
        content_type=content_type,
        declared_size=declared_size,
    )


def _record(row: Row, storage_bucket: str, size: int | None) -> MediaRecord:
    name = row["permanent_name"] or row["object_name"]
    return MediaRecord(
        upload_id=row["id"],
        type=media_kind(row["content_type"]),
        mime_type=row["content_type"],
        gcs_uri=f"gs://{storage_bucket}/{name}",
        bucket=storage_bucket,
        object_name=name,
        size=size,
    )


# --- references ----------------------------------------------------------------------------


def media_not_found() -> NotFound:
    return NotFound(
        "No such upload: upload the file with /api/upload-url first", code="media_not_found"
    )


UPLOAD_COLUMNS = (
    "id::text AS id, object_name, permanent_name, content_type, size, state, "
    "rejected_code, rejected_detail"
)


class MediaRejected(UnprocessableEntity):
    """An upload whose object is not what was declared: it is deleted and stays refused."""


@logs_media_check
def resolve_media(
    db: Database, storage: UploadsBucket, user_id: str, reference: str, mime_type: str | None
) -> MediaRecord:
    """The caller's upload a media part refers to, checked and ready to send to the model.

    Call it before the turn's transaction (it may call the bucket). The first time an
    upload is referenced its object (under ``incoming/``) is checked: it exists, its
    stored type is the declared one, its size is within the limit and its first bytes
    carry the declared type's signature (text: the whole file is UTF-8). A file that
    passes is copied to its permanent name under ``uploads/`` (a server-side rewrite), its
    record set to ``uploaded`` and the incoming object deleted, so later turns are one
    indexed database read. A file that fails is deleted and its record set to
    ``rejected``, so every later reference is refused the same way.

    Any reference form of the incoming name (what the client was given) or of the
    permanent one (what history shows) resolves to the same upload.

    Args:
        db: the database.
        storage: the uploads bucket (:func:`shared.storage.media_storage`).
        user_id: the caller; only their own uploads resolve.
        reference: the part's ``text``.
        mime_type: the part's ``mimeType``, if the client sent one: it must match the upload.

    Raises:
        UnprocessableEntity: ``invalid_media_reference``, ``media_bucket_not_allowed``,
            ``media_not_uploaded``, ``media_type_mismatch``, ``media_too_large``,
            ``media_content_mismatch`` (the bytes are not the declared type).
        NotFound: ``media_not_found``, when it is not one of the caller's uploads (whether
            it is another user's or does not exist at all is not revealed).
        StorageUnavailable: the bucket cannot be reached (503).
    """
    bucket, name = parse_reference(storage, reference)
    if bucket != storage.bucket_name:
        raise UnprocessableEntity(
            f"Media must be uploaded with /api/upload-url; {bucket!r} is not the uploads bucket",
            code="media_bucket_not_allowed",
        )
    if not name.startswith(user_prefixes(user_id)):
        raise media_not_found()
    row = db.fetch_one(
        f"SELECT {UPLOAD_COLUMNS} FROM uploads "
        "WHERE bucket = :bucket AND user_id = :user_id "
        "AND (object_name = :name OR permanent_name = :name)",
        bucket=bucket,
        name=name,
        user_id=user_id,
    )
    if row is None:
        raise media_not_found()
    expected = row["content_type"]
    if mime_type and content_type_essence(mime_type) != expected:
        raise UnprocessableEntity(
            f"The part's mimeType {mime_type!r} does not match the upload's type {expected!r}",
            code="media_type_mismatch",
        )
    return _settled(db, storage, row) or _check_and_promote(db, storage, row)


def resolve_attachments(
    db: Database,
    storage: UploadsBucket,
    user_id: str,
    refs: list[tuple[str, str | None]],
    *,
    max_images: int,
    max_videos: int,
) -> list[dict[str, Any]]:
    """A new message's media references as stored media parts (each with its ``size``), or
    a 4xx before anything is stored or sent.

    The limits come from the caller (chat_stream's ``MEDIA_MAX_IMAGES`` and
    ``MEDIA_MAX_VIDEOS``), not from settings here: the other functions that import this
    module never read them, and Terraform gives them only to chat_stream.
    """
    records = [resolve_media(db, storage, user_id, ref, mime) for ref, mime in refs]
    parts = [{**record.part(), "size": record.size} for record in records]
    check_media_counts(parts, max_images, max_videos)
    return parts


def check_media_counts(media_parts: list[dict[str, Any]], max_images: int, max_videos: int) -> None:
    """At most ``max_images`` images and ``max_videos`` videos in one message."""
    images = sum(1 for part in media_parts if part["mime_type"].startswith("image/"))
    videos = sum(1 for part in media_parts if part["mime_type"].startswith("video/"))
    if images > max_images or videos > max_videos:
        raise UnprocessableEntity(
            f"Too many attachments: at most {max_images} images and {max_videos} videos per "
            "message",
            code="too_many_media",
        )


def _settled(db: Database, storage: UploadsBucket, row: Row) -> MediaRecord | None:
    """The record of an upload already checked; a refusal if it was rejected; else None."""
    if row["state"] == "uploaded":
        return _record(row, storage.bucket_name, row["size"])
    if row["state"] == "rejected":
        raise MediaRejected(
            f"This upload was refused and deleted: {row['rejected_detail']} "
            "Upload the file again with /api/upload-url.",
            code=row["rejected_code"],
        )
    return None


def _check_and_promote(db: Database, storage: UploadsBucket, row: Row) -> MediaRecord:
    name = row["object_name"]
    stored = storage.stat(name)
    if stored is None:
        # Another request may have promoted it (and deleted the incoming object) meanwhile.
        again = db.fetch_one(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = CAST(:id AS uuid)", id=row["id"]
        )
        settled = _settled(db, storage, again) if again is not None else None
        if settled is not None:
            return settled
        raise UnprocessableEntity(
            "The file has not been uploaded yet: PUT it to the signed URL first",
            code="media_not_uploaded",
        )
    try:
        check_upload_content(storage, name, stored, row["content_type"])
    except MediaRejected as rejection:
        storage.delete(name)
        with db.transaction() as tx:
            tx.execute(
                "UPDATE uploads SET state = 'rejected', size = :size, rejected_code = :code, "
                "rejected_detail = :detail WHERE id = CAST(:id AS uuid) AND state = 'pending'",
                size=stored.size,
                code=rejection.code,
                detail=rejection.detail,
                id=row["id"],
            )
        raise
    permanent = permanent_object_name(name)
    if permanent != name:
        storage.promote(name, stored.generation, permanent)
    with db.transaction() as tx:
        tx.execute(
            "UPDATE uploads SET state = 'uploaded', size = :size, uploaded_at = now(), "
            "permanent_name = :permanent WHERE id = CAST(:id AS uuid) AND state = 'pending'",
            size=stored.size,
            permanent=permanent if permanent != name else None,
            id=row["id"],
        )
    if permanent != name:
        # After the commit: if this fails, the lifecycle rule removes it within a day.
        storage.delete(name)
    return _record({**row, "permanent_name": permanent}, storage.bucket_name, stored.size)


def check_upload_content(
    storage: UploadsBucket, name: str, stored: StoredObject, expected: str
) -> None:
    """Raise :class:`MediaRejected` unless the object is what its upload declared.

    Binary types: one ranged read of the first :data:`file_types.PREFIX_BYTES`. Text: the
    whole object, in one streamed download through an incremental UTF-8 decoder (memory:
    one network chunk), stopped at the first invalid byte. Validity cannot
    be decided from a prefix (a bad byte may sit anywhere), the object is bounded by the
    size limit checked just before, and text is what a model reads as is, so one bounded
    read at first use (never again) is worth it.
    """
    if content_type_essence(stored.content_type or "") != expected:
        raise MediaRejected(
            f"The uploaded file's type {stored.content_type!r} is not the declared {expected!r}.",
            code="media_type_mismatch",
        )
    if stored.size > storage.max_bytes:
        raise MediaRejected(
            f"The uploaded file is {stored.size} bytes; the limit is {storage.max_bytes}.",
            code="media_too_large",
        )
    if stored.size == 0:
        raise MediaRejected("The uploaded file is empty.", code="media_content_mismatch")
    if expected == file_types.TEXT_TYPE:
        feed = file_types.utf8_checker()
        not_text = MediaRejected(
            "The uploaded file is declared text/plain but is not UTF-8 text.",
            code="media_content_mismatch",
        )

        def check(chunk: bytes) -> None:
            if not feed(chunk, False):
                raise not_text  # stops the download at the first bad byte

        storage.stream(name, stored.generation, check)
        if not feed(b"", True):  # a character cut off at the very end
            raise not_text
        return
    prefix = storage.read(name, stored.generation, 0, file_types.PREFIX_BYTES - 1)
    if not file_types.matches(expected, prefix):
        raise MediaRejected(
            f"The uploaded file's content is not {expected}: its first bytes do not match "
            "that type's signature.",
            code="media_content_mismatch",
        )


def link_media_to_chat(
    tx: Transaction, chat_id: uuid.UUID, upload_ids: Iterable[uuid.UUID | str]
) -> None:
    """Record that a chat uses these uploads (in the transaction storing the message).

    The links decide what deleting a chat deletes: an object is removed with the last chat
    that links it. The ids must come from :func:`resolve_media` for the chat's owner.

    Raises:
        NotFound: ``media_not_found``, when an upload was deleted since it was resolved
            (its only other chat was deleted meanwhile); the transaction must roll back.
    """
    ids = sorted({str(upload_id) for upload_id in upload_ids})
    if not ids:
        return
    try:
        tx.execute(
            "INSERT INTO chat_uploads (chat_id, upload_id) "
            "SELECT :chat_id, CAST(value AS uuid) "
            "FROM jsonb_array_elements_text(CAST(:ids AS jsonb)) "
            "ON CONFLICT DO NOTHING",
            chat_id=chat_id,
            ids=ids,
        )
    except pg8000.exceptions.DatabaseError as error:
        if sqlstate(error) == FOREIGN_KEY_VIOLATION:
            raise media_not_found() from None
        raise


# --- history -------------------------------------------------------------------------------


def _object_in_bucket(part: dict[str, Any], bucket: str) -> str | None:
    uri = part.get("gcs_uri")
    prefix = f"gs://{bucket}/"
    if isinstance(uri, str) and uri.startswith(prefix) and len(uri) > len(prefix):
        return uri[len(prefix) :]
    return None


def media_url_signer(storage: UploadsBucket, rows: Iterable[Row]) -> MediaUrlSigner | None:
    """A signer for the media parts of a page of messages; None when the page has none.

    Every URL the page needs is signed up front (concurrently when each signature is an IAM
    call, reusing recent ones), so rendering the page makes no further network calls. Only
    objects of the uploads bucket are signed: a part naming anything else gets no URL.
    """
    names = [
        name
        for row in rows
        for part in row["parts"]
        if part.get("type") != "text"
        and (name := _object_in_bucket(part, storage.bucket_name)) is not None
    ]
    if not names:
        return None
    urls = storage.download_urls(names)

    def sign(part: dict[str, Any]) -> str | None:
        name = _object_in_bucket(part, storage.bucket_name)
        return urls.get(name) if name is not None else None

    return sign
