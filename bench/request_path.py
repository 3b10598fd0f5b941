"""CPU per request outside the handler: Flask's dispatch vs the Api answering directly.

In process, no network and no database: a function whose one route answers ``[]``, built the
way functions-framework builds it (``create_app``: Flask, its catch-all rule, the execution
id middleware, our error handlers and :class:`shared.serving.BodyReader`), called as a WSGI
app with the headers the frontend sends. Two ways through it:

* ``flask``: functions-framework's Flask dispatch around our Api (``flask_context=True``);
* ``direct``: :class:`shared.serving.DirectApp`, the Api answering the request itself.

Also the pieces of our own pipeline: the access log line (formatted and written to
/dev/null) and route matching. Best of 5 repeats of ``CALLS`` calls, ``time.process_time``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import best_cpu_seconds_per_call

CALLS = 5_000

FUNCTION_SOURCE = """
from types import SimpleNamespace

import functions_framework
from flask import Response

from shared.routes import endpoints_of
from shared.runtime import make_api, start_function

start_function()


def anyone(request):
    return SimpleNamespace(id="user_bench")  # the path around the handler, not the token check


def list_nothing(request, *args, **kwargs):
    return Response(b"[]", mimetype="application/json")


API = make_api("chats_crud",
               {{endpoint.operation_id: list_nothing for endpoint in endpoints_of("chats_crud")}},
               authenticate=anyone,
               flask_context={flask_context})


@functions_framework.http
def target(request):
    return API.handle(request)
"""


def _app(folder: Path, flask_context: bool) -> Any:
    from functions_framework import create_app

    source = folder / f"main_{int(flask_context)}.py"
    source.write_text(FUNCTION_SOURCE.format(flask_context=flask_context))
    return create_app("target", str(source))


def _per_call_us(call: Any) -> float:
    return best_cpu_seconds_per_call(call, CALLS, warmup=500) * 1e6


def run() -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    os.environ.setdefault("DATABASE_URL", "postgresql://bench@/bench?host=/nonexistent")
    os.environ.setdefault("CLERK_JWT_KEY", "")
    root = logging.getLogger()
    saved_handlers, saved_stdout = root.handlers, sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the access log lines go nowhere
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            headers: dict[str, str] = {
                "Authorization": "Bearer " + "x" * 600,
                "Origin": "http://localhost:3000",
                "User-Agent": "Mozilla/5.0 (bench)",
                "Accept": "*/*",
            }
            environ = EnvironBuilder(path="/api/chats", headers=list(headers.items())).get_environ()

            def start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
                return None

            for name, flask_context in (("flask", True), ("direct", False)):
                app = _app(Path(folder), flask_context)

                def call(app: Any = app) -> None:
                    for _ in app(dict(environ), start_response):
                        pass

                results[f"{name}_us_per_request"] = _per_call_us(call)

            from flask import Request, Response

            from shared.web import Api, Route

            def nothing(request: Request, **path_args: str) -> Response:
                return Response(b"[]")

            api = Api(
                [
                    Route("GET", "/api/chats", nothing, auth=False),
                    Route("GET", "/api/chats/<chat_id>", nothing, auth=False),
                ],
                allowed_origins=["*"],
                max_body_bytes=1000,
            )
            fixed = Request(dict(environ))
            with_parameter = Request(
                dict(environ, PATH_INFO="/api/chats/6f1c3e0a-0000-4000-8000-000000000000")
            )
            results["match_fixed_us"] = _per_call_us(lambda: api._match(fixed))
            results["match_parameter_us"] = _per_call_us(lambda: api._match(with_parameter))
            log = logging.getLogger("raven.http")
            results["access_log_line_us"] = _per_call_us(
                lambda: log.info(
                    "GET /api/chats 200",
                    extra={"httpRequest": {"requestMethod": "GET", "status": 200}, "user": "u"},
                )
            )
    finally:
        sys.stdout.close()
        sys.stdout = saved_stdout
        root.handlers = saved_handlers
    print("request path (in process, CPU per request outside the handler)")
    print(
        f"  functions-framework + Flask dispatch: {results['flask_us_per_request']:.1f} µs; "
        f"the Api directly (DirectApp): {results['direct_us_per_request']:.1f} µs"
    )
    print(
        f"  route match: fixed path {results['match_fixed_us']:.2f} µs, with a parameter "
        f"{results['match_parameter_us']:.2f} µs; access log line "
        f"{results['access_log_line_us']:.1f} µs"
    )
    return results
