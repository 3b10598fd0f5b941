"""The API's one route table: every endpoint, the function that serves it, its OpenAPI name.

Everything else that knows a route is generated from this table or checked against it:

* each function's ``main.py`` binds its handlers to its rows by operation id
  (:func:`shared.runtime.make_api`, which refuses a handler missing or left over);
* the local router (:mod:`dev.router`) routes the public rows' paths to their functions;
* the OpenAPI description (:mod:`dev.openapi`) takes its paths, methods, operation ids,
  summaries and security from here (and only the rest, bodies and statuses, from itself);
* the load balancer's URL map reads ``terraform/load_balancer_routes.json``, which
  ``python -m shared.routes`` writes from :func:`load_balancer_paths`
  (``tests/test_routes.py`` fails when it is not current).

Objects layer: imports nothing of ours, so the dev tools can read it without a function.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# A path parameter as werkzeug writes it: <name> or <converter:name>.
_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")

LOAD_BALANCER_ROUTES_FILE = (
    Path(__file__).resolve().parent.parent / "terraform" / "load_balancer_routes.json"
)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint: ``method`` on ``path`` (werkzeug syntax) is served by ``function``."""

    method: str
    path: str
    function: str
    operation_id: str
    summary: str
    auth: bool = True  # the caller is the bearer token's sub
    public: bool = True  # False: only Cloud Tasks or Cloud Scheduler call it (never routed)

    @property
    def openapi_path(self) -> str:
        """The path as OpenAPI writes it: ``/api/chats/{chat_id}``."""
        return _PARAMETER.sub(r"{\1}", self.path)

    @property
    def path_parameters(self) -> list[str]:
        return _PARAMETER.findall(self.path)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/api/chats",
        "chats_crud",
        "listChats",
        "The caller's chats, most recently active first; with `q`, the chats matching it, "
        "best first, each with a snippet.",
    ),
    Endpoint(
        "POST",
        "/api/chats/create",
        "chats_crud",
        "createChat",
        'Create a chat (untitled ones are "New Chat").',
    ),
    Endpoint(
        "GET",
        "/api/chats/<chat_id>",
        "chats_crud",
        "listMessages",
        "The chat's messages, oldest first (the newest page by default).",
    ),
    Endpoint(
        "PATCH",
        "/api/chats/<chat_id>",
        "chats_crud",
        "renameChat",
        "Rename a chat; a user's title is never replaced by a generated one.",
    ),
    Endpoint(
        "DELETE",
        "/api/chats/<chat_id>",
        "chats_crud",
        "deleteChat",
        "Delete a chat, its messages, summaries and the media only it used.",
    ),
    Endpoint(
        "GET",
        "/api/usage",
        "chats_crud",
        "readUsage",
        "Today's usage, the caller's plan limits, what remains, when it resets.",
    ),
    Endpoint(
        "POST",
        "/chat",
        "chat_stream",
        "sendMessage",
        "Send the last message of `messages` and stream the answer.",
    ),
    Endpoint(
        "GET",
        "/api/chats/<chat_id>/messages/<message_id>/stream",
        "chat_stream",
        "resumeAnswer",
        "An answer's stream again, from where the client left it, from any instance.",
    ),
    Endpoint(
        "POST",
        "/api/chats/<chat_id>/messages/<message_id>/stop",
        "chat_stream",
        "stopAnswer",
        "Stop an answer being written, on whichever instance writes it.",
    ),
    Endpoint(
        "POST",
        "/api/upload-url",
        "upload_url",
        "createUploadUrl",
        "A signed URL the browser PUTs one file to.",
    ),
    Endpoint(
        "POST",
        "/clerk-webhook",
        "clerk_webhook",
        "clerkWebhook",
        "Clerk user lifecycle events through Svix, signed in svix-* headers.",
        auth=False,
    ),
    Endpoint(
        "POST",
        "/",
        "summarize",
        "runTask",
        "Cloud Tasks: build a chat's next rolling summary, or title a chat.",
        auth=False,
        public=False,
    ),
    Endpoint(
        "POST",
        "/",
        "storage_sweep",
        "sweepStorage",
        "Cloud Scheduler: delete the bucket objects queued in storage_deletions.",
        auth=False,
        public=False,
    ),
)


def endpoints_of(function: str) -> list[Endpoint]:
    """The rows ``function`` serves."""
    return [endpoint for endpoint in ENDPOINTS if endpoint.function == function]


def public_endpoints() -> list[Endpoint]:
    """The rows clients call: routed, load balanced and described."""
    return [endpoint for endpoint in ENDPOINTS if endpoint.public]


def load_balancer_paths() -> dict[str, list[str]]:
    """Public paths per function as URL map rules (and the local router's rules).

    A URL map matches no parameter: a path whose parameters all come last becomes its prefix
    and ``/*``, which covers the fixed paths below it (``/api/chats/create`` is in
    ``/api/chats/*``); a path with a fixed segment after a parameter becomes a path template,
    one ``*`` per parameter (``/api/chats/*/messages/*/stream``), which the load balancer tries
    before the prefixes. Methods are not routed: a function answers 405 for a method it does
    not serve.
    """
    patterns: dict[str, list[str]] = {}
    for endpoint in public_endpoints():
        path = endpoint.path
        if endpoint.path_parameters:
            prefix, _, rest = path.partition("<")
            if _PARAMETER.sub("", "<" + rest).strip("/"):  # a fixed segment after a parameter
                path = _PARAMETER.sub("*", path)
            else:
                path = prefix.rstrip("/") + "/*"
        paths = patterns.setdefault(endpoint.function, [])
        if path not in paths:
            paths.append(path)
    for function, paths in patterns.items():
        wildcards = [path[:-1] for path in paths if is_prefix_rule(path)]
        patterns[function] = [
            path
            for path in paths
            if path.endswith("/*") or not any(path.startswith(w) for w in wildcards)
        ]
    return patterns


def is_prefix_rule(path: str) -> bool:
    """``/api/chats/*``: everything under a prefix (not a template's one-segment ``*``)."""
    return path.endswith("/*") and "*" not in path[:-2]


def load_balancer_routes_json() -> str:
    """What ``terraform/load_balancer_routes.json`` holds."""
    return json.dumps(load_balancer_paths(), indent=2) + "\n"


if __name__ == "__main__":
    # python -m shared.routes: rewrite the load balancer's routes (make routes).
    LOAD_BALANCER_ROUTES_FILE.write_text(load_balancer_routes_json())
    sys.stdout.write(f"wrote {LOAD_BALANCER_ROUTES_FILE}\n")
