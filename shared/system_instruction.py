"""The system instruction: loaded from SYSTEM_INSTRUCTION_URL, cached, refreshed off the hot path.

``SYSTEM_INSTRUCTION_URL`` may be ``gs://bucket/object`` (read with the function's service
account), ``https://...``, a file path, or empty for the bundled default
(``shared/system_instruction.md``). The text may contain ``{user_name}``, replaced per turn.

The first load happens at instance start, before any request (a failure falls back to the
bundled default and is retried 30 s later). A cached text older than
``SYSTEM_INSTRUCTION_TTL_SECONDS`` is still used while one background thread reloads it, so
no request ever waits on the network for it. A failed reload keeps the last good text.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_DEFAULT = Path(__file__).with_name("system_instruction.md")
FIRST_LOAD_WAIT_SECONDS = 3.0
FETCH_TIMEOUT_SECONDS = 5.0
MAX_BYTES = 64 * 1024
DEFAULT_USER_NAME = "the user"


def fetch_instruction(source: str | None) -> str:
    """Read the instruction from a gs:// URI, an http(s) URL or a file; the bundled default."""
    if not source:
        return BUNDLED_DEFAULT.read_text(encoding="utf-8")
    if source.startswith("gs://"):
        # Only instances configured with gs:// pay this import (~0.3 s), in the background.
        from google.cloud.storage import Client

        bucket, _, name = source[len("gs://") :].partition("/")
        data: bytes = (
            Client().bucket(bucket).blob(name).download_as_bytes(timeout=FETCH_TIMEOUT_SECONDS)
        )
    elif source.startswith(("https://", "http://")):
        with urllib.request.urlopen(source, timeout=FETCH_TIMEOUT_SECONDS) as response:
            data = response.read(MAX_BYTES + 1)
    else:
        data = Path(source).read_bytes()
    if len(data) > MAX_BYTES:
        raise ValueError(f"system instruction is larger than {MAX_BYTES} bytes")
    return data.decode("utf-8").strip()


def personalise(template: str, user_name: str | None) -> str:
    """Put the user's name where the instruction says ``{user_name}``."""
    return template.replace("{user_name}", user_name or DEFAULT_USER_NAME)


class SystemInstruction:
    """A per-instance cache of the instruction text with a TTL and background refresh."""

    def __init__(self, source: str | None, ttl_seconds: float) -> None:
        self._source = source
        self._ttl = ttl_seconds
        self._text: str | None = None
        self._loaded_at = 0.0
        self._refreshing = threading.Lock()
        self._first_load = threading.Event()

    def start(self) -> None:
        """Load the instruction now (call at instance start, before any request).

        Synchronous on purpose: the entry module is imported in gunicorn's master, which
        forks the worker afterwards, and a thread started here would not exist in the worker.
        Later refreshes start their threads lazily, in the process that serves requests.
        """
        if self._refreshing.acquire(blocking=False):
            self._refresh()

    def text(self) -> str:
        """The current instruction template, never blocking on a reload."""
        if self._text is None:
            self._refresh_in_background()
            self._first_load.wait(FIRST_LOAD_WAIT_SECONDS)
            if self._text is None:
                return BUNDLED_DEFAULT.read_text(encoding="utf-8")
        elif time.monotonic() - self._loaded_at > self._ttl:
            self._refresh_in_background()
        return self._text

    def _refresh_in_background(self) -> None:
        if self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh, daemon=True, name="system-instruction").start()

    def _refresh(self) -> None:
        try:
            text = fetch_instruction(self._source)
            self._text = text
            self._loaded_at = time.monotonic()
        except Exception as error:  # noqa: BLE001 - any failure keeps the last good text
            logger.warning(
                "system instruction reload failed; keeping the last good one",
                extra={"error": type(error).__name__},
            )
            if self._text is None:
                self._text = BUNDLED_DEFAULT.read_text(encoding="utf-8")
                self._loaded_at = time.monotonic() - self._ttl + 30  # retry in 30 s
        finally:
            self._first_load.set()
            self._refreshing.release()
