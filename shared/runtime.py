"""What every function's ``main.py`` starts from: settings checked at import, logging, the
instance's database (:func:`shared.db.database`) and the function's HTTP pipeline.

The top of ``shared/``'s layers (tools/layers.py): nothing in ``shared/`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from shared import serving
from shared.db import database as database  # the entry points' one import of it
from shared.log import configure_logging
from shared.routes import endpoints_of
from shared.settings import Settings, function_target, get_settings
from shared.web import Api, Handler, Route

if TYPE_CHECKING:
    from shared.auth import AuthenticatedUser


def start_function(*required: str) -> Settings:
    """What every entry point module runs at import: validate settings, set up logging.

    Args:
        *required: environment variables this function cannot run without, beyond the
            database (always required).

    Raises:
        SettingsError: naming each missing or invalid variable, so the instance fails at
            start instead of at its first request.
    """
    settings = get_settings().require(*required)
    configure_logging(
        settings.project_id,
        settings.debug,
        function_target(),
        readable=settings.readable_logs,
    )
    return settings


def make_api(
    function: str,
    handlers: Mapping[str, Handler],
    *,
    authenticate: Callable[..., AuthenticatedUser] | None = None,
    max_body_bytes: int | None = None,
    flask_context: bool = False,
) -> Api:
    """The function's HTTP pipeline, its routes those of ``function`` in :mod:`shared.routes`.

    Args:
        function: the function's name (its folder) in the route table.
        handlers: a handler for each of the function's endpoints, by operation id.
        authenticate: how routes with ``auth=True`` learn the caller, normally
            :func:`shared.auth.request_authenticator` (passed in, so functions without
            authenticated routes never import pyjwt).
        max_body_bytes: the request body limit, if not ``MAX_REQUEST_BYTES``.
        flask_context: the handlers need Flask's request context (``stream_with_context``):
            requests go through Flask's dispatch. Otherwise the Api answers them directly,
            which costs a fraction of Flask's per-request work (:class:`serving.DirectApp`).

    Raises:
        ValueError: a handler is missing for an endpoint of the table, or given for none.
    """
    endpoints = endpoints_of(function)
    expected = {endpoint.operation_id for endpoint in endpoints}
    if set(handlers) != expected:
        raise ValueError(
            f"{function} serves {sorted(expected)} (shared/routes.py) but has handlers "
            f"for {sorted(handlers)}"
        )
    routes = [
        Route(endpoint.method, endpoint.path, handlers[endpoint.operation_id], auth=endpoint.auth)
        for endpoint in endpoints
    ]
    if authenticate is None and any(route.auth for route in routes):
        raise ValueError("routes with auth=True need an authenticate function")
    settings = get_settings()
    api = Api(
        routes,
        allowed_origins=settings.allowed_origins,
        max_body_bytes=max_body_bytes or settings.max_request_bytes,
        authenticate=authenticate,
    )
    # JSON for what Flask and gunicorn answer themselves; bodies read within a deadline.
    serving.install(
        api.handle,
        api.max_body_bytes,
        settings.request_body_timeout_seconds,
        flask_context=flask_context,
    )
    return api
