"""Work a response must not wait for, but that must not be lost: one thread per process.

A turn's ``done`` is its client's last event; what it asks for after that (Cloud Tasks for a
rolling summary or a title, ~4 ms of a gRPC call) runs here, so the response ends as soon as
``done`` is written. Jobs run one at a time, in order, each in the context (the request's
trace id, for the logs) of the request that handed it over; a job that raises is logged.

Nothing is lost at shutdown: the thread is not a daemon, so a process that exits (gunicorn's
worker after SIGTERM, once its requests are done) first waits for every job handed over.
The thread lives only while there is work: it ends after :data:`IDLE_SECONDS` without any,
and as soon as nothing is left once :meth:`Background.drain` (SIGTERM) was called or the
main thread has returned (the process is exiting); the next job starts it again. After a
fork (gunicorn's workers) a child starts its own.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable

logger = logging.getLogger("raven.background")

# How long the thread waits for more work before it ends.
IDLE_SECONDS = 1.0
# How often an idle thread looks whether it should end.
_POLL_SECONDS = 0.1

_workers: weakref.WeakSet[Background] = weakref.WeakSet()


class Background:
    """A per-process queue of small jobs and the one thread that runs them."""

    def __init__(self, name: str, idle_seconds: float = IDLE_SECONDS) -> None:
        self._name = name
        self._idle_seconds = idle_seconds
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending = 0  # handed over and not finished (under _lock)
        self._draining = False
        _workers.add(self)

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` soon, on this process's background thread, in the caller's context."""
        context = contextvars.copy_context()
        with self._lock:
            self._pending += 1
            self._jobs.put(lambda: context.run(job))
            if self._thread is None or not self._thread.is_alive():
                # Not a daemon: the process's exit waits for the jobs handed over.
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=False)
                self._thread.start()

    def held(self) -> Held:
        """A holder of one response's jobs, handed over only once that response has ended
        (:meth:`Held.release`, from the response's close): the job's CPU then competes with
        nothing the client still waits for."""
        return Held(self)

    def drain(self) -> None:
        """SIGTERM: run what is queued, then let the thread end without its idle wait.
        Safe in a signal handler: it does not block."""
        self._draining = True
        self._jobs.put(None)  # wakes an idle thread

    def pending(self) -> int:
        """Jobs handed over and not finished yet."""
        return self._pending

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            try:
                job = self._jobs.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                job = None
            if job is None:
                with self._lock:
                    # Ends only with nothing pending (submit holds the lock and starts no
                    # thread while this one lives, so a job handed over meanwhile runs
                    # first): when draining, when the process is exiting (its main thread
                    # has returned and waits for this one), or when idle long enough.
                    if self._pending == 0 and (
                        self._draining
                        or not threading.main_thread().is_alive()
                        or time.monotonic() - idle_since >= self._idle_seconds
                    ):
                        self._thread = None
                        return
                continue
            try:
                job()
            except Exception:
                logger.exception("background job failed", extra={"worker": self._name})
            finally:
                with self._lock:
                    self._pending -= 1
                idle_since = time.monotonic()

    def _forget_after_fork(self) -> None:
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None
        self._pending = 0
        self._draining = False


class Held:
    """One response's jobs, held until it has ended, then handed to a :class:`Background`."""

    def __init__(self, worker: Background) -> None:
        self._worker = worker
        self._jobs: list[Callable[[], None]] | None = []  # None: released
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        """Hold ``job`` until :meth:`release`; after it, hand it over at once (a turn that
        outlived its client ends after its response did)."""
        context = contextvars.copy_context()
        with self._lock:
            if self._jobs is not None:
                self._jobs.append(lambda: context.run(job))
                return
        self._worker.submit(job)

    def release(self) -> None:
        """The response has ended: hand over what is held (and what comes later)."""
        with self._lock:
            jobs, self._jobs = self._jobs or [], None
        for job in jobs:
            self._worker.submit(job)


def _after_fork_in_child() -> None:
    for worker in list(_workers):
        worker._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
