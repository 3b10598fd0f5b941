"""chats_crud's own Api served by functions-framework's ASGI mode: a measurement, not a deployment.

functions-framework has two servers. Without ``--asgi`` (what every function deploys with) it
is gunicorn's threaded worker around a Flask app; with ``--asgi`` (``FUNCTION_USE_ASGI``) it is
gunicorn's master with uvicorn's worker (uvloop and httptools when installed, as
``uvicorn[standard]`` has them) around a Starlette app that calls the function. "The chat list"
in bench/README.md found gunicorn's threaded worker to be most of a list request's CPU;
bench/list_baseline.py runs this module as its ``asgi`` contender to measure what the other
server would save, with everything else equal: the same module, the same ``Api``, its auth,
query, JSON and access log line.

The bridge is the least a production one would be: the request's ASGI scope and body become
the WSGI environ the Api reads, the Api runs in a pool of ``THREADS`` threads (pg8000 blocks;
gunicorn's worker has as many), and its response goes back as one ``http.response.start`` and
one ``http.response.body``. It leaves out what :mod:`shared.serving` adds to gunicorn's worker
(JSON for the server's own refusals, the body's deadline, shutdown hooks), so what it measures
is a floor for that server.

Run by functions-framework: ``--target chats_crud --source bench/asgi_serving.py --asgi``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shared.errors import InternalError
from shared.web import error_response

ROOT = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location(
    "chats_crud_main", ROOT / "functions" / "chats_crud" / "main.py"
)
assert _spec is not None and _spec.loader is not None
_crud = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crud)

Send = Callable[[dict[str, Any]], Awaitable[None]]
logger = logging.getLogger("raven.bench.asgi")
# As many threads as gunicorn's worker runs the app in (functions-framework's THREADS).
_POOL = ThreadPoolExecutor(max_workers=int(os.environ.get("THREADS", "40")))


class _Answer:
    """An ASGI response: the Api's status, headers and body, sent in two messages."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def _answer(environ: dict[str, Any]) -> _Answer:
    """In a pool thread: the Api's response to the request, rendered."""
    try:
        response = _crud.API.handle(_crud.Request(environ))
    except Exception as error:  # the Api answers its own errors; as serving.DirectApp does
        logger.error("unhandled error outside the Api", exc_info=error)
        response = error_response(InternalError("Internal server error"))
    body = b"".join(response.iter_encoded())
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
    ]
    return _Answer(response.status_code, headers, body)


def _environ(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of an ASGI HTTP request whose body has been read."""
    client = scope.get("client") or ("", 0)
    host, port = scope.get("server") or ("localhost", None)
    if port is None:
        port = 443 if scope["scheme"] == "https" else 80
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
        "REMOTE_ADDR": client[0],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope["scheme"],
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        # The body is read in full: its length, however it came (chunked or not).
        "CONTENT_LENGTH": str(len(body)),
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue  # would pass for its "-" twin in the environ (as gunicorn drops it)
        key = name.upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if key == "CONTENT_TYPE":
            environ[key] = value
        elif key not in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            key = "HTTP_" + key
            if key in environ:
                value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            environ[key] = value
    return environ


async def chats_crud(request: Any) -> _Answer:
    """Entry point (a Starlette request, from functions-framework's ASGI app)."""
    body = await request.body()
    environ = _environ(request.scope, body)
    return await asyncio.get_running_loop().run_in_executor(_POOL, _answer, environ)
