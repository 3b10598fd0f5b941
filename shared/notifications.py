"""PostgreSQL ``LISTEN``/``NOTIFY`` for this process: one connection fanning notices out.

A :class:`Listener` holds one ``LISTEN`` connection on one channel and wakes whoever
subscribed to the key a notice names, so many waiters in a process cost one connection.
It only moves notices: what they mean belongs to the module that sends them (resumable
answers, :mod:`shared.answers`, which hands in a callback for notices that must act at once).
A second, *follow* channel is listened on only while someone subscribed: notices only a
waiter needs (an answer's progress, several a second per answer) then cost nothing to a
process that has no waiter (each notice read is a wake-up and a round trip).

A notice's payload is ASCII (as pg8000 reads payloads): ``<kind> <key> [<rest>]``, the key a
UUID. The connection is checked (and late notices read) at least every
:data:`LISTEN_CHECK_SECONDS`; when it is lost, every waiter is woken (what it missed
meanwhile must be read again from the rows) and it reconnects shortly.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("raven.notifications")

# The listener's connection is checked (and late notifications read) at least this often.
LISTEN_CHECK_SECONDS = 1.0
# How long a lost connection waits before it is opened again.
RECONNECT_SECONDS = 1.0

# Called with a notice's kind and key before its subscribers are woken.
NoticeHandler = Callable[[str, uuid.UUID], None]


class Listener:
    """One ``LISTEN`` connection on ``channel`` (and on ``follow_channel`` while anyone
    subscribed); wakes the subscribers of each notice's key."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        on_notice: NoticeHandler | None = None,
        *,
        follow_channel: str | None = None,
        thread_name: str = "listener",
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._follow_channel = follow_channel
        self._on_notice = on_notice
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._waiters: dict[uuid.UUID, set[threading.Event]] = collections.defaultdict(set)
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while the connection listens
        self.following = threading.Event()  # set while it listens on the follow channel
        self._stopped = threading.Event()  # set by stop(): the thread closes and ends
        # Written to wake the listener's thread (a first subscriber wants the follow channel).
        self._poke_read, self._poke_write = os.pipe()
        os.set_blocking(self._poke_read, False)
        os.set_blocking(self._poke_write, False)
        self._pipe_lock = threading.Lock()  # a poke never writes to a pipe stop() closed
        self._pipe_open = True

    def start(self) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._thread_name)
                self._thread.daemon = True
                self._thread.start()

    def stop(self, timeout: float = LISTEN_CHECK_SECONDS + 1) -> None:
        """Stop listening: the thread closes its connection and ends (waited for at most
        ``timeout``). A stopped listener does not start again; its subscribers are woken."""
        with self._lock:
            self._stopped.set()
            thread = self._thread
        self._poke()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return  # still closing its connection: it may yet read the pipe
        with self._pipe_lock:
            if self._pipe_open:
                self._pipe_open = False
                os.close(self._poke_read)
                os.close(self._poke_write)

    def subscribe(self, key: uuid.UUID) -> threading.Event:
        """An event set whenever a notice names ``key`` (or :meth:`wake_all` is called).

        With a follow channel not listened on yet, waits (at most
        :data:`LISTEN_CHECK_SECONDS`) until it is, so a subscriber misses no more of its
        notices than of the main channel's.
        """
        self.start()
        wake = threading.Event()
        with self._lock:
            self._waiters[key].add(wake)
            following = self.following.is_set()
        if self._follow_channel is not None and not following and not self._stopped.is_set():
            self._poke()
            self.following.wait(LISTEN_CHECK_SECONDS)
        return wake

    def unsubscribe(self, key: uuid.UUID, wake: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[key]

    def _poke(self) -> None:
        """Wake the listener's thread from its ``select``."""
        with self._pipe_lock:
            if self._pipe_open:
                with contextlib.suppress(BlockingIOError):  # a poke is pending already
                    os.write(self._poke_write, b"!")

    def wake_all(self) -> None:
        for waiters in list(self._waiters.values()):
            for wake in list(waiters):
                wake.set()

    def dispatch(self, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        try:
            key = uuid.UUID(rest.split(" ", 1)[0])
        except ValueError:
            return
        if self._on_notice is not None:
            self._on_notice(kind, key)
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for wake in waiters:
            wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            connection = None
            try:
                connection = self._connect()
                connection.autocommit = True
                # pg8000 keeps the last 100 by default; a burst must not push any out.
                connection.notifications = collections.deque(maxlen=100_000)
                connection.execute_simple(f"LISTEN {self._channel}")
                if self._stopped.is_set():  # stopped while connecting
                    continue
                self.listening.set()
                self._listen(connection)
            except Exception:  # subscribers poll meanwhile; reconnect shortly
                if not self._stopped.is_set():
                    logger.warning(
                        "the listener on %s lost its connection", self._channel, exc_info=True
                    )
            finally:
                self.listening.clear()
                self.following.clear()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()
            self.wake_all()  # what was missed meanwhile: subscribers read the rows again
            self._stopped.wait(RECONNECT_SECONDS)
        self.wake_all()  # stopped: the subscribers read the rows themselves from now on

    def _listen(self, connection: Any) -> None:
        sock = connection._usock  # pg8000 reads notifications only while running a statement
        last_check = time.monotonic()
        channels = {self._channel, self._follow_channel}
        while not self._stopped.is_set():
            self._follow_as_needed(connection)
            notifications = connection.notifications
            while notifications:
                _, channel, payload = notifications.popleft()
                if channel in channels:
                    self.dispatch(payload)
            readable, _, _ = select.select([sock, self._poke_read], [], [], LISTEN_CHECK_SECONDS)
            if self._poke_read in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._poke_read, 4096)
            if self._stopped.is_set():
                return
            if sock in readable or time.monotonic() - last_check >= LISTEN_CHECK_SECONDS:
                connection.execute_simple("SELECT 1")  # reads what arrived, checks the link
                last_check = time.monotonic()

    def _follow_as_needed(self, connection: Any) -> None:
        """LISTEN on the follow channel while anyone subscribed, UNLISTEN when nobody is."""
        if self._follow_channel is None:
            return
        with self._lock:  # decided with the subscribers' view of ``following``
            wanted = bool(self._waiters)
            was_following = self.following.is_set()
            if was_following and not wanted:
                self.following.clear()
        if wanted and not was_following:
            connection.execute_simple(f"LISTEN {self._follow_channel}")
            self.following.set()
        elif was_following and not wanted:
            connection.execute_simple(f"UNLISTEN {self._follow_channel}")
