"""What a media part's reference names: the (bucket, object) behind any of its spellings.

A media part's text is the ``gcs_url`` /api/upload-url returned, or any other spelling of
the same object: ``gs://bucket/object``, any Cloud Storage URL of it (path style,
virtual-hosted, the JSON API's), signed or not, or the configured public URL or emulator
(the local stack). Pure parsing: whether the object is one of the caller's uploads is
``shared.media.resolve_media``'s question.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Protocol
from urllib.parse import unquote, urlsplit

from shared.errors import UnprocessableEntity

MAX_REFERENCE_CHARS = 4096

GOOGLE_STORAGE_HOSTS = {"storage.googleapis.com", "storage.cloud.google.com", "www.googleapis.com"}
VIRTUAL_HOST_SUFFIX = ".storage.googleapis.com"
JSON_API_PATH = re.compile(r"/(?:download/)?storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>.+)")


class BucketUrls(Protocol):
    """Where the uploads bucket is reached besides Google's hosts."""

    public_url: str
    emulator_url: str | None


def invalid_reference(detail: str) -> UnprocessableEntity:
    return UnprocessableEntity(
        f"{detail}. A media part's text must be the gcs_url /api/upload-url returned "
        "(or the object's gs:// URI or storage URL)",
        code="invalid_media_reference",
    )


def _origin(url: str) -> tuple[str, str]:
    """(``host[:port]``, path prefix) of a configured base URL."""
    parts = urlsplit(url)
    return parts.netloc.lower(), parts.path.rstrip("/")


def parse_reference(storage: BucketUrls, reference: str) -> tuple[str, str]:
    """The (bucket, object name) a media reference names.

    Accepted: ``gs://bucket/object`` (the object name as is), and http(s) URLs of Cloud
    Storage (path style ``storage.googleapis.com/bucket/object``, virtual-hosted
    ``bucket.storage.googleapis.com/object``, the JSON API's object and download paths) or
    of the configured public URL or emulator (the local stack), percent-decoded, with any
    query (a signature) or fragment ignored.

    Raises:
        UnprocessableEntity: ``invalid_media_reference``, for anything else.
    """
    text = reference.strip()
    if not text:
        raise invalid_reference("The media reference is empty")
    if len(text) > MAX_REFERENCE_CHARS:
        raise invalid_reference("The media reference is too long")
    if any(unicodedata.category(character) == "Cc" for character in text):
        raise invalid_reference("The media reference contains control characters")
    if text.startswith("gs://"):
        bucket, _, name = text[len("gs://") :].partition("/")
        if not bucket or not name:
            raise invalid_reference("The gs:// URI names no object")
        return bucket, name

    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise invalid_reference("The media reference is neither a gs:// URI nor a storage URL")
    host, path = parts.netloc.lower(), parts.path
    known_bases = [_origin(storage.public_url)]
    if storage.emulator_url:
        known_bases.append(_origin(storage.emulator_url))
    try:
        if host.endswith(VIRTUAL_HOST_SUFFIX):
            bucket, name = host[: -len(VIRTUAL_HOST_SUFFIX)], unquote(path[1:], errors="strict")
        else:
            prefixes = [prefix for base, prefix in known_bases if base == host]
            if host in GOOGLE_STORAGE_HOSTS:
                prefixes.append("")
            prefix = next((p for p in prefixes if path.startswith(p + "/")), None)
            if prefix is None:
                raise invalid_reference("The media URL is not a Cloud Storage URL")
            path = path[len(prefix) :]
            match = JSON_API_PATH.fullmatch(path)
            if match:
                bucket, name = match["bucket"], unquote(match["object"], errors="strict")
            else:
                bucket, _, quoted = path[1:].partition("/")
                name = unquote(quoted, errors="strict")
    except UnicodeDecodeError:
        raise invalid_reference("The media URL's path is not UTF-8") from None
    if not bucket or not name:
        raise invalid_reference("The media URL names no object")
    return bucket, name
