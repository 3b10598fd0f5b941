"""What happens to a request before and around :class:`shared.web.Api`: the server's edges.

functions-framework builds a Flask app around the entry point and serves it with gunicorn's
threaded worker (``functions_framework/_http/gunicorn.py``: ``WORKERS`` processes forked from
the master that imported the function, ``THREADS`` threads each, one request per thread, no
other gunicorn setting exposed). Left alone, three things escape our JSON
errors and one starves the instance:

* Flask answers paths its catch-all rule cannot match (``/%0A``: werkzeug's path converter
  stops at a newline), ``/robots.txt`` and ``/favicon.ico`` with an HTML 404, and anything
  that escapes as an HTML 500;
* gunicorn answers what it refuses before any app runs (headers over 8 KiB: 431; a bad
  request line: 400; ...) with an HTML page;
* a client that sends its headers and then stalls its body holds a thread for as long as it
  likes: 16 of them stop a 16-thread instance.

:func:`install` (called by :func:`shared.runtime.make_api` while functions-framework loads
the module, inside its app context) fixes all of these from inside the process:

1. Flask's own HTTP errors become the contract's ``{"detail", "code"}`` JSON (405 with
   ``Allow``);
2. the Flask app is wrapped in :class:`BodyReader`: the body is read in full before any of
   our code runs, within ``REQUEST_BODY_TIMEOUT_SECONDS``; a body that does not arrive in
   time is answered 408 (through the Api, so with CORS and an access log line) and its
   connection closed, which frees the thread;
3. functions-framework's gunicorn application is given :class:`BoundedBodyWorker`, gunicorn's
   threaded worker with JSON for the errors gunicorn answers itself, and with threads to wait
   for slow bodies in beyond the ``THREADS`` that run the app: a request takes one of the
   ``THREADS`` app slots only once its body is in, so stalled bodies never delay a request
   whose body has arrived (bench/hostile.py measures it);
4. unless the function's handlers need Flask's request context (none does now: chat_stream's
   streams no longer use ``stream_with_context``), requests skip Flask's dispatch:
   :class:`DirectApp` hands them to the Api, which routes, answers errors and logs by itself
   (bench/README.md, "The chat list" and "The end of a turn").
5. on SIGTERM (Cloud Run's scale-in or redeploy: SIGKILL follows 10 s later) the worker runs
   the hooks registered with :func:`on_shutdown` (chat_stream stops its turns and ends their
   streams) and waits at most :data:`GRACEFUL_TIMEOUT_SECONDS` for open requests.
6. gunicorn's own log lines (a worker killed, a timeout) go through the root logger, so they
   are entries like ours (JSON deployed) instead of failing in gunicorn's own format.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shared.errors import InternalError
from shared.web import BODY_TIMED_OUT, error_body, error_response

logger = logging.getLogger("raven.serving")

# Threads, beyond THREADS, that may wait for request bodies (a thread blocked in recv costs
# little memory and no CPU). Past THREADS + this, a connection waits in gunicorn's accept queue.
BODY_WAITING_THREADS = 256
READ_CHUNK_BYTES = 64 * 1024

# How long a worker given SIGTERM waits for its open requests: within Cloud Run's 10 s.
GRACEFUL_TIMEOUT_SECONDS = 8

# Run in the worker's SIGTERM handler (so: quick, never blocking).
_shutdown_hooks: list[Callable[[], None]] = []

# One slot per THREADS: set in the worker process by BoundedBodyWorker; None elsewhere (the
# Flask test client, a plain WSGI server), where requests are not gated.
_app_slots: threading.BoundedSemaphore | None = None


class _Deadlines:
    """One thread that shuts the reading side of sockets whose body deadline has passed.

    Shutting down the read side wakes a thread blocked in ``recv`` with end-of-file, whatever
    the client is doing: trickling one byte a second defeats a per-``recv`` timeout, not this.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watch]] = []
        self._condition = threading.Condition()
        self._counter = 0
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> _Watch:
        watch = _Watch(sock)
        with self._condition:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="body-deadlines")
                self._thread.daemon = True
                self._thread.start()
            self._counter += 1
            heapq.heappush(self._heap, (deadline, self._counter, watch))
            self._condition.notify()
        return watch

    def _run(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    _, _, watch = heapq.heappop(self._heap)
                    watch.expire()
                wait = self._heap[0][0] - now if self._heap else None
                self._condition.wait(wait)


class _Watch:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self.done = False
        self.expired = False

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.done = self.expired = True
        with contextlib.suppress(OSError):  # the client is gone already
            self._sock.shutdown(socket.SHUT_RD)

    def finish(self) -> bool:
        """Stop watching; whether the deadline had passed first."""
        with self._lock:
            self.done = True
            return self.expired


_deadlines = _Deadlines()


class BodyReader:
    """WSGI middleware: the request body, read in full within a deadline, then the app.

    The app then finds the body in memory (``wsgi.input`` is a BytesIO with its exact
    ``CONTENT_LENGTH``), so nothing of ours ever blocks on a client. At most
    ``max_body_bytes + 1`` bytes are read: a declared length over the limit is left for the
    Api to refuse (413) unread, and a chunked body over it is handed on as that many bytes
    (the Api refuses it the same way); the connection is then closed, its rest unread.
    """

    def __init__(self, app: Callable[..., Any], max_body_bytes: int, timeout_seconds: float):
        self._app = app
        self._max_body_bytes = max_body_bytes
        self._timeout = timeout_seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        close_connection = self._buffer_body(environ)
        if close_connection:
            start_response = _closing(start_response)
        slots = _app_slots
        if slots is None:
            return self._app(environ, start_response)
        slots.acquire()
        try:
            result = self._app(environ, start_response)
        except BaseException:
            slots.release()
            raise
        return _ReleaseOnClose(result, slots.release)

    def _buffer_body(self, environ: dict[str, Any]) -> bool:
        """Read the body into memory; whether the connection must close afterwards."""
        declared = environ.get("CONTENT_LENGTH") or ""
        chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
        try:
            length = int(declared) if declared else None
        except ValueError:
            length = None
        if length is not None and length > self._max_body_bytes:
            return True  # the Api answers 413 without reading it
        if not chunked and not length:
            return False
        limit = self._max_body_bytes + 1 if length is None else length
        stream = environ["wsgi.input"]
        sock = environ.get("gunicorn.socket")
        watch = None
        if sock is not None and self._timeout > 0:
            watch = _deadlines.watch(sock, time.monotonic() + self._timeout)
        body = io.BytesIO()
        try:
            while body.tell() < limit:
                chunk = stream.read(min(READ_CHUNK_BYTES, limit - body.tell()))
                if not chunk:
                    break
                body.write(chunk)
        except (OSError, ValueError, RuntimeError) as error:
            # gunicorn raises its own errors (NoMoreData, InvalidChunkSize...) for a body cut
            # short or malformed: the request cannot be served either way.
            logger.info("request body unreadable", extra={"error": type(error).__name__})
            if watch is None or not watch.finish():
                environ[BODY_TIMED_OUT] = False
            watch = None
        timed_out = watch.finish() if watch is not None else False
        if timed_out or BODY_TIMED_OUT in environ:
            environ[BODY_TIMED_OUT] = timed_out
            environ["wsgi.input"] = io.BytesIO()
            environ["CONTENT_LENGTH"] = "0"
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            return True
        data = body.getvalue()
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        # A chunked body over the limit was cut short: the rest is still on the socket.
        return chunked and len(data) > self._max_body_bytes


def _closing(start_response: Callable[..., Any]) -> Callable[..., Any]:
    """start_response, closing the connection after the response: the socket holds unread
    bytes of the body, or its reading side is shut."""
    # gunicorn drops an app's Connection header (hop-by-hop) and closes a connection when its
    # Response is told to: start_response is that Response's bound method.
    server_response = getattr(start_response, "__self__", None)
    force_close = getattr(server_response, "force_close", None)
    if callable(force_close):
        force_close()

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers = [(name, value) for name, value in headers if name.lower() != "connection"]
        headers.append(("Connection", "close"))
        return start_response(status, headers, exc_info)

    return start


class _ReleaseOnClose:
    """A WSGI response iterable that gives its app slot back when the server closes it
    (after the last byte of a stream, or when the client left)."""

    def __init__(self, result: Iterable[bytes], release: Callable[[], None]) -> None:
        self._result = result
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


# --- gunicorn ------------------------------------------------------------------------------

# gunicorn's reason phrases for what it refuses itself, as the contract's codes.
_GUNICORN_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, answering the contract's JSON instead of HTML."""
    from gunicorn import util

    detail = mesg or reason
    if status_int == 431:
        detail = "Request headers are too large: at most 8190 bytes per header line"
    code = _GUNICORN_CODES.get(status_int, "bad_request")
    body = error_body(detail, code).model_dump_json(exclude_none=True).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


def _worker_class() -> type:
    from gunicorn import util
    from gunicorn.workers.gthread import ThreadWorker

    class BoundedBodyWorker(ThreadWorker):
        """gunicorn's gthread worker: JSON errors, and bodies awaited outside the app slots."""

        def init_process(self) -> None:
            global _app_slots
            _app_slots = threading.BoundedSemaphore(self.cfg.threads)
            util.write_error = write_json_error  # what handle_error calls for its answers
            super().init_process()

        def load_wsgi(self) -> None:
            super().load_wsgi()
            # Everything imported to serve is kept for the process's life: out of the
            # collector's sight, a full collection no longer walks it, which a request that
            # builds many objects (a long chat's body) would otherwise set off mid-request.
            gc.freeze()

        def get_thread_pool(self) -> Any:
            from concurrent import futures

            return futures.ThreadPoolExecutor(max_workers=self.cfg.threads + BODY_WAITING_THREADS)

        def handle_exit(self, sig: Any, frame: Any) -> None:
            for hook in _shutdown_hooks:
                try:
                    hook()
                except Exception:
                    logger.exception("shutdown hook failed")
            super().handle_exit(sig, frame)

    return BoundedBodyWorker


def _logger_class() -> type:
    from gunicorn.glogging import Logger

    class RootLogger(Logger):
        """gunicorn's logger, writing through the root logger: its lines (at
        ``GUNICORN_LOG_LEVEL``, errors by default) come out as every other line does, JSON
        deployed. Its own handler's format needs each record's process id, which
        :func:`shared.log.lean_records` leaves out, and would fail on every line."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for log in (self.error_log, self.access_log):
                for handler in list(log.handlers):
                    if getattr(handler, "_gunicorn", False):
                        log.removeHandler(handler)
                log.propagate = True

    return RootLogger


def _use_bounded_body_worker() -> None:
    """Make functions-framework's gunicorn application run :class:`BoundedBodyWorker`.

    functions-framework passes gunicorn no settings of ours (its CLI builds the options from
    the environment), so its application class is extended here, before the CLI creates it.
    """
    try:
        from functions_framework._http import gunicorn as ff_gunicorn
    except ImportError:  # gunicorn is not installed (Windows, or a plain WSGI server)
        return
    application = ff_gunicorn.GunicornApplication
    if getattr(application, "_raven_worker", False):
        return
    original: Callable[[Any], None] = application.load_config

    def load_config(self: Any) -> None:
        if "worker_class" not in self.options:
            self.options["worker_class"] = _worker_class()
        self.options.setdefault("graceful_timeout", GRACEFUL_TIMEOUT_SECONDS)
        self.options.setdefault("logger_class", _logger_class())
        original(self)

    application.load_config = load_config  # type: ignore[method-assign]
    application._raven_worker = True  # type: ignore[attr-defined]  # our mark on their class


class DirectApp:
    """WSGI app: the Api answers every request itself, past Flask's and functions-framework's
    dispatch.

    functions-framework routes every path to the one function through Flask: a request
    context pushed and popped, two URL adapters and a catch-all match, an execution id drawn
    from ``random`` (12 calls), signals, ``after_request`` hooks. Measured in process, that is
    about five times the cost of building werkzeug's request and writing the response
    (bench/README.md, "The chat list"), all of it spent before and after our own pipeline,
    which routes, answers errors and logs by itself. The one thing it lacks is Flask's
    request context, which only ``flask.stream_with_context`` needs: a function that streams
    with it would keep Flask's dispatch (``make_api(..., flask_context=True)``); none does
    (a streamed response popping that context ran between its last event and its end).
    """

    def __init__(self, api_handle: Callable[[Any], Any], request_class: type) -> None:
        self._handle = api_handle
        self._request_class = request_class

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        try:
            response = self._handle(self._request_class(environ))
        except Exception as error:  # the Api answers its own errors; this one is never HTML
            logger.error("unhandled error outside the Api", exc_info=error)
            response = error_response(InternalError("Internal server error"))
        return response(environ, start_response)


def on_shutdown(hook: Callable[[], None]) -> None:
    """Run ``hook`` when the worker gets SIGTERM (in the signal handler: it must not block)."""
    if hook not in _shutdown_hooks:
        _shutdown_hooks.append(hook)


def install(
    api_handle: Callable[[Any], Any],
    max_body_bytes: int,
    timeout_seconds: float,
    *,
    flask_context: bool = True,
) -> None:
    """Harden the Flask app functions-framework is building, if one is being built.

    Args:
        api_handle: the Api's pipeline, which answers Flask's own HTTP errors too.
        max_body_bytes: the function's body limit (what :class:`BodyReader` reads at most).
        timeout_seconds: ``REQUEST_BODY_TIMEOUT_SECONDS``.
        flask_context: serve requests through Flask's dispatch (needed by handlers that use
            Flask's request context, e.g. ``stream_with_context``); otherwise the Api answers
            them directly (:class:`DirectApp`).
    """
    import flask
    from werkzeug.exceptions import HTTPException

    if not flask.has_app_context():
        return  # imported outside functions-framework (tests, tools)
    app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
    if getattr(app, "_raven_hardened", False):
        return

    def http_error(error: HTTPException) -> Any:
        return api_handle(flask.request._get_current_object())  # type: ignore[attr-defined]

    def crash(error: Exception) -> Any:
        logger.error("unhandled error outside the Api", exc_info=error)
        return error_response(InternalError("Internal server error"))

    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(500, crash)
    inner = app.wsgi_app if flask_context else DirectApp(api_handle, app.request_class)
    app.wsgi_app = BodyReader(inner, max_body_bytes, timeout_seconds)
    app._raven_hardened = True
    _use_bounded_body_worker()
