"""upload_url: signed URLs for direct browser uploads (the contract's "Uploads" section).

| call                  | handler           |
|-----------------------|-------------------|
| POST /api/upload-url  | create_upload_url |

The browser never sends file bytes here: it asks for a URL, then PUTs the file straight to the
uploads bucket. Before anything is signed the declared content type must be on the allowlist
(``UPLOAD_ALLOWED_TYPES``) and a declared ``size`` within ``UPLOAD_MAX_BYTES``; a refusal is a
4xx whose ``detail`` says what is allowed. The URL is bound to one new object
(``incoming/<user>/<upload id>/<sanitised file name>``) and that content type only, so the
plain ``fetch(url, {method: 'PUT', body: file, headers: {'Content-Type': file.type}})`` works;
with ``bindSize`` it also binds the exact ``size`` (``x-goog-content-length-range``). It
expires after ``UPLOAD_URL_TTL_SECONDS``. What it cannot bind (the real size and bytes) is
checked at the upload's first use (``shared.media.resolve_media``). The upload is recorded
(owner, object, type, declared size) before the URL is returned, so every object that can
ever exist has an owner in Postgres.
"""

from __future__ import annotations

import uuid

import functions_framework
import pg8000.exceptions
from flask import Request, Response

from shared import media, object_names
from shared.auth import AuthenticatedUser, request_authenticator
from shared.db import FOREIGN_KEY_VIOLATION, sqlstate
from shared.errors import PayloadTooLarge, Unauthorized, UnprocessableEntity
from shared.runtime import database, make_api, start_function
from shared.schemas import UploadUrlRequest, UploadUrlResponse
from shared.settings import get_settings
from shared.storage import media_storage
from shared.web import json_response, parse_json

start_function("GCS_BUCKET_NAME")


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def check_upload(content_type: str, size: int | None) -> str:
    """The upload's type (its essence, e.g. ``image/png``), once it and the size are allowed.

    Raises:
        UnprocessableEntity: ``unsupported_content_type``, naming the allowed types.
        PayloadTooLarge: ``file_too_large``, naming the limit.
    """
    settings = get_settings()
    essence = media.content_type_essence(content_type)
    if essence not in settings.upload_allowed_types:
        raise UnprocessableEntity(
            f"Files of type {content_type!r} cannot be uploaded. Allowed types: "
            + ", ".join(settings.upload_allowed_types),
            code="unsupported_content_type",
        )
    if size is not None and size > settings.upload_max_bytes:
        raise PayloadTooLarge(
            f"The file is {size} bytes; files may be at most "
            f"{_megabytes(settings.upload_max_bytes)} ({settings.upload_max_bytes} bytes)",
            code="file_too_large",
        )
    return essence


def create_upload_url(request: Request, user: AuthenticatedUser) -> Response:
    body = parse_json(request, UploadUrlRequest)
    content_type = check_upload(body.contentType, body.size)
    storage = media_storage()
    upload_id = uuid.uuid4()
    name = object_names.object_name(user.id, upload_id, body.filename)
    # The URL signs the Content-Type exactly as the client sent it, since the existing
    # frontend PUTs with that same string (``file.type``): signing a normalised spelling
    # (``image/PNG`` as ``image/png``) would make Cloud Storage refuse its upload. The record
    # keeps the essence, which is what the first-use checks compare.
    # Signed before the record is written (signing may be a network call, which must not
    # hold a transaction open); a URL is only ever returned once its record is committed.
    signed = storage.sign_upload(
        name, body.contentType.strip(), body.size if body.bindSize else None
    )
    try:
        with database().transaction() as tx:
            media.record_upload(
                tx,
                upload_id=upload_id,
                user_id=user.id,
                bucket=storage.bucket_name,
                object_name=name,
                content_type=content_type,
                declared_size=body.size,
            )
    except pg8000.exceptions.DatabaseError as error:
        if sqlstate(error) == FOREIGN_KEY_VIOLATION:
            raise Unauthorized("This account no longer exists", code="user_deleted") from None
        raise
    answer = UploadUrlResponse(
        url=signed.url,
        gcs_url=storage.object_url(name),
        gs_uri=storage.gs_uri(name),
        object_name=name,
        method="PUT",
        headers=signed.headers,
        expires_at=signed.expires_at,
        upload_id=str(upload_id),
        max_bytes=storage.max_bytes,
    )
    return json_response(answer)


API = make_api(
    "upload_url", {"createUploadUrl": create_upload_url}, authenticate=request_authenticator()
)


@functions_framework.http
def upload_url(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to the handler."""
    return API.handle(request)
