"""Cloud Storage: the uploads bucket, signed URLs, and the worker that deletes objects.

**Signing.** Browsers reach the private uploads bucket only through V4 signed URLs. Two ways to
sign, chosen by settings:

* Deployed (the default code path): no key file exists. The function's own credentials come
  from the metadata server (``google.auth.default()``), are refreshed when stale, and
  ``generate_signed_url`` gets ``service_account_email`` (``SIGNER_SERVICE_ACCOUNT``, else the
  credentials' own) and ``access_token``, so Google's IAM ``signBlob`` API signs with a key
  Google holds. Each signature is one network call (~tens of milliseconds), and the account
  needs ``roles/iam.serviceAccountTokenCreator`` on itself.
* Locally and in tests (``SIGNER_KEY_FILE`` set): a service-account key JSON that ``make dev``
  generates in ``.data/`` signs in-process, because ``iamcredentials.googleapis.com`` cannot be
  reached and google-auth and google-cloud-storage hard-code its address (no stand-in can be
  slotted in). The URL, its query and its canonical request are exactly the deployed ones;
  only who computes the RSA signature differs. Settings refuse a key file in production.

Both modes give the same URL shape: ``STORAGE_PUBLIC_URL`` (Google's endpoint unless set;
locally the router, which proxies to the emulator) ``/<bucket>/<object>?X-Goog-...``.

**Deleting.** Rows of ``storage_deletions`` (one object, or every object under a user's
prefix) are queued in the transaction that removed their database rows. The worker
(:func:`process_storage_deletions`) claims due rows with ``FOR UPDATE SKIP LOCKED`` and a lease
(so two instances never work on one row, and a crashed worker's rows come due again when
its lease ends), deletes from the bucket outside any transaction, then deletes the row, or
on failure pushes ``not_before`` back with exponential backoff. Nothing is ever dropped.

Who runs it: :func:`schedule_storage_cleanup`, after a request committed a deletion (a
background thread, off the request path), and the ``storage_sweep`` function, which a
periodic trigger (Cloud Scheduler) calls so that leftovers are retried even when no further
deletion happens. Each run also takes every due leftover, not only its own request's rows.

google-cloud-storage is imported on first use only: it costs ~0.3 s of cold start, which
chats_crud pays only when a page has media or a chat is deleted.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from shared.db import Database, Row
from shared.errors import ServiceUnavailable
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from google.cloud.storage import Client

logger = logging.getLogger(__name__)

GOOGLE_STORAGE_URL = "https://storage.googleapis.com"
CONTENT_LENGTH_RANGE = "x-goog-content-length-range"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

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

# --- the deletion queue
DELETION_LEASE_SECONDS = 600  # longer than any one row's bucket work takes
DELETION_BACKOFF_BASE_SECONDS = 60
DELETION_BACKOFF_MAX_SECONDS = 6 * 3600
DELETION_ATTEMPTS_BEFORE_ERROR_LOG = 5
PREFIX_OBJECTS_PER_PASS = 1000
DELETION_BATCH = 50
# Only a user's own folder (of checked uploads, or of uploads not yet checked) may ever be
# deleted as a prefix: a bug that queued "" or "uploads/" must not be able to empty the bucket.
DELETABLE_PREFIX = re.compile(r"(?:uploads|incoming)/[^/]+/")


class StorageUnavailable(ServiceUnavailable):
    """Cloud Storage (or IAM signing) cannot be reached now; the client should retry."""

    code = "storage_unavailable"

    def __init__(self, detail: str = "File storage is unavailable, please retry shortly") -> None:
        super().__init__(detail, retry_after=5)


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: float  # epoch seconds
    headers: dict[str, str]


@dataclass(frozen=True)
class StoredObject:
    """What the bucket says about an object."""

    content_type: str | None
    size: int
    generation: int | None  # pins reads and the promotion's copy to the bytes checked


# --- signers -----------------------------------------------------------------------------


class KeyFileSigner:
    """Signs in-process with a service-account key file (local stack and tests only)."""

    network_bound = False

    def __init__(self, key_file: str) -> None:
        self._key_file = key_file
        self._credentials: Any = None
        self._lock = threading.Lock()

    def signing_arguments(self) -> dict[str, Any]:
        with self._lock:
            if self._credentials is None:
                from google.oauth2 import service_account

                # google-auth leaves this classmethod unannotated
                self._credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    self._key_file
                )
        return {"credentials": self._credentials}


class IamSigner:
    """Signs through IAM signBlob as the function's own service account (deployed)."""

    network_bound = True

    def __init__(self, service_account: str | None) -> None:
        self._service_account = service_account
        self._credentials: Any = None
        self._lock = threading.Lock()

    def signing_arguments(self) -> dict[str, Any]:
        """A fresh access token and the signer's email, as ``generate_signed_url`` takes them."""
        with self._lock:
            if self._credentials is None:
                import google.auth

                self._credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            credentials = self._credentials
            if not credentials.valid:  # expired, or about to: refresh before signing
                from google.auth.transport.requests import Request

                credentials.refresh(Request())
            token = credentials.token
            email = self._service_account or getattr(credentials, "service_account_email", None)
        if not email or email == "default":
            raise StorageUnavailable("Cannot sign URLs: the service account email is unknown")
        return {"service_account_email": email, "access_token": token}


