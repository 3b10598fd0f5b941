"""A small HTTP/1.1 client for one thing: POST a JSON body, read a Server-Sent Events answer.

The model's stream is read by the request thread that serves the stream, on a plain socket,
so a streamed chunk crosses one thread (one ``recv``, our parse, the write to the client)
instead of two (an event loop thread, then a queue hand-off). The socket is non-blocking and
waited on with ``poll`` for at most a heartbeat's time, so the reader wakes up while the
server is silent: :func:`stream_events` then yields an empty batch (the caller's heartbeat)
and gives up with :class:`ServerSilent` after ``silence_seconds`` without a byte.
(``socket.SocketIO``, so ``http.client``, cannot read again after a timeout:
"cannot read from timed out object".) Hence this reader: status line, headers, a
``Content-Length`` or chunked body, SSE events (``data: <json>`` lines ended by a blank
line) decoded incrementally, one ``json.loads`` each.

Connections are kept alive in a per-process :class:`ConnectionPool` (by scheme, host and
port; TLS through one ``ssl.create_default_context()``, certificates verified, SNI). A
response read to its end returns its connection to the pool; a stream abandoned mid-way
(the generator closed) closes its socket, so the server stops sending and we stop paying
for what it generates. A pooled connection the server had closed is retried once on a
fresh one, before any byte of the response (as urllib3 and aiohttp do).
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

# Bytes asked of one recv: an SSE event is a few hundred bytes to a few KiB.
RECV_BYTES = 65536
# An error answer's body is read whole to build the error; more than this is not an error body.
MAX_ERROR_BODY = 1 << 20
MAX_HEADER_BYTES = 65536
# Idle connections kept per server: enough for a burst's worth of streams to reuse theirs.
MAX_IDLE_PER_SERVER = 256


class ServerSilent(TimeoutError):
    """The server sent nothing for ``silence_seconds``."""


class StreamBroken(ConnectionError):
    """The connection ended or the server broke HTTP before the response's end."""


class ErrorStatus(Exception):
    """The server answered with a status other than 200; ``body`` is its whole body."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


Key = tuple[str, str, int]


class ConnectionPool:
    """Keep-alive connections of one process, by (scheme, host, port).

    Dropped after a fork: a child must not share its parent's sockets (the TLS state would
    be shared by two processes).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, connect_timeout: float = 10.0):
        self._given_context = ssl_context
        self._ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._idle: dict[Key, list[socket.socket]] = {}
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._idle = {}
        self._ssl_context = self._given_context

    def ssl_context(self) -> ssl.SSLContext:
        """This process's TLS context for the pool's connections, created on first use
        (loading the CA bundle: ~10-60 ms, once per process); others may share it."""
        if self._ssl_context is None:  # two threads at once: one context wasted, no harm
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def take(self, key: Key) -> socket.socket | None:
        """An idle connection to ``key``'s server, the most recently used first, or None."""
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give_back(self, key: Key, sock: socket.socket) -> None:
        """Keep ``sock`` (its last response read to the end) for the next request."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE_PER_SERVER:
                idle.append(sock)
                return
        sock.close()

    def connect(self, key: Key) -> socket.socket:
        """A new connection to ``key``'s server (TLS for https, verified, with SNI)."""
        scheme, host, port = key
        sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self.ssl_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return sock

    def idle_count(self, key: Key) -> int:
        with self._lock:
            return len(self._idle.get(key, ()))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for sockets in idle.values():
            for sock in sockets:
                sock.close()


