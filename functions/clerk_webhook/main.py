"""clerk_webhook: not built yet; answers 501 until its own issue lands."""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from shared.errors import NotImplementedYet
from shared.runtime import make_api, start_function
from shared.web import Route

start_function()


def not_built(request: Request) -> Response:
    raise NotImplementedYet("/clerk-webhook is not available yet", code="not_implemented")


API = make_api([Route("POST", "/clerk-webhook", not_built, auth=False)])


@functions_framework.http
def clerk_webhook(request: Request) -> Response:
    """Entry point."""
    return API.handle(request)
