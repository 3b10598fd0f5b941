"""Per-instance singletons: created once, on first use, and kept for the instance's life.

Cloud Run reuses an instance for many requests, so connections, key caches and SDK clients
live here rather than in a request (https://cloud.google.com/run/docs/tips/general#use_global_variables).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from flask import Request

from shared.db import Database
from shared.log import configure_logging
from shared.settings import Settings, get_settings
from shared.web import Api, Route

if TYPE_CHECKING:  # pyjwt is imported only by functions that verify tokens
    from shared.auth import AuthenticatedUser, KnownUsers, TokenVerifier


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
    configure_logging(settings.project_id, settings.debug)
    return settings


@lru_cache(maxsize=1)
def database() -> Database:
    return Database.from_settings(get_settings())


@lru_cache(maxsize=1)
def token_verifier() -> TokenVerifier:
    from shared.auth import TokenVerifier

    return TokenVerifier.from_settings(get_settings())


@lru_cache(maxsize=1)
def known_users() -> KnownUsers:
    from shared.auth import KnownUsers

    return KnownUsers(database())


def authenticate(request: Request) -> AuthenticatedUser:
    """The caller named by the request's bearer token; their user row exists afterwards."""
    from shared.auth import bearer_token

    user = token_verifier().verify(bearer_token(request.headers.get("Authorization")))
    known_users().ensure(user)
    return user


def make_api(routes: list[Route], max_body_bytes: int | None = None) -> Api:
    """The function's HTTP pipeline; authenticated routes verify tokens as settings say."""
    settings = get_settings()
    if any(route.auth for route in routes):
        token_verifier()  # a missing or malformed Clerk key fails the instance at start
    return Api(
        routes,
        allowed_origins=settings.allowed_origins,
        max_body_bytes=max_body_bytes or settings.max_request_bytes,
        authenticate=authenticate,
    )
