"""HTTP plumbing every function shares: routing, CORS, limits, JSON errors, access logs.

A function's entry point hands its request to :meth:`Api.handle`, which

1. binds the request's trace id to every log line (``traceparent`` / ``X-Cloud-Trace-Context``);
2. answers CORS preflights for the allowed origins and adds CORS headers to every answer;
3. refuses bodies over the size limit with 413 before reading them;
4. matches the path against the function's routes (404/405 as JSON otherwise);
5. authenticates the caller when the route requires it (the user is the token's ``sub``);
6. calls the route's plain handler with explicit arguments;
7. turns an :class:`~shared.errors.ApiError` into ``{"detail", "code"}`` JSON, and anything
   unexpected into a 500 whose details go to the log only, never to the client;
8. writes one structured access-log line with status and latency (no bodies, no tokens).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Request, Response
from pydantic import BaseModel, ValidationError
from pydantic_core import SchemaValidator
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.routing import Map, Rule

from shared.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    UnprocessableEntity,
)
from shared.log import bind_trace, trace_from_headers
from shared.schemas import ErrorBody, RequestModel
from shared.text import UNSTORABLE_TEXT, unstorable_path

logger = logging.getLogger("raven.http")

ModelT = TypeVar("ModelT", bound=BaseModel)
Handler = Callable[..., Response]
HandlerT = TypeVar("HandlerT", bound=Handler)

CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID"
CORS_EXPOSED_HEADERS = "Link, X-Next-Cursor, Retry-After"
CORS_MAX_AGE_SECONDS = "600"
MAX_JSON_DEPTH = 32
# Set by shared.serving.BodyReader when the body could not be read: True when it did not
# arrive within REQUEST_BODY_TIMEOUT_SECONDS, False when the client cut it short or broke it.
BODY_TIMED_OUT = "raven.body_timed_out"


# The attribute :func:`checks_user_itself` sets on a handler.
_CHECKS_USER_ITSELF = "raven_checks_user_itself"


def checks_user_itself(handler: HandlerT) -> HandlerT:
    """Mark a handler whose own query tells whether the caller's user row still exists.

    Authentication then skips its separate existence check for a user it has seen lately
    (one database round trip less per request): the handler's statement must find out
    whether the user's row exists (read ``shared.users.USER_KNOWN``, or write rows whose
    foreign key names the user) and hand the request to ``shared.auth.user_row_missing``
    when it does not, which refuses a deleted user with the same 401 ``user_deleted``; on
    its other ways (and before any refusal of its own) it calls ``shared.auth.check_user``.
    An Api calls such a handler's authenticator with ``user_checked_by_handler=True``.
    """
    setattr(handler, _CHECKS_USER_ITSELF, True)
    return handler


@dataclass(frozen=True)
class Route:
    """One endpoint: ``handler(request, [user,] **path_args)``; ``user`` when ``auth`` is on."""

    method: str
    path: str
    handler: Handler
    auth: bool = True

    @property
    def handler_checks_user(self) -> bool:
        """The handler checks the user's row itself (:func:`checks_user_itself`)."""
        return bool(getattr(self.handler, _CHECKS_USER_ITSELF, False))


def json_response(
    body: BaseModel,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    exclude_none: bool = False,
) -> Response:
    """A wire model (:mod:`shared.schemas`) as a JSON response: compact, UTF-8."""
    try:
        encoded = body.model_dump_json(exclude_none=exclude_none).encode()
    except ValueError:  # pydantic_core.PydanticSerializationError, not imported: not a pin
        # A lone surrogate (from a path or header echoed in a detail) has no UTF-8 form;
        # JSON's \u escapes carry it.
        plain = body.model_dump(mode="json", exclude_none=exclude_none)
        encoded = json.dumps(plain, separators=(",", ":")).encode()
    return Response(encoded, status=status, headers=headers, mimetype="application/json")


def error_body(detail: str, code: str, retry_after: int | None = None) -> ErrorBody:
    return ErrorBody(detail=detail, code=code, retry_after=retry_after)


