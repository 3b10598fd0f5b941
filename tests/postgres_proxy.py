"""A TCP proxy in front of the stack's PostgreSQL that can lose a statement's reply after
its commit: what a network cut between Cloud Run and Cloud SQL does at the worst moment,
which no real component here can be asked to do.

Everything passes through unchanged, PostgreSQL's wire protocol (v3) is only read: each
client's ``Parse`` messages name their statement's text, its ``Bind`` messages the statement
they run, a simple ``Query`` (``COMMIT``) carries its text. Armed with
:meth:`PostgresProxy.lose_reply_after_commit`, the next run of a statement whose text
contains a marker goes to the server as sent, but its reply is held until the server says
``ReadyForQuery`` (sent only once that statement's implicit transaction, or the ``COMMIT``,
has committed), then the client's connection is cut without a byte of it: the client sees
its connection break, not knowing that the statement committed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any


def _messages(buffer: bytearray, typed: bool = True) -> Iterator[tuple[bytes, bytes]]:
    """The whole messages at the buffer's start (type byte, body), removed from it."""
    while True:
        header = 5 if typed else 4
        if len(buffer) < header:
            return
        length = struct.unpack("!I", buffer[header - 4 : header])[0]
        end = header - 4 + length
        if len(buffer) < end:
            return
        kind = bytes(buffer[:1]) if typed else b""
        body = bytes(buffer[header:end])
        del buffer[:end]
        yield kind, body
        typed = True


def _cstrings(body: bytes, count: int) -> list[str]:
    return [part.decode() for part in body.split(b"\0", count)[:count]]


class _Link:
    """One client connection and its server connection."""

    def __init__(self, proxy: PostgresProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.connect(proxy.server_socket)
        self.statements: dict[str, str] = {}  # statement name -> its text
        self.losing = False  # the reply now coming is to be lost
        self.cut = threading.Event()

    def run(self) -> None:
        threading.Thread(target=self._from_client, daemon=True).start()
        threading.Thread(target=self._from_server, daemon=True).start()

    def close(self) -> None:
        self.cut.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _from_client(self) -> None:
        pending = bytearray()
        typed = False  # the startup message has no type byte
        try:
            while data := self.client.recv(65536):
                pending += data
                for kind, body in _messages(pending, typed):
                    typed = True
                    self._note(kind, body)
                self.server.sendall(data)
        except OSError:
            pass
        self.close()

    def _note(self, kind: bytes, body: bytes) -> None:
        if kind == b"P":  # Parse: statement name, text
            name, text = _cstrings(body, 2)
            self.statements[name] = text
        elif kind == b"B":  # Bind: portal, statement name
            _, name = _cstrings(body, 2)
            if self.proxy.takes_reply_of(self.statements.get(name, "")):
                self.losing = True
        elif kind == b"Q":  # a simple query (BEGIN, COMMIT): its text
            [text] = _cstrings(body, 1)
            if self.proxy.takes_reply_of(text):
                self.losing = True

    def _from_server(self) -> None:
        pending = bytearray()
        try:
            while data := self.server.recv(65536):
                pending += data
                ready = any(kind == b"Z" for kind, _ in _messages(pending))
                if self.losing:
                    if ready:  # committed: the reply is never delivered
                        self.proxy.lost.set()
                        break
                    continue
                self.client.sendall(data)
        except OSError:
            pass
        self.close()


class PostgresProxy:
    """Listens on 127.0.0.1; each connection is relayed to PostgreSQL's unix socket."""

    def __init__(self, server_socket: str) -> None:
        self.server_socket = server_socket
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._marker: str | None = None
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self.lost = threading.Event()  # a reply was lost
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """``database_url`` (the stack's, on its unix socket) through this proxy."""
        from urllib.parse import urlsplit

        parts = urlsplit(database_url)
        user = parts.username or "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}{parts.path}?sslmode=disable"

    def lose_reply_after_commit(self, marker: str) -> None:
        """Lose the reply of the next run of a statement whose text contains ``marker``."""
        with self._lock:
            self._marker = marker
            self.lost.clear()

    def takes_reply_of(self, text: str) -> bool:
        with self._lock:
            if self._marker is not None and self._marker in text:
                self._marker = None  # once
                return True
            return False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(self, client)
            with self._lock:
                self._links.append(link)
            link.run()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def __enter__(self) -> PostgresProxy:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