Signer = KeyFileSigner | IamSigner


def signer_from_settings(settings: Settings) -> Signer:
    if settings.signer_key_file:
        return KeyFileSigner(settings.signer_key_file)
    return IamSigner(settings.signer_service_account)


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


def _signed_expiry(url: str, ttl_seconds: int) -> float:
    """The expiry a V4 URL carries: its own ``X-Goog-Date`` plus ``X-Goog-Expires``."""
    signed_at = parse_qs(urlsplit(url).query)["X-Goog-Date"][0]
    start = datetime.datetime.strptime(signed_at, "%Y%m%dT%H%M%SZ")
    return start.replace(tzinfo=datetime.UTC).timestamp() + ttl_seconds


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
        return SignedUrl(url, _signed_expiry(url, self.upload_ttl_seconds), headers)

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
                self._downloads[name] = (url, _signed_expiry(url, ttl))
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


# --- the deletion worker -------------------------------------------------------------------


def backoff_seconds(attempts: int) -> int:
    """Wait before the next attempt after ``attempts`` failed ones: 1 min, 2, 4 ... 6 h."""
    return int(
        min(DELETION_BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), DELETION_BACKOFF_MAX_SECONDS)
    )


def claim_storage_deletions(
    db: Database, limit: int, lease_seconds: int = DELETION_LEASE_SECONDS
) -> list[Row]:
    """Take up to ``limit`` due rows for this worker alone, for ``lease_seconds``.

    One statement: rows another worker holds locked are skipped, and the claimed rows' due
    time moves to the end of the lease, so no other worker takes them meanwhile. A worker
    that dies holding them leaves them to come due again when the lease ends.
    """
    with db.transaction() as tx:
        return tx.fetch_all(
            """
            UPDATE storage_deletions
            SET attempts = attempts + 1,
                not_before = now() + CAST(:lease AS integer) * INTERVAL '1 second'
            WHERE id IN (
                SELECT id FROM storage_deletions
                WHERE not_before <= now()
                ORDER BY not_before, id
                LIMIT :limit
                FOR UPDATE SKIP LOCKED)
            RETURNING id, bucket, object_name, prefix, attempts
            """,
            lease=lease_seconds,
            limit=limit,
        )


def _delete_object(client: Client, bucket: str, object_name: str) -> None:
    from google.api_core.exceptions import NotFound

    # Already gone is done: a retry after a crash, or an object that was never uploaded.
    with contextlib.suppress(NotFound):
        client.bucket(bucket).delete_blob(object_name)


def _delete_row_objects(client: Client, row: Row) -> bool:
    """Delete what one queue row names; True when nothing of it is left in the bucket."""
    if row["object_name"] is not None:
        if not row["object_name"]:
            raise ValueError("empty object name")
        _delete_object(client, row["bucket"], row["object_name"])
        return True
    prefix = row["prefix"]
    if not isinstance(prefix, str) or not DELETABLE_PREFIX.fullmatch(prefix):
        raise ValueError(f"refusing to delete prefix {prefix!r}: not a user's uploads folder")
    listing = client.list_blobs(row["bucket"], prefix=prefix, max_results=PREFIX_OBJECTS_PER_PASS)
    # islice too: a server that ignores maxResults (the emulator does) still gets passes.
    names = [blob.name for blob in itertools.islice(listing, PREFIX_OBJECTS_PER_PASS)]
    for name in names:
        _delete_object(client, row["bucket"], name)
    return len(names) < PREFIX_OBJECTS_PER_PASS