def server_key(url: str) -> tuple[Key, str, str]:
    """``url``'s pool key, its ``Host`` header value and the request target (path?query)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    host = parts.hostname
    host_header = host if ":" not in host else f"[{host}]"
    if port != default_port:
        host_header = f"{host_header}:{port}"
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return (scheme, host, port), host_header, target


def request_bytes(host: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """A POST request: request line, Host, the given headers, Content-Length, the body."""
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def stream_events(
    pool: ConnectionPool,
    url: str,
    headers: dict[str, str],
    body: bytes,
    *,
    heartbeat_seconds: float,
    silence_seconds: float,
) -> Generator[list[Any], None, None]:
    """POST ``body`` to ``url``; yield the SSE events' JSON as they arrive.

    Each item is the events that arrived in one ``recv`` (so a burst is read as one batch),
    or an empty list after ``heartbeat_seconds`` without a byte.

    Raises:
        ErrorStatus: the server answered with another status than 200 (its body read whole).
        ServerSilent: nothing arrived for ``silence_seconds``.
        StreamBroken: the connection ended before the response's end, or broke HTTP.
        OSError: connecting, TLS or the connection failed.
        ValueError: an event's data is not JSON.
    """
    key, host, target = server_key(url)
    request = request_bytes(host, target, headers, body)
    sock = pool.take(key)
    reused = sock is not None
    if sock is None:
        sock = pool.connect(key)
    reader = _Reader(sock, heartbeat_seconds, silence_seconds)
    finished = False
    try:
        while True:
            try:
                sock.settimeout(pool.connect_timeout)  # for the request's bytes to be taken
                sock.sendall(request)
                sock.settimeout(0.0)  # read without blocking (see _Reader.recv)
                head = yield from reader.head()
                break
            except ServerSilent:
                raise
            except OSError:
                # A kept-alive connection the server closed meanwhile fails before any byte
                # of the answer: the request was not taken, so try once on a fresh one.
                if not reused or reader.received:
                    raise
                sock.close()
                sock = pool.connect(key)
                reader = _Reader(sock, heartbeat_seconds, silence_seconds)
                reused = False
        status, reason, fields = head
        body_reader = reader.body(fields)
        if status != 200:
            raise ErrorStatus(status, reason, reader.whole(body_reader))
        yield from _events(body_reader)
        finished = True
    finally:
        if finished and reader.keep_alive(fields):
            pool.give_back(key, sock)
        else:
            sock.close()  # a stream left mid-way: the server sees the hang-up and stops


def _events(chunks: Iterator[bytes | None]) -> Iterator[list[Any]]:
    """SSE events (``data:`` lines up to a blank line, JSON) from the body's byte chunks."""
    pending = b""
    for data in chunks:
        if data is None:
            yield []  # silent for a heartbeat's time
            continue
        pending += data
        if b"\n" not in data:
            continue
        if b"\r" in pending:
            # Google ends lines with CRLF; a CR at the very end may be half of one.
            held = pending.endswith(b"\r")
            text = pending[:-1] if held else pending
            pending = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                pending += b"\r"
        blocks = pending.split(b"\n\n")
        pending = blocks.pop()
        batch = [event for block in blocks if (event := _event(block)) is not None]
        if batch:
            yield batch
    if pending.strip(b"\r\n"):
        event = _event(pending.rstrip(b"\r\n"))
        if event is not None:
            yield [event]


def _event(block: bytes) -> Any:
    """One SSE event's data as JSON; None for an event without data (comments, ids)."""
    data = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in block.split(b"\n")
        if line.startswith(b"data:")
    ]
    if not data:
        return None
    return json.loads(b"\n".join(data))


