"""Clerk session tokens: verification with pyjwt, and the user they name.

Clerk signs session tokens and JWT-template tokens with the instance's RSA key (RS256).
The public key comes from one of, in order of preference:

* ``CLERK_JWT_KEY``: the PEM Clerk shows as "JWT public key" (networkless verification,
  https://clerk.com/docs/backend-requests/manual-jwt);
* ``CLERK_JWKS_URL``: the instance's JWKS, e.g. ``https://<instance>/.well-known/jwks.json``;
* ``CLERK_SECRET_KEY`` alone: the Backend API's JWKS, ``https://api.clerk.com/v1/jwks``.

JWKS are cached per instance and refetched once when a token names an unknown ``kid`` (Clerk
rotated its key), but never more often than every :data:`JWKS_MIN_REFETCH_SECONDS`, so
tokens with made-up ``kid`` values cannot turn us into a load generator against Clerk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import jwt
from flask import Request

from shared import users
from shared.db import Database, database
from shared.errors import ServiceUnavailable, Unauthorized
from shared.settings import Settings, SettingsError, get_settings
from shared.text import is_storable, storable

logger = logging.getLogger(__name__)

CLERK_BACKEND_JWKS_URL = "https://api.clerk.com/v1/jwks"
JWKS_MIN_REFETCH_SECONDS = 15.0  # at most four fetches a minute
JWKS_TTL_SECONDS = 3600.0
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
ALGORITHM = "RS256"
MAX_SUB_LENGTH = 255
VERIFIED_TOKENS_CACHED = 4096


@dataclass(frozen=True)
class AuthenticatedUser:
    """The caller, as the verified token names them. ``id`` is the token's ``sub``."""

    id: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    plan: str | None = None  # the token's plan claim (PLAN_CLAIM), if any

    @property
    def display_name(self) -> str | None:
        return users.display_name(self.first_name, self.last_name)


class KeySource(Protocol):
    def key_for(self, kid: str | None) -> Any | None:
        """The verification key for a token's ``kid``, or None when there is none."""


class StaticKey:
    """One PEM public key; every token is checked against it whatever its ``kid``."""

    def __init__(self, pem: str) -> None:
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        # Secret Manager and .env files often carry the PEM's newlines as "\\n".
        text = pem.replace("\\n", "\n").strip()
        try:
            key = load_pem_public_key(text.encode())
        except ValueError:
            key = None
        if not isinstance(key, RSAPublicKey):
            raise SettingsError("CLERK_JWT_KEY: not an RSA public key in PEM form")
        self._key = key

    def key_for(self, kid: str | None) -> Any:
        return self._key


