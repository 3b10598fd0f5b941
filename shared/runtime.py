"""Per-instance singletons: created once, on first use, and kept for the instance's life.

Cloud Run reuses an instance for many requests, so connections, key caches and SDK clients
live here rather than in a request (https://cloud.google.com/run/docs/tips/general#use_global_variables).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from flask import Request

from shared import serving
from shared.db import Database
from shared.log import configure_logging
from shared.settings import Settings, function_target, get_settings
from shared.web import Api, Route

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


@lru_cache(maxsize=1)
def database() -> Database:
    return Database.from_settings(get_settings())


def make_api(
    routes: list[Route],
    *,
    authenticate: Callable[[Request], AuthenticatedUser] | None = None,
    max_body_bytes: int | None = None,
) -> Api:
    """The function's HTTP pipeline.

    Args:
        routes: the function's endpoints.
        authenticate: how routes with ``auth=True`` learn the caller, normally
            :func:`shared.auth.request_authenticator` (passed in, so functions without
            authenticated routes never import pyjwt).
        max_body_bytes: the request body limit, if not ``MAX_REQUEST_BYTES``.
    """
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
    serving.install(api.handle, api.max_body_bytes, settings.request_body_timeout_seconds)
    return api