def error_response(error: ApiError) -> Response:
    return json_response(
        error_body(error.detail, error.code, error.retry_after),
        error.status,
        error.headers,
        exclude_none=True,
    )


def load_json(raw: bytes) -> Any:
    """Parse a JSON document, bounded in depth; 400 ``invalid_json`` for anything else.

    Nesting deeper than :data:`MAX_JSON_DEPTH` is refused: no body of ours needs it, and
    validating (or even parsing) thousands of levels exhausts the interpreter's stack.
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"Request body is not valid JSON: {error}", code="invalid_json") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise BadRequest(
            "Request body has a number too long to read", code="invalid_json"
        ) from None
    except RecursionError:
        data = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = json_depth(data, MAX_JSON_DEPTH + 1)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(
            f"Request body is nested too deeply: at most {MAX_JSON_DEPTH} levels",
            code="invalid_json",
        )
    return data


@functools.cache
def one_pass_validator(model: type[BaseModel]) -> SchemaValidator:
    """``model``'s rules for a JSON body in one pass of pydantic's Rust parser, building plain
    dicts and lists instead of models: for a body most of which is checked but never used
    (``POST /chat`` carries the client's copy of the whole chat: :mod:`shared.turn_request`).

    Unknown fields are refused below the top level: pydantic would skip them unbuilt, so
    their depth could not be bounded (:func:`load_json`). Those at the top level are returned
    with the rest, for the caller to bound. A body this refuses is one for
    :func:`parse_json`, which names the problem.
    """
    schema = _as_typed_dicts(model.__pydantic_core_schema__, extra="forbid")
    return SchemaValidator({**schema, "extra_behavior": "allow"})


def _as_typed_dicts(node: Any, extra: str) -> Any:
    """A core schema with each model in it turned into a typed dict of the same fields."""
    if isinstance(node, list):
        return [_as_typed_dicts(item, extra) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "model":
        fields = node["schema"]
        if fields["type"] != "model-fields" or fields.get("computed_fields") or "post_init" in node:
            raise TypeError(f"{node['cls'].__name__}: only plain fields can be read in one pass")
        return {
            "type": "typed-dict",
            "fields": {
                name: {
                    "type": "typed-dict-field",
                    "schema": _as_typed_dicts(field["schema"], extra),
                    "required": field["schema"]["type"] != "default",
                }
                for name, field in fields["fields"].items()
            },
            "extra_behavior": extra,
        }
    if (
        node.get("type", "").startswith("function-")
        and node.get("schema", {}).get("type") == "model"
    ):
        raise TypeError("a model-level validator cannot run on a typed dict")
    return {key: _as_typed_dicts(value, extra) for key, value in node.items() if key != "metadata"}


def json_depth(value: Any, stop_at: int) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (counting stops at stop_at)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest >= stop_at:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            pending.extend(
                (child, depth + 1) for child in children if isinstance(child, dict | list)
            )
    return deepest


def parse_json(request: Request, model: type[ModelT]) -> ModelT:
    """Parse and validate a JSON body; 400 for malformed JSON, 422 naming the bad field."""
    raw = request.get_data(cache=True)
    data: Any = {} if not raw.strip() else load_json(raw)
    if not isinstance(data, dict):
        raise UnprocessableEntity("Request body must be a JSON object")
    # Strict: JSON says what type a value is, so false is not 0 and "5" is not 5 (only a
    # query string, where everything is text, is converted).
    return validate(model, data, strict=True)


def query_args(request: Request, model: type[BaseModel]) -> dict[str, str]:
    """The query string's parameters for ``model``; one given empty (``?cursor=``) counts as
    absent, and the ones the model does not read are left out (ignored, like unknown body
    fields).

    Raises:
        UnprocessableEntity: a parameter of the model is given more than once
            (``?limit=5&limit=x``): each is a single value, and silently using one of them
            would accept a request the API description calls invalid.
    """
    known = model.model_fields
    repeated = sorted(
        name for name, values in request.args.lists() if name in known and len(values) > 1
    )
    if repeated:
        raise UnprocessableEntity(
            "; ".join(f"query.{name}: given more than once" for name in repeated[:5])
        )
    return {name: value for name, value in request.args.items() if name in known and value != ""}


def validate(model: type[ModelT], data: Any, where: str = "", *, strict: bool = False) -> ModelT:
    """Validate data against a model; a failure is a 422 whose detail names each bad field.

    Every string the model keeps must be one PostgreSQL can store (:mod:`shared.text`);
    fields the model ignores are never stored, so they may hold anything.
    """
    try:
        validated = model.model_validate(data, strict=strict)
    except ValidationError as error:
        for issue in error.errors(include_url=False, include_input=False):
            if issue["type"] == "string_unicode":  # pydantic's own refusal of a lone surrogate
                location = ".".join(str(part) for part in issue["loc"])
                raise UnprocessableEntity(
                    f"{where}{location}: {UNSTORABLE_TEXT}", code="invalid_text"
                ) from None
        raise UnprocessableEntity(describe_validation_error(error, where)) from None
    kept = (
        validated.storable_part() if isinstance(validated, RequestModel) else validated.model_dump()
    )
    bad_text = unstorable_path(kept)
    if bad_text is not None:
        raise UnprocessableEntity(f"{where}{bad_text}: {UNSTORABLE_TEXT}", code="invalid_text")
    return validated


def describe_validation_error(error: ValidationError, where: str = "") -> str:
    problems = []
    for issue in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in issue["loc"]) or "body"
        problems.append(f"{where}{location}: {issue['msg']}")
    return "; ".join(problems[:5])


class Api:
    """The routes of one function, and the pipeline every request goes through."""

    def __init__(
        self,
        routes: list[Route],
        *,
        allowed_origins: list[str],
        max_body_bytes: int,
        authenticate: Callable[..., Any] | None = None,
    ) -> None:
        self._routes = Map(
            [Rule(route.path, endpoint=route, methods=[route.method]) for route in routes],
            strict_slashes=False,
            merge_slashes=False,
        )
        self.routes = routes
        # A path some route spells out (/api/chats/create) is never a parameter's value
        # (/api/chats/<chat_id>): another method on it is a 405, not that route.
        self._fixed_paths: dict[str, set[str]] = {}
        # (path, method) -> route for the routes without parameters: matched by one dict
        # lookup, not werkzeug's state machine (bench/README.md, "The chat list").
        self._fixed_routes: dict[tuple[str, str], Route] = {}
        for route in routes:
            if "<" not in route.path:
                self._fixed_paths.setdefault(route.path.rstrip("/"), set()).add(route.method)
                path = route.path.rstrip("/") or "/"
                self._fixed_routes[(path, route.method)] = route
                self._fixed_routes[(path.rstrip("/") + "/", route.method)] = route
                if route.method == "GET":
                    self._fixed_routes.setdefault((path, "HEAD"), route)
                    self._fixed_routes.setdefault((path.rstrip("/") + "/", "HEAD"), route)
        self._origins = set(allowed_origins)
        self._any_origin = "*" in self._origins
        self._methods = ", ".join(sorted({route.method for route in routes}))
        self._max_body_bytes = self.max_body_bytes = max_body_bytes
        self._authenticate = authenticate

    def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request.environ["raven.received"] = started  # handlers time from here (shared.telemetry)
        bind_trace(
            trace_from_headers(
                request.headers.get("traceparent"), request.headers.get("X-Cloud-Trace-Context")
            )
        )
        user_id: str | None = None
        try:
            if request.method == "OPTIONS":
                response = self._preflight(request)
            else:
                self._check_body_arrived(request)
                self._limit_body(request)
                route, path_args = self._match(request)
                if route.auth:
                    if self._authenticate is None:
                        raise AssertionError("a route requires auth but the Api has none")
                    if route.handler_checks_user:
                        user = self._authenticate(request, user_checked_by_handler=True)
                    else:
                        user = self._authenticate(request)
                    user_id = user.id
                    response = route.handler(request, user, **path_args)
                else:
                    response = route.handler(request, **path_args)
        except ApiError as error:
            response = error_response(error)
        except Exception:
            logger.exception("unhandled error", extra={"path": request.path})
            response = error_response(InternalError("Internal server error"))
        self._add_cors_headers(request, response)
        self._log(request, response, started, user_id)
        return response

    @staticmethod
    def _check_body_arrived(request: Request) -> None:
        timed_out = request.environ.get(BODY_TIMED_OUT)
        if timed_out is True:
            raise RequestTimeout(
                "The request body did not arrive in time", code="request_body_timeout"
            )
        if timed_out is False:
            raise BadRequest("The request body was cut short or malformed", code="invalid_body")

    def _limit_body(self, request: Request) -> None:
        """Refuse a body over the limit (413) without reading more of it than the limit.

        A declared Content-Length is checked before any byte is read. A chunked body is read
        up to one byte past the limit and then handed on as if it had a Content-Length.
        (werkzeug's own ``max_content_length`` is not used: functions-framework drains the
        body after every request and that drain would raise again, turning a 413 into a 500.)
        """
        too_large = PayloadTooLarge(f"Request body is larger than {self._max_body_bytes} bytes")
        if request.content_length is not None:
            if request.content_length > self._max_body_bytes:
                raise too_large
            return
        if request.environ.get("HTTP_TRANSFER_ENCODING", "").lower() != "chunked":
            return
        body = request.environ["wsgi.input"].read(self._max_body_bytes + 1)
        if len(body) > self._max_body_bytes:
            raise too_large
        request.environ["wsgi.input"] = io.BytesIO(body)
        request.environ["CONTENT_LENGTH"] = str(len(body))
        request.environ.pop("HTTP_TRANSFER_ENCODING", None)

    def _match(self, request: Request) -> tuple[Route, dict[str, Any]]:
        route = self._fixed_routes.get((request.path, request.method))
        if route is not None:
            return route, {}
        fixed = self._fixed_paths.get(request.path.rstrip("/"))
        if fixed is not None:
            allowed = fixed | ({"HEAD"} if "GET" in fixed else set())
            if request.method not in allowed:
                raise MethodNotAllowed(
                    f"{request.method} is not allowed on {request.path}",
                    headers={"Allow": ", ".join(sorted(allowed | {"OPTIONS"}))},
                )
        adapter = self._routes.bind("", path_info=request.path)
        try:
            route_endpoint, path_args = adapter.match(method=request.method)
        except HTTPException as error:
            if isinstance(error, WerkzeugMethodNotAllowed):
                valid = set(error.valid_methods or ()) | {"OPTIONS"}
                raise MethodNotAllowed(
                    f"{request.method} is not allowed on {request.path}",
                    headers={"Allow": ", ".join(sorted(valid))},
                ) from None
            raise NotFound(f"No such endpoint: {request.method} {request.path}") from None
        assert isinstance(route_endpoint, Route)
        return route_endpoint, dict(path_args)

    def _origin_allowed(self, origin: str | None) -> bool:
        return bool(origin) and (self._any_origin or origin in self._origins)

    def _preflight(self, request: Request) -> Response:
        origin = request.headers.get("Origin")
        if not self._origin_allowed(origin):
            return error_response(Forbidden("Origin not allowed", code="origin_not_allowed"))
        return Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": self._methods,
                "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE_SECONDS,
            },
        )

    def _add_cors_headers(self, request: Request, response: Response) -> None:
        origin = request.headers.get("Origin")
        headers = response.headers
        if "Vary" in headers:
            response.vary.add("Origin")
        else:  # the usual case, without parsing and re-serialising a header set
            headers["Vary"] = "Origin"
        if origin and self._origin_allowed(origin):
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS

    @staticmethod
    def _log(request: Request, response: Response, started: float, user_id: str | None) -> None:
        latency = time.perf_counter() - started
        severity = logging.ERROR if response.status_code >= 500 else logging.INFO
        logger.log(
            severity,
            f"{request.method} {request.path} {response.status_code}",
            extra={
                "httpRequest": {
                    "requestMethod": request.method,
                    "requestUrl": request.path,
                    "status": response.status_code,
                    "latency": f"{latency:.6f}s",
                    "userAgent": request.headers.get("User-Agent", "")[:200],
                },
                "user": user_id,
            },
        )
