"""The errors an endpoint raises; :mod:`shared.web` turns each into the contract's JSON error.

Every error body is ``{"detail": "<for people>", "code": "<for programs>"}``
(:class:`shared.schemas.ErrorBody`) with the status
``docs/api.md`` gives: 400/422 bad input, 401 bad token, 404 unknown *or someone
else's* resource, 413 too large, 429 rate limited and 503 dependency down (both with
``Retry-After``).
"""

from __future__ import annotations


class ApiError(Exception):
    """An error the client is told about, as JSON with ``detail`` and ``code``."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.retry_after = retry_after  # also in the body, for clients that cannot read headers


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        # RFC 6750 section 3: a 401 for a bearer-protected resource names the scheme.
        error = "invalid_request" if code == "missing_token" else "invalid_token"
        super().__init__(detail, code=code, headers={"WWW-Authenticate": f'Bearer error="{error}"'})


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ApiError):
    status = 408
    code = "request_timeout"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnprocessableEntity(ApiError):
    status = 422
    code = "validation_error"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(
            detail,
            code=code,
            headers={"Retry-After": str(max(1, retry_after))},
            retry_after=max(1, retry_after),
        )


class InternalError(ApiError):
    """What anything unexpected is answered with (its details go to the log only)."""

    status = 500
    code = "internal_error"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service_unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"Retry-After": str(retry_after)})


class StorageUnavailable(ServiceUnavailable):
    """Cloud Storage (or IAM signing) cannot be reached now; the client should retry."""

    code = "storage_unavailable"

    def __init__(self, detail: str = "File storage is unavailable, please retry shortly") -> None:
        super().__init__(detail, retry_after=5)