def _deletion_pass(db: Database, client: Client, limit: int, lease_seconds: int) -> tuple[int, int]:
    """One claim and its bucket work; returns (rows claimed, rows finished)."""
    rows = claim_storage_deletions(db, limit, lease_seconds)
    finished = 0
    for row in rows:
        try:
            complete = _delete_row_objects(client, row)
        except Exception as error:  # noqa: BLE001 - every failure is retried later
            delay = backoff_seconds(row["attempts"])
            level = (
                logging.ERROR
                if row["attempts"] >= DELETION_ATTEMPTS_BEFORE_ERROR_LOG
                else logging.WARNING
            )
            logger.log(
                level,
                "storage deletion failed; retrying later",
                extra={
                    "error": f"{type(error).__name__}: {error}"[:300],
                    "attempts": row["attempts"],
                    "retry_in_seconds": delay,
                },
            )
            with db.transaction() as tx:
                tx.execute(
                    "UPDATE storage_deletions SET not_before = now() + "
                    "CAST(:delay AS integer) * INTERVAL '1 second' WHERE id = :id",
                    delay=delay,
                    id=row["id"],
                )
            continue
        with db.transaction() as tx:
            if complete:
                tx.execute("DELETE FROM storage_deletions WHERE id = :id", id=row["id"])
                finished += 1
            else:
                # A big prefix, deleted in passes: progress, not failure, so due again at once.
                tx.execute(
                    "UPDATE storage_deletions SET not_before = now(), attempts = 0 WHERE id = :id",
                    id=row["id"],
                )
    return len(rows), finished


def process_storage_deletions(
    db: Database,
    client: Client,
    limit: int = DELETION_BATCH,
    *,
    lease_seconds: int = DELETION_LEASE_SECONDS,
) -> int:
    """Claim up to ``limit`` due queue rows and do their bucket work.

    Safe to run on any number of instances at once. Rows whose deletion fails are retried
    later with exponential backoff, never dropped; a prefix larger than one pass is left due
    again for the next call.

    Returns:
        How many queue rows were finished (their objects are gone and the row deleted).
    """
    return _deletion_pass(db, client, limit, lease_seconds)[1]


@dataclass(frozen=True)
class SweepResult:
    finished: int
    due: int  # rows still due when the sweep stopped (0 unless it ran out of time)


def due_storage_deletions(db: Database) -> int:
    row = db.fetch_one("SELECT count(*) AS n FROM storage_deletions WHERE not_before <= now()")
    return int(row["n"]) if row else 0


def storage_deletions_backlog(db: Database) -> tuple[int, float | None]:
    """Rows queued in ``storage_deletions`` and the oldest one's age in seconds (None if empty)."""
    row = db.fetch_one(
        "SELECT count(*) AS n, EXTRACT(EPOCH FROM now() - min(created_at)) AS oldest "
        "FROM storage_deletions"
    )
    if row is None or not row["n"]:
        return 0, None
    return int(row["n"]), float(row["oldest"])


def run_storage_sweep(
    db: Database, client_factory: Callable[[], Client], budget_seconds: float
) -> SweepResult:
    """Work through due rows until none is left or ``budget_seconds`` have passed.

    The storage client is only created when there is work (it is costly to import).
    """
    deadline = time.monotonic() + budget_seconds
    finished = 0
    if due_storage_deletions(db) == 0:
        return SweepResult(0, 0)
    client = client_factory()
    while time.monotonic() < deadline:
        claimed, done = _deletion_pass(db, client, DELETION_BATCH, DELETION_LEASE_SECONDS)
        finished += done
        if claimed == 0:
            return SweepResult(finished, 0)
    return SweepResult(finished, due_storage_deletions(db))


class _BackgroundCleaner:
    """One thread per instance that sweeps the queue whenever woken."""

    def __init__(self, budget_seconds: float = 120.0) -> None:
        self._budget = budget_seconds
        self._lock = threading.Lock()
        self._wanted = False
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        with self._lock:
            self._wanted = True
            if self._thread is not None:
                return  # the running sweep looks again before it stops
            self._thread = threading.Thread(target=self._run, name="storage-cleanup", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from shared.runtime import database

        while True:
            with self._lock:
                if not self._wanted:
                    self._thread = None
                    return
                self._wanted = False
            try:
                result = run_storage_sweep(database(), storage_client, self._budget)
                if result.finished:
                    logger.info(
                        "storage cleanup", extra={"finished": result.finished, "due": result.due}
                    )
            except Exception:  # the queue keeps the work for the next sweep
                logger.exception("storage cleanup failed; the queue keeps the work")


@lru_cache(maxsize=1)
def _cleaner() -> _BackgroundCleaner:
    return _BackgroundCleaner()


def schedule_storage_cleanup() -> None:
    """Delete queued objects in a background thread; call after committing a deletion.

    Returns at once: the bucket work runs off the request path. On Cloud Run with the
    default request-based CPU allocation the instance's CPU is throttled once no request is
    active, so the thread may only progress during later requests, or be lost when the
    instance stops. That costs time, never data: the rows stay queued (and a claimed row's
    lease runs out) until a worker finishes them, and the ``storage_sweep`` function, called
    periodically by Cloud Scheduler, guarantees that worker runs.
    """
    _cleaner().wake()