class _Reader:
    """Reads one response from a socket, waking up every ``heartbeat_seconds`` of silence."""

    def __init__(self, sock: socket.socket, heartbeat_seconds: float, silence_seconds: float):
        self.sock = sock
        self.heartbeat = heartbeat_seconds
        self.silence = silence_seconds
        self.buffer = b""
        self.received = False  # any byte of the response
        self.complete = False  # the body read to its end
        self.last_byte = time.monotonic()
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.poller = select.poll()
        if sock is not None:
            self.poller.register(sock, select.POLLIN)

    def recv(self) -> bytes | None:
        """The next bytes; None after a heartbeat's time of silence.

        Raises:
            ServerSilent: after ``silence_seconds`` of silence.
            StreamBroken: the server closed the connection.
        """
        # The socket is non-blocking and waited on with poll, then read: two GIL hand-offs per
        # chunk, as a socket timeout costs, but the wait's length is ours to choose on every
        # call (heartbeats) and a TLS socket's already decrypted bytes are read without a wait.
        deadline = None
        while True:
            if not self.tls or not self.sock.pending():  # type: ignore[attr-defined]
                now = time.monotonic()
                if now - self.last_byte >= self.silence:
                    raise ServerSilent(f"nothing from the server for {now - self.last_byte:.0f} s")
                if deadline is None:
                    deadline = min(now + self.heartbeat, self.last_byte + self.silence)
                elif now >= deadline:
                    return None
                if not self.poller.poll(max(deadline - now, 0.0) * 1000 + 1):
                    continue
            try:
                data = self.sock.recv(RECV_BYTES)
                break
            except (BlockingIOError, ssl.SSLWantReadError):
                continue  # woken without a whole TLS record yet: wait again
        if not data:
            raise StreamBroken("the server closed the connection before the response's end")
        self.received = True
        self.last_byte = time.monotonic()
        return data

    def head(self) -> Generator[list[Any], None, tuple[int, str, dict[str, str]]]:
        """Read the status line and headers (yielding heartbeats); skips 1xx answers.

        Returns (via ``yield from``): ``(status, reason, headers)``, names in lower case.
        """
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    raise StreamBroken("the response's headers are too long")
                data = self.recv()
                if data is None:
                    yield []
                else:
                    self.buffer += data
                continue
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise StreamBroken(f"not an HTTP/1.x response: {lines[0][:80]!r}")
            fields: dict[str, str] = {"": version}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                fields[name] = (
                    f"{fields[name]}, {value.strip()}" if name in fields else value.strip()
                )
            status = int(code)
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue): the real one follows
            return status, reason, fields

    def keep_alive(self, fields: dict[str, str]) -> bool:
        """Whether the connection may carry another request after this response."""
        if not self.complete or self.buffer:
            return False
        connection = fields.get("connection", "").lower()
        if fields[""] == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def body(self, fields: dict[str, str]) -> Iterator[bytes | None]:
        """The body's bytes as they arrive (None: a heartbeat's silence)."""
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return self._chunked()
        length = fields.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise StreamBroken(f"bad Content-Length {length!r}")
            return self._sized(int(length))
        return self._until_close()

    def _sized(self, length: int) -> Iterator[bytes | None]:
        left = length
        while True:
            if self.buffer:
                data, self.buffer = self.buffer[:left], self.buffer[left:]
                left -= len(data)
                yield data
            if not left:
                self.complete = True
                return
            self.buffer = self.recv() or b""
            if not self.buffer:
                yield None

    def _until_close(self) -> Iterator[bytes | None]:
        if self.buffer:
            buffered, self.buffer = self.buffer, b""
            yield buffered
        while True:
            try:
                data = self.recv()
            except StreamBroken:
                return  # the end of the body (the connection is not kept)
            yield data

    def _chunked(self) -> Iterator[bytes | None]:
        """Chunked transfer decoding: ``<hex size>[;ext] CRLF <data> CRLF`` ..., ``0 CRLF CRLF``."""
        buffer = self.buffer
        self.buffer = b""
        position = 0
        while True:
            out: list[bytes] = []
            while True:  # decode every whole piece the buffer holds
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    break
                size_text = buffer[position:line_end].split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise StreamBroken(f"bad chunk size {size_text[:20]!r}") from None
                if size == 0:
                    trailer_end = buffer.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        break  # the trailers (usually none) are not all here yet
                    if out:
                        yield b"".join(out)
                    self.buffer = buffer[trailer_end + 4 :]
                    self.complete = True
                    return
                data_end = line_end + 2 + size
                if len(buffer) < data_end + 2:
                    break  # the chunk is not all here yet
                if buffer[data_end : data_end + 2] != b"\r\n":
                    raise StreamBroken("a chunk does not end with CRLF")
                out.append(buffer[line_end + 2 : data_end])
                position = data_end + 2
            if out:
                yield b"".join(out)
            buffer = buffer[position:]
            position = 0
            data = self.recv()
            if data is None:
                yield None
            else:
                buffer += data

    def whole(self, body: Iterator[bytes | None]) -> bytes:
        """The rest of an (error) body, at most ``MAX_ERROR_BODY`` bytes."""
        parts: list[bytes] = []
        size = 0
        for data in body:
            if data:
                parts.append(data)
                size += len(data)
                if size > MAX_ERROR_BODY:
                    break
        return b"".join(parts)
