"""Cloud Storage: the uploads bucket (names, signed URLs, reads, promotion, deletion).

Browsers reach the private uploads bucket only through V4 signed URLs, signed as
:mod:`shared.signing` describes. Both signers give the same URL shape: ``STORAGE_PUBLIC_URL``
(Google's endpoint unless set; locally the router, which proxies to the emulator)
``/<bucket>/<object>?X-Goog-...``.

The storage deletion queue's worker (:mod:`shared.deletions`) deletes through
:class:`CloudObjectStore`; :func:`schedule_storage_cleanup` starts it for this instance.

google-cloud-storage is imported on first use only: it costs ~0.3 s of cold start, which
chats_crud pays only when a page has media or a chat is deleted.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from shared import deletions
from shared.db import database
from shared.errors import StorageUnavailable
from shared.settings import Settings, get_settings
from shared.signing import (
    CLOUD_PLATFORM_SCOPE,
    SignedUrl,
    Signer,
    signed_expiry,
    signer_from_settings,
)

if TYPE_CHECKING:
    from google.cloud.storage import Client

logger = logging.getLogger(__name__)

GOOGLE_STORAGE_URL = "https://storage.googleapis.com"
CONTENT_LENGTH_RANGE = "x-goog-content-length-range"

# Bucket calls made while a request waits: fail within seconds rather than the SDK's 120 s.
REQUEST_PATH_TIMEOUT_SECONDS = 10.0
REQUEST_PATH_RETRY_SECONDS = 15.0

# A signed GET URL is reused until it has less than this share of its lifetime left, so the
# browser always gets at least half of MEDIA_URL_TTL_SECONDS.
DOWNLOAD_URL_REUSE_SHARE = 0.5
DOWNLOAD_URLS_CACHED = 10_000
# Concurrent IAM signBlob calls when one page needs many new signatures, and the longest a
# page waits for them.
SIGNING_THREADS = 8
SIGNING_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class StoredObject:
    """What the bucket says about an object."""

    content_type: str | None
    size: int
    generation: int | None  # pins reads and the promotion's copy to the bytes checked


def make_client(settings: Settings) -> Client:
    """A storage client with the function's own credentials (the emulator's when configured).

    The credentials are passed even to the emulator, so the local stack takes the deployed
    code path (metadata-server credentials) and does not fall back to anonymous access.
    """
    import google.auth
    from google.cloud import storage

    credentials, project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    options = (
        {"api_endpoint": settings.storage_emulator_host} if settings.storage_emulator_host else None
    )
    return storage.Client(
        project=settings.project_id or project, credentials=credentials, client_options=options
    )


def _request_path_retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(REQUEST_PATH_RETRY_SECONDS)


# --- the uploads bucket ------------------------------------------------------------------


class MediaStorage:
    """The uploads bucket: object URIs and URLs, signing, and the checks media needs."""

    def __init__(
        self,
        bucket_name: str,
        *,
        signer: Signer,
        client_factory: Callable[[], Client],
        public_url: str | None = None,
        emulator_url: str | None = None,
        max_bytes: int,
        upload_ttl_seconds: int = 900,
        download_ttl_seconds: int = 3600,
    ) -> None:
        """
        Args:
            bucket_name: the uploads bucket (GCS_BUCKET_NAME).
            signer: how URLs are signed (see the module's docstring).
            client_factory: makes the storage client, on first use only.
            public_url: the base URL browsers use; Google's endpoint when None.
            emulator_url: the emulator's URL, when there is one (its URLs are references too).
            max_bytes: the largest upload (UPLOAD_MAX_BYTES).
            upload_ttl_seconds: lifetime of a signed PUT URL.
            download_ttl_seconds: lifetime of a signed GET URL for media in chat history.
        """
        self.bucket_name = bucket_name
        self.signer = signer
        self.public_url = (public_url or GOOGLE_STORAGE_URL).rstrip("/")
        self.emulator_url = emulator_url.rstrip("/") if emulator_url else None
        self.max_bytes = max_bytes
        self.upload_ttl_seconds = upload_ttl_seconds
        self.download_ttl_seconds = download_ttl_seconds
        self._client_factory = client_factory
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._downloads: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, client_factory: Callable[[], Client] | None = None
    ) -> MediaStorage:
        """The uploads bucket as settings describe it; the client from ``client_factory``."""
        settings.require("GCS_BUCKET_NAME")
        assert settings.gcs_bucket_name is not None
        return cls(
            settings.gcs_bucket_name,
            signer=signer_from_settings(settings),
            client_factory=client_factory or (lambda: make_client(settings)),
            public_url=settings.storage_public_url,
            emulator_url=settings.storage_emulator_host,
            max_bytes=settings.upload_max_bytes,
            upload_ttl_seconds=settings.upload_url_ttl_seconds,
            download_ttl_seconds=settings.media_url_ttl_seconds,
        )

    @property
    def client(self) -> Client:
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    # --- names and URLs ------------------------------------------------------------------

    def gs_uri(self, object_name: str) -> str:
        return f"gs://{self.bucket_name}/{object_name}"

    def object_url(self, object_name: str) -> str:
        """The object's plain (unsigned) storage URL: what ``gcs_url`` is."""
        return f"{self.public_url}/{self.bucket_name}/{quote(object_name, safe='/~')}"

    # --- signing ---------------------------------------------------------------------------

    def _sign(self, object_name: str, ttl_seconds: int, **options: Any) -> str:
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError

        blob = self.client.bucket(self.bucket_name).blob(object_name)
        try:
            arguments = self.signer.signing_arguments()
            return str(
                blob.generate_signed_url(
                    version="v4",
                    expiration=datetime.timedelta(seconds=ttl_seconds),
                    api_access_endpoint=self.public_url,
                    **arguments,
                    **options,
                )
            )
        except (GoogleAuthError, GoogleAPIError, OSError) as error:
            # IAM signBlob or the metadata server failed: a dependency, not the caller.
            logger.error("URL signing failed", extra={"error": type(error).__name__})
            raise StorageUnavailable("Cannot sign the URL right now, please retry") from error

    def sign_upload(
        self, object_name: str, content_type: str, exact_size: int | None = None
    ) -> SignedUrl:
        """A PUT URL for one object, bound to its content type (and optionally its size).

        The signature covers the host, the method, the object's path, the expiry and every
        header returned in ``headers``, which the PUT must carry with exactly these values.
        By default that is ``Content-Type`` alone, so the plainest browser PUT works (Cloud
        Storage refuses a PUT lacking any signed header). With ``exact_size`` the URL also
        signs ``x-goog-content-length-range: <size>,<size>``, and GCS refuses any other body
        length. What the URL does not bind (the real size and bytes of a plain upload) is
        checked when the upload is first referenced (``shared.media.resolve_media``).
        """
        headers = {"Content-Type": content_type}
        if exact_size is not None:
            headers[CONTENT_LENGTH_RANGE] = f"{exact_size},{exact_size}"
        options = {
            "method": "PUT",
            "content_type": content_type,
            "headers": {k: v for k, v in headers.items() if k != "Content-Type"},
        }
        if not self.signer.network_bound:
            url = self._sign(object_name, self.upload_ttl_seconds, **options)
        else:
            # The SDK retries a failing signBlob for up to two minutes: answer a 503 within
            # SIGNING_WAIT_SECONDS instead (the abandoned call ends with its retries).
            pool = ThreadPoolExecutor(1)
            future = pool.submit(self._sign, object_name, self.upload_ttl_seconds, **options)
            pool.shutdown(wait=False)
            done, _ = wait([future], timeout=SIGNING_WAIT_SECONDS)
            if not done:
                logger.error("URL signing timed out")
                raise StorageUnavailable("Cannot sign the URL right now, please retry")
            url = future.result()
        return SignedUrl(url, signed_expiry(url, self.upload_ttl_seconds), headers)

    def download_urls(self, object_names: Iterable[str]) -> dict[str, str]:
        """Signed GET URLs for objects of the bucket, valid for at least half their TTL.

        A URL is reused while it has more than half its lifetime left: with IAM signBlob each
        new signature is a network call, and the same chat page is typically loaded again and
        again. New signatures are made concurrently when they are network calls. An object
        that cannot be signed now is left out (its media shows no URL) rather than failing
        the whole history page.
        """
        now = time.time()
        ttl = self.download_ttl_seconds
        urls: dict[str, str] = {}
        missing: list[str] = []
        for name in dict.fromkeys(object_names):
            cached = self._downloads.get(name)
            if cached is not None and cached[1] - now > ttl * DOWNLOAD_URL_REUSE_SHARE:
                urls[name] = cached[0]
            else:
                missing.append(name)
        if not missing:
            return urls

        def sign(name: str) -> tuple[str, str | None]:
            try:
                return name, self._sign(name, ttl, method="GET")
            except Exception as error:  # noqa: BLE001 - one bad signature must not fail a page
                logger.warning("signing a media URL failed", extra={"error": type(error).__name__})
                return name, None

        if self.signer.network_bound:
            # The SDK retries a failing signBlob for up to two minutes per call: a page waits
            # at most SIGNING_WAIT_SECONDS, and media still unsigned then gets no URL.
            pool = ThreadPoolExecutor(min(SIGNING_THREADS, len(missing)))
            futures = [pool.submit(sign, name) for name in missing]
            done, _ = wait(futures, timeout=SIGNING_WAIT_SECONDS)
            pool.shutdown(wait=False, cancel_futures=True)
            signed = [future.result() for future in futures if future in done]
            if len(signed) < len(missing):
                logger.warning(
                    "media URL signing timed out", extra={"unsigned": len(missing) - len(signed)}
                )
        else:
            signed = [sign(name) for name in missing]
        if len(self._downloads) + len(signed) > DOWNLOAD_URLS_CACHED:
            self._downloads.clear()  # simple and bounded; a refill costs one signature each
        for name, url in signed:
            if url is not None:
                urls[name] = url
                self._downloads[name] = (url, signed_expiry(url, ttl))
        return urls

    # --- checks on objects -----------------------------------------------------------------

    def _bucket_call(self, what: str, call: Callable[[], Any]) -> Any:
        """Run one bucket call on the request path; 503 when the bucket cannot be reached."""
        from google.api_core import exceptions as api_exceptions

        try:
            return call()
        except (api_exceptions.GoogleAPIError, OSError) as error:
            logger.error("bucket call failed", extra={"call": what, "error": type(error).__name__})
            raise StorageUnavailable() from error

    def stat(self, object_name: str) -> StoredObject | None:
        """The object's type, size and generation, or None when it does not exist.

        Raises:
            StorageUnavailable: the bucket cannot be reached.
        """
        blob = self._bucket_call(
            "reading object metadata",
            lambda: self.client.bucket(self.bucket_name).get_blob(
                object_name, timeout=REQUEST_PATH_TIMEOUT_SECONDS, retry=_request_path_retry()
            ),
        )
        if blob is None:
            return None
        return StoredObject(blob.content_type, int(blob.size or 0), blob.generation)

    def read(self, object_name: str, generation: int | None, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (inclusive) of one generation of an object: a ranged read.

        Raises:
            StorageUnavailable: the bucket cannot be reached (or the object vanished).
        """
        blob = self.client.bucket(self.bucket_name).blob(object_name, generation=generation)
        data = self._bucket_call(
            "reading an object",
            lambda: blob.download_as_bytes(
                start=start,
                end=end,
                timeout=REQUEST_PATH_TIMEOUT_SECONDS,
                retry=_request_path_retry(),
                checksum=None,  # a range has no whole-object checksum to compare
            ),
        )
        return bytes(data)

    def stream(
        self, object_name: str, generation: int | None, sink: Callable[[bytes], None]
    ) -> None:
        """Pass one generation of the whole object to ``sink`` as it arrives: one request,
        streamed, so memory stays at one network chunk whatever the size. ``sink`` may raise
        to stop early; its exception propagates.

        Raises:
            StorageUnavailable: the bucket cannot be reached.
        """
        blob = self.client.bucket(self.bucket_name).blob(object_name, generation=generation)

        class Sink:
            def write(self, data: bytes) -> int:
                sink(bytes(data))
                return len(data)

        self._bucket_call(
            "reading an object",
            lambda: blob.download_to_file(
                Sink(), timeout=REQUEST_PATH_TIMEOUT_SECONDS, retry=_request_path_retry()
            ),
        )

    def promote(self, source: str, generation: int | None, destination: str) -> None:
        """Copy one generation of ``source`` to ``destination`` inside the bucket.

        A server-side rewrite: the bytes never pass through the function. Pinning the source
        generation copies exactly the bytes that were checked, even if the client PUT the
        incoming object again meanwhile (its signed URL may still be valid).

        Raises:
            StorageUnavailable: the bucket cannot be reached.
        """
        bucket = self.client.bucket(self.bucket_name)
        source_blob = bucket.blob(source, generation=generation)
        destination_blob = bucket.blob(destination)

        def rewrite() -> None:
            token: str | None = None
            while True:  # large objects may take several calls, each continuing the last
                token, _, _ = destination_blob.rewrite(
                    source_blob,
                    token=token,
                    timeout=REQUEST_PATH_TIMEOUT_SECONDS,
                    retry=_request_path_retry(),
                )
                if token is None:
                    return

        self._bucket_call("promoting an upload", rewrite)

    def delete(self, object_name: str) -> None:
        """Delete an object now; already gone is fine.

        Raises:
            StorageUnavailable: the bucket cannot be reached.
        """
        from google.api_core.exceptions import NotFound

        def delete() -> None:
            with contextlib.suppress(NotFound):
                self.client.bucket(self.bucket_name).delete_blob(
                    object_name, timeout=REQUEST_PATH_TIMEOUT_SECONDS, retry=_request_path_retry()
                )

        self._bucket_call("deleting an object", delete)


# --- per-instance singletons ---------------------------------------------------------------


@lru_cache(maxsize=1)
def storage_client() -> Client:
    """The instance's storage client, created on first use (never at import)."""
    return make_client(get_settings())


@lru_cache(maxsize=1)
def media_storage() -> MediaStorage:
    """The instance's uploads bucket, sharing :func:`storage_client`."""
    return MediaStorage.from_settings(get_settings(), client_factory=storage_client)


# --- what the deletion queue's worker deletes through ----------------------------------------


class CloudObjectStore:
    """:class:`shared.deletions.ObjectStore` on a storage client: any bucket, SDK retries."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def delete(self, bucket: str, object_name: str) -> None:
        from google.api_core.exceptions import NotFound

        # Already gone is done: a retry after a crash, or an object that was never uploaded.
        with contextlib.suppress(NotFound):
            self._client.bucket(bucket).delete_blob(object_name)

    def names_under(self, bucket: str, prefix: str, limit: int) -> list[str]:
        listing = self._client.list_blobs(bucket, prefix=prefix, max_results=limit)
        # islice too: a server that ignores maxResults (the emulator does) still gets passes.
        return [blob.name for blob in itertools.islice(listing, limit)]


@lru_cache(maxsize=1)
def object_store() -> CloudObjectStore:
    """The instance's :class:`CloudObjectStore`, sharing :func:`storage_client`."""
    return CloudObjectStore(storage_client())


def schedule_storage_cleanup() -> None:
    """Delete this instance's queued objects in a background thread; call after committing a
    deletion (see :func:`shared.deletions.schedule_storage_cleanup`)."""
    deletions.schedule_storage_cleanup(database(), object_store)
