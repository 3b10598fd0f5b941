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
ones name ``storage.googleapis.com`` with the same ``/<bucket>/<object>`` path. Like Cloud
Storage for a private bucket, it serves only requests with a valid V4 signature for exactly
that request (:mod:`dev.storage_front`); anything else gets GCS's status and XML error.
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
from werkzeug.serving import WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from dev.storage_front import SignatureFront
from dev.tokens import LocalSigner
from shared.routes import is_prefix_rule, load_balancer_paths
from shared.schemas import ErrorBody

logger = logging.getLogger("raven.router")


def contract_routes() -> dict[str, str]:
    """Which function serves which path, as werkzeug rules: the load balancer's rules
    (:func:`shared.routes.load_balancer_paths`), so local routing is what deployed routing is.
    A prefix rule's ``/*`` is the rest of the path; a template's ``*`` is one segment."""
    routes = {}
    for function, paths in load_balancer_paths().items():
        for path in paths:
            if is_prefix_rule(path):
                rule = path[:-1] + "<path:rest>"
            else:
                segments = path.split("*")
                rule = "".join(
                    segment + (f"<segment_{index}>" if index < len(segments) - 1 else "")
                    for index, segment in enumerate(segments)
                )
            routes[rule] = function
    return routes


CONTRACT_ROUTES: dict[str, str] = contract_routes()

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
# headers (Content-Type; x-goog-content-length-range when a client opts in to binding the
# size), and Range for media players.
STORAGE_CORS_METHODS = "GET, HEAD, PUT"
STORAGE_CORS_HEADERS = "Content-Type, x-goog-content-length-range, Range"
STORAGE_CORS_MAX_AGE = "3600"


@dataclass(frozen=True)
class StorageUpstream:
    """The storage emulator behind ``/<bucket>/...``, who may call it from a browser, and the
    signature checks Cloud Storage makes (:mod:`dev.storage_front`; None checks nothing)."""

    bucket: str
    url: str
    allowed_origins: list[str]
    front: SignatureFront | None = None

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and ("*" in self.allowed_origins or origin in self.allowed_origins)


# What may stay as it is in a forwarded request target; anything else (space, quote, control
# characters, non-ASCII) is percent-encoded, as a client should have sent it.
TARGET_SAFE = "/?&=%:@!$'()*+,;~-._[]"


def forwarded_target(request: Request, raw_path: str | None = None) -> str:
    """The request target to forward: as the client sent it, never decoded.

    Decoding first would turn ``/api/chats/%0A`` into a request line http.client refuses
    (and ``%2F`` into a path separator); the function must see what the client sent.
    """
    raw = raw_path or request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw:
        raw = quote(request.path) + (
            "?" + request.query_string.decode("latin-1") if request.query_string else ""
        )
    # werkzeug hands the target over as latin-1 text of the bytes received.
    return quote(raw.encode("latin-1", "replace"), safe=TARGET_SAFE)


ROUTER_ERROR_CODES = {
    400: "bad_request",
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    501: "not_implemented",
    505: "http_version_not_supported",
}


class JsonErrorRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, answering what it refuses itself (a request line or header
    over 64 KiB: 414/431, a malformed request line: 400) with the contract's JSON error."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        reason, default_explain = self.responses.get(code, ("Error", ""))
        body = (
            ErrorBody(
                detail=message or explain or default_explain or reason,
                code=ROUTER_ERROR_CODES.get(code, f"http_{code}"),
            )
            .model_dump_json(exclude_none=True)
            .encode()
        )
        self.close_connection = True
        self.send_response(code, message)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _error(detail: str, code: str, status: int) -> Response:
    """The contract's error body (:class:`shared.schemas.ErrorBody`) for what the router refuses."""
    body = ErrorBody(detail=detail, code=code).model_dump_json(exclude_none=True)
    return Response(body, status=status, mimetype="application/json")


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
        try:
            response = self.dispatch(request)
        except Exception:  # the router answers JSON whatever goes wrong
            logger.exception("router error", extra={"path": request.path})
            response = _error("The local router failed", "router_error", 502)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self._map.bind_to_environ(request.environ)
        try:
            endpoint, _ = adapter.match()
        except Exception:  # noqa: BLE001 - werkzeug raises NotFound/MethodNotAllowed
            return _error(f"No such path: {request.path}", "not_found", 404)
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
            return _error("Body must be JSON", "invalid_json", 400)
        sub = body.get("sub") if isinstance(body, dict) else None
        if not isinstance(sub, str) or not sub.strip():
            return _error("sub is required (a string)", "validation_error", 422)
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
                return _error("Origin not allowed", "origin_not_allowed", 403)
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
            refusal = self._storage.front and self._storage.front.refusal(
                request.method,
                raw_path.partition("?")[0],
                raw_path.partition("?")[2],
                dict(request.headers.items()),
                len(request.get_data()),
            )
            if refusal:
                response = refusal.response()
            else:
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
        path = forwarded_target(request, raw_path)
        connection = http.client.HTTPConnection(
            target.hostname or "127.0.0.1", target.port, timeout=3600
        )
        try:
            connection.request(request.method, path, body=request.get_data(), headers=headers)
            upstream = connection.getresponse()
        except OSError:
            connection.close()
            return _error("The function is not running", "upstream_down", 502)
        except (http.client.HTTPException, ValueError) as error:
            # http.client refuses what it cannot put on the wire (a header value with a
            # newline, ...): the client's request was malformed, not the function.
            connection.close()
            return _error(f"Request cannot be forwarded: {error}", "bad_request", 400)

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