class JwksKeys:
    """Keys from a JWKS URL, cached, refetched on an unknown ``kid`` at a bounded rate."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self._url = url
        self._headers = {"Accept": "application/json", **(headers or {})}
        self._keys: dict[str | None, Any] = {}
        self._fetched_at = 0.0
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()

    def key_for(self, kid: str | None) -> Any | None:
        now = time.monotonic()
        key = self._keys.get(kid)
        if key is not None and now - self._fetched_at < JWKS_TTL_SECONDS:
            return key
        with self._lock:
            key = self._keys.get(kid)
            fresh = time.monotonic() - self._fetched_at < JWKS_TTL_SECONDS
            if key is not None and fresh:
                return key  # another thread refreshed while we waited
            if time.monotonic() - self._attempted_at >= JWKS_MIN_REFETCH_SECONDS:
                self._refresh()
            return self._keys.get(kid)

    def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        request = urllib.request.Request(self._url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=JWKS_FETCH_TIMEOUT_SECONDS) as response:
                document = json.load(response)
            key_set = jwt.PyJWKSet.from_dict(document)
        except (OSError, ValueError, jwt.exceptions.PyJWTError) as error:
            logger.warning("JWKS fetch failed", extra={"error": type(error).__name__})
            if not self._keys:
                raise ServiceUnavailable(
                    "Cannot verify tokens right now: the signing keys are unavailable",
                    code="auth_keys_unavailable",
                ) from error
            return  # keep verifying with the keys we have
        self._keys = {key.key_id: key for key in key_set.keys if key.key_type == "RSA"}
        self._fetched_at = time.monotonic()
        logger.info("JWKS fetched", extra={"keys": len(self._keys)})


def key_source_from_settings(settings: Settings) -> KeySource:
    if settings.clerk_jwt_key:
        return StaticKey(settings.clerk_jwt_key)
    if settings.clerk_jwks_url:
        return JwksKeys(settings.clerk_jwks_url)
    if settings.clerk_secret_key:
        return JwksKeys(
            CLERK_BACKEND_JWKS_URL, {"Authorization": f"Bearer {settings.clerk_secret_key}"}
        )
    raise SettingsError(
        "Missing required environment variable: CLERK_JWT_KEY, CLERK_JWKS_URL or "
        "CLERK_SECRET_KEY (one of them, to verify Clerk session tokens)"
    )


class TokenVerifier:
    """Verifies Clerk session JWTs: RS256 only, expiry with leeway, issuer and ``azp``."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str | None,
        allowed_origins: list[str],
        leeway_seconds: int,
        plan_claim: str = "plan",
    ) -> None:
        self._keys = keys
        self._plan_path = plan_claim.split(".")
        self._verified: dict[str, tuple[AuthenticatedUser, float]] = {}
        self._issuer = issuer
        self._allowed_parties = None if "*" in allowed_origins else set(allowed_origins)
        self._leeway = leeway_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        return cls(
            key_source_from_settings(settings),
            issuer=settings.clerk_issuer,
            allowed_origins=settings.allowed_origins,
            leeway_seconds=settings.jwt_leeway_seconds,
            plan_claim=settings.plan_claim,
        )

    def verify(self, token: str) -> AuthenticatedUser:
        """Return the user a valid token names.

        A token verified once is remembered until it expires: the frontend sends the same
        token on every request for its lifetime (60 s for Clerk session tokens), and
        re-checking an RS256 signature and re-parsing the token costs more than the rest of
        a typical request.

        Raises:
            Unauthorized: the token is malformed, forged, expired, or not for us.
            ServiceUnavailable: the signing keys cannot be fetched.
        """
        remembered = self._verified.get(token)
        if remembered is not None:
            user, expires_at = remembered
            if time.time() < expires_at + self._leeway:
                return user
            self._verified.pop(token, None)
        user, expires_at = self._verify_uncached(token)
        if len(self._verified) >= VERIFIED_TOKENS_CACHED:
            self._verified.clear()  # simple and bounded; a refill costs one verify per token
        self._verified[token] = (user, expires_at)
        return user

    def _verify_uncached(self, token: str) -> tuple[AuthenticatedUser, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.DecodeError:
            raise Unauthorized("Malformed token", code="invalid_token") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized("Token must be signed with RS256", code="invalid_token")
        key = self._keys.key_for(header.get("kid"))
        if key is None:
            raise Unauthorized("Token is signed by an unknown key", code="invalid_token")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": False},
            )
        except jwt.exceptions.ExpiredSignatureError:
            raise Unauthorized("Token has expired", code="token_expired") from None
        except jwt.exceptions.ImmatureSignatureError:
            raise Unauthorized("Token is not valid yet", code="invalid_token") from None
        except jwt.exceptions.InvalidIssuerError:
            raise Unauthorized("Token has the wrong issuer", code="invalid_token") from None
        except jwt.exceptions.InvalidSignatureError:
            raise Unauthorized("Token signature is invalid", code="invalid_token") from None
        except jwt.exceptions.InvalidTokenError as error:
            raise Unauthorized(f"Invalid token: {error}", code="invalid_token") from None

        # RFC 7519 section 2: a NumericDate is a JSON number. pyjwt also takes a numeric
        # string ("exp": "9999999999"), which no issuer of ours produces.
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise Unauthorized(f"Token claim {name} must be a number", code="invalid_token")
        party = claims.get("azp")
        allowed = self._allowed_parties
        if party is not None and allowed is not None and str(party).rstrip("/") not in allowed:
            raise Unauthorized("Token was issued for another origin", code="invalid_token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH or not is_storable(sub):
            raise Unauthorized("Token has no valid subject", code="invalid_token")
        user = AuthenticatedUser(
            id=sub,
            email=_optional_str(claims.get("email")),
            first_name=_optional_str(claims.get("first_name") or claims.get("given_name")),
            last_name=_optional_str(claims.get("last_name") or claims.get("family_name")),
            plan=_plan_claim(claims, self._plan_path),
        )
        return user, float(claims["exp"])


def _plan_claim(claims: dict[str, Any], path: list[str]) -> str | None:
    """The plan name at ``path`` in the claims (``metadata.plan`` reaches into an object)."""
    value: Any = claims
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value[:64] if isinstance(value, str) and value else None


def _optional_str(value: Any) -> str | None:
    return storable(value[:320]) if isinstance(value, str) and value else None


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        raise Unauthorized("Missing Authorization header", code="missing_token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'", code="missing_token")
    return token.strip()


class KnownUsers:
    """The one deleted-user check, run on every authenticated request of every function.

    It also creates the user row the first time a ``sub`` is seen (Clerk's webhook may lag).
    Per instance it remembers for :data:`ttl` seconds whose profile it has already filled
    in, so a known user costs one primary-key lookup per request, never a write; the check
    itself is never skipped, so a token cached by :class:`TokenVerifier` stops working the
    moment Clerk's ``user.deleted`` is processed. A handler marked
    :func:`shared.web.checks_user_itself` makes that lookup part of its own statement: the
    chat list reads ``users.USER_KNOWN`` with the page, and a text send's statement
    (``shared.turn``) writes rows that name the user, which fails for a deleted one. One
    round trip, and the check and the work read one snapshot.
    """

    def __init__(self, db: Database, ttl: float = 600.0, capacity: int = 10_000) -> None:
        self._db = db
        self._ttl = ttl
        self._capacity = capacity
        self._synced: dict[str, float] = {}
        self._lock = threading.Lock()

    def ensure(self, user: AuthenticatedUser, *, checked_by_caller: bool = False) -> None:
        """Refuse a deleted user; create the user's row if missing.

        Args:
            checked_by_caller: the caller's own query reads the user's row
                (``users.USER_KNOWN``) and calls :meth:`row_missing` when it is gone. For a
                user synced within ``ttl`` nothing is asked of the database here then: the
                check rides on the caller's round trip instead of costing one of its own.

        Raises:
            Unauthorized: ``user_deleted``: the user's row is gone, or the deletion is still
                queued. Clerk's session tokens outlive a deletion by up to a minute;
                clerk_webhook keeps the user's folder queued in ``storage_deletions`` for
                longer than that (until every upload URL signed before the deletion has
                expired), and no other trace of the user is kept, so that queued folder is
                what refuses such a token.
        """
        now = time.monotonic()
        synced_at = self._synced.get(user.id)
        if synced_at is not None and now - synced_at < self._ttl:
            if checked_by_caller or users.user_exists(self._db, user.id):
                return
            with self._lock:
                self._synced.pop(user.id, None)
        self._sync(user, now)

    def row_missing(self, user: AuthenticatedUser) -> None:
        """A caller's query found no row for the user (``ensure(..., checked_by_caller=True)``):
        refuse them if their deletion is queued, or create the row again as a first request
        would (what :meth:`ensure` does when its own check finds no row).

        Raises:
            Unauthorized: ``user_deleted``.
        """
        with self._lock:
            self._synced.pop(user.id, None)
        self._sync(user, time.monotonic())

    def _sync(self, user: AuthenticatedUser, now: float) -> None:
        allowed = users.ensure_user(
            self._db,
            user.id,
            email=user.email,
            first_name=user.first_name,
            last_name=user.last_name,
        )
        if not allowed:
            raise Unauthorized("This account has been deleted", code="user_deleted")
        with self._lock:
            if len(self._synced) >= self._capacity:
                self._synced.clear()
            self._synced[user.id] = now


# --- per-instance wiring -----------------------------------------------------------------------


@lru_cache(maxsize=1)
def token_verifier() -> TokenVerifier:
    return TokenVerifier.from_settings(get_settings())


@lru_cache(maxsize=1)
def known_users() -> KnownUsers:
    return KnownUsers(database())


def authenticate(request: Request, *, user_checked_by_handler: bool = False) -> AuthenticatedUser:
    """The caller named by the request's bearer token; their user row exists afterwards.

    Args:
        user_checked_by_handler: the route's handler reads the user's row in its own query
            (``shared.web.checks_user_itself``) and calls :func:`user_row_missing` when it is
            gone; a user this instance synced lately is then not looked up here.
    """
    user = token_verifier().verify(bearer_token(request.headers.get("Authorization")))
    known_users().ensure(user, checked_by_caller=user_checked_by_handler)
    return user


def user_row_missing(user: AuthenticatedUser) -> None:
    """What a :func:`shared.web.checks_user_itself` handler calls when its query found no row
    for the user: 401 ``user_deleted`` for a deleted user, else the row is created again.

    Raises:
        Unauthorized: ``user_deleted``.
    """
    known_users().row_missing(user)


def check_user(user: AuthenticatedUser) -> None:
    """The existence check :func:`authenticate` skipped for a ``checks_user_itself`` handler,
    for the paths of such a handler whose query does not read the user's row.

    Raises:
        Unauthorized: ``user_deleted``.
    """
    known_users().ensure(user)


def request_authenticator() -> Callable[..., AuthenticatedUser]:
    """:func:`authenticate`, with the verifier built now: a bad Clerk key fails at start."""
    token_verifier()
    return authenticate
