"""The local router: every path of the contract under one base URL, as the frontend expects.

Deployed, each function has its own URL (or an optional load balancer serves one domain);
locally this thin proxy maps the contract's paths onto the function processes, streaming
responses through unbuffered so Server-Sent Events arrive as they are produced.

It also serves, for local use only, what no deployed function ever serves:

* ``POST /dev/token``: a token for any ``sub``, signed by the local key;
* ``GET /dev/.well-known/jwks.json``: that key's JWKS, which the functions fetch exactly as
  they fetch Clerk's;
* ``GET /dev/healthz``: 200 once every part of the stack answers;
* ``GET /dev/openapi.json``: the OpenAPI description of the contract;
* ``GET /dev/metrics``: counters and latency percentiles since the stack started, from the
  functions' log lines (:mod:`dev.logs`), the numbers the deployed dashboard shows.

And it is the browser's way to the storage emulator: ``/<uploads bucket>/<object>`` is
proxied to it, with CORS answered for the allowed origins as the bucket's CORS policy answers
deployed (the emulator answers no preflight). Signed URLs name this host, exactly as deployed
ones name ``storage.googleapis.com`` with the same ``/<bucket>/<object>`` path.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from dev.tokens import LocalSigner

logger = logging.getLogger("raven.router")

# Which function serves which path of the contract (the load balancer's URL map mirrors it).
CONTRACT_ROUTES: dict[str, str] = {
    "/chat": "chat_stream",
    "/api/chats": "chats_crud",
    "/api/chats/<path:rest>": "chats_crud",
    "/api/upload-url": "upload_url",
    "/clerk-webhook": "clerk_webhook",
}

# RFC 9110 section 7.6.1: connection-specific headers are not forwarded by a proxy.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


# What the uploads bucket's CORS policy allows (terraform/storage.tf): the signed PUT's
# headers, and Range for media players.
STORAGE_CORS_METHODS = "GET, HEAD, PUT"
STORAGE_CORS_HEADERS = "Content-Type, x-goog-content-length-range, x-goog-custom-time, Range"
STORAGE_CORS_MAX_AGE = "3600"


@dataclass(frozen=True)
class StorageUpstream:
    """The storage emulator behind ``/<bucket>/...``, and who may call it from a browser."""

    bucket: str
    url: str
    allowed_origins: list[str]

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and ("*" in self.allowed_origins or origin in self.allowed_origins)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


class Router:
    """A WSGI app: the contract's paths proxied to functions, plus the ``/dev`` endpoints."""

    def __init__(
        self,
        upstreams: dict[str, str],
        signer: LocalSigner,
        health_checks: dict[str, Callable[[], bool]],
        openapi: Callable[[], dict[str, Any]],
        *,
        metrics: Callable[[], dict[str, Any]] | None = None,
        storage: StorageUpstream | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._signer = signer
        self._health_checks = health_checks
        self._openapi = openapi
        self._metrics = metrics
        self._storage = storage
        rules = [Rule(path, endpoint=function) for path, function in CONTRACT_ROUTES.items()]
        if storage is not None:
            rules.append(Rule(f"/{storage.bucket}/<path:object_name>", endpoint="storage"))
        rules += [
            Rule("/dev/token", endpoint="dev_token", methods=["POST"]),
            Rule("/dev/healthz", endpoint="dev_healthz", methods=["GET"]),
            Rule("/dev/.well-known/jwks.json", endpoint="dev_jwks", methods=["GET"]),
            Rule("/dev/openapi.json", endpoint="dev_openapi", methods=["GET"]),
        ]
        if metrics is not None:
            rules.append(Rule("/dev/metrics", endpoint="dev_metrics", methods=["GET"]))
        self._map = Map(rules, strict_slashes=False)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self._map.bind_to_environ(request.environ)
        try:
            endpoint, _ = adapter.match()
        except Exception:  # noqa: BLE001 - werkzeug raises NotFound/MethodNotAllowed
            return _json({"detail": f"No such path: {request.path}", "code": "not_found"}, 404)
        if endpoint == "dev_token":
            return self._token(request)
        if endpoint == "dev_healthz":
            return self._healthz()
        if endpoint == "dev_jwks":
            return _json(self._signer.jwks())
        if endpoint == "dev_openapi":
            return _json(self._openapi())
        if endpoint == "dev_metrics" and self._metrics is not None:
            return _json(self._metrics())
        if endpoint == "storage":
            return self._storage_request(request)
        return self._proxy(request, self._upstreams[endpoint])

    def _token(self, request: Request) -> Response:
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            return _json({"detail": "Body must be JSON", "code": "invalid_json"}, 400)
        sub = body.get("sub") if isinstance(body, dict) else None
        if not isinstance(sub, str) or not sub.strip():
            return _json({"detail": "sub is required (a string)", "code": "validation_error"}, 422)
        claims = {
            key: body[key]
            for key in ("email", "first_name", "last_name")
            if isinstance(body.get(key), str)
        }
        origin = request.headers.get("Origin") or "http://localhost:3000"
        return _json({"token": self._signer.token(sub.strip(), origin=origin, extra_claims=claims)})

    def _healthz(self) -> Response:
        status = {name: bool(check()) for name, check in self._health_checks.items()}
        return _json(
            {"ok": all(status.values()), "parts": status}, 200 if all(status.values()) else 503
        )

    def _storage_request(self, request: Request) -> Response:
        assert self._storage is not None
        origin = request.headers.get("Origin")
        allowed = self._storage.allows(origin)
        if request.method == "OPTIONS":
            if not allowed:
                return _json({"detail": "Origin not allowed", "code": "origin_not_allowed"}, 403)
            response = Response(
                status=200,
                headers={
                    "Access-Control-Allow-Methods": STORAGE_CORS_METHODS,
                    "Access-Control-Allow-Headers": STORAGE_CORS_HEADERS,
                    "Access-Control-Max-Age": STORAGE_CORS_MAX_AGE,
                },
            )
        else:
            # The object name as the browser encoded it: the decoded path may hold spaces and
            # any script, which an HTTP request line cannot carry.
            raw_path = request.environ.get("RAW_URI") or quote(request.path) + (
                "?" + request.query_string.decode() if request.query_string else ""
            )
            response = self._proxy(request, self._storage.url, raw_path, upstream_host=True)
        if allowed and origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Content-Length, Content-Range"
        response.vary.add("Origin")
        return response

    def _proxy(
        self,
        request: Request,
        base_url: str,
        raw_path: str | None = None,
        *,
        upstream_host: bool = False,
    ) -> Response:
        target = urlsplit(base_url)
        headers = {
            name: value for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP
        }
        if upstream_host:
            # The emulator builds each object's mediaLink from the Host it was uploaded with:
            # its own, so the functions can follow it.
            headers["Host"] = target.netloc
        headers["X-Forwarded-For"] = request.remote_addr or "127.0.0.1"
        path = raw_path or (request.full_path if request.query_string else request.path)
        connection = http.client.HTTPConnection(
            target.hostname or "127.0.0.1", target.port, timeout=3600
        )
        try:
            connection.request(request.method, path, body=request.get_data(), headers=headers)
            upstream = connection.getresponse()
        except OSError:
            connection.close()
            return _json({"detail": "The function is not running", "code": "upstream_down"}, 502)

        def relay() -> Iterator[bytes]:
            try:
                while chunk := upstream.read1(65536):
                    yield chunk
            finally:
                connection.close()

        response_headers = [
            (name, value)
            for name, value in upstream.getheaders()
            if name.lower() not in HOP_BY_HOP | {"server", "date"}
        ]
        return Response(
            relay(), status=upstream.status, headers=response_headers, direct_passthrough=True
        )
