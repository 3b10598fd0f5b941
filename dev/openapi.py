"""The OpenAPI 3.1 description of the contract, generated from the pydantic models and the
route table (:mod:`shared.routes`: paths, methods, operation ids, summaries, security).

Served locally at ``/dev/openapi.json``; ``python -m dev.openapi`` prints it.
``tests/test_openapi.py`` checks that every route the functions serve is described here and
every route described here is served.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared import schemas, stream_events
from shared.routes import public_endpoints
from shared.settings import Settings, load_settings
from shared.text import UNSTORABLE_TEXT

ERROR_STATUSES = {
    "400": "Malformed input (e.g. invalid JSON).",
    "401": "Missing, malformed or expired token (with WWW-Authenticate: Bearer).",
    "404": "No such chat, or it belongs to someone else.",
    "408": "The request body did not arrive within REQUEST_BODY_TIMEOUT_SECONDS.",
    "409": "Conflict, e.g. chat_busy: an answer of the chat is still streaming.",
    "413": "Body too large.",
    "422": (
        "Well-formed input that fails validation; detail names the field "
        f"(invalid_text: {UNSTORABLE_TEXT})."
    ),
    "429": "Rate limited (with Retry-After).",
    "503": "A dependency is down (with Retry-After).",
}

SSE_EVENTS: list[type[BaseModel]] = [
    stream_events.StartEvent,
    stream_events.ChunkEvent,
    stream_events.DoneEvent,
    stream_events.ErrorEvent,
]
NDJSON_EVENTS: list[type[BaseModel]] = [
    stream_events.StartEvent,
    stream_events.NdjsonChunkEvent,
    stream_events.DoneEvent,
    stream_events.NdjsonErrorEvent,
    stream_events.HeartbeatEvent,
]

MODELS: list[type[BaseModel]] = [
    schemas.ErrorBody,
    schemas.CreateChatRequest,
    schemas.RenameChatRequest,
    schemas.Chat,
    schemas.CreatedChat,
    schemas.ChatSearchHit,
    schemas.Message,
    schemas.DeletedChat,
    schemas.ChatRequest,
    *SSE_EVENTS,
    *NDJSON_EVENTS[1:],
    schemas.AnswerStopped,
    schemas.UploadUrlRequest,
    schemas.UploadUrlResponse,
    schemas.UsageReport,
    schemas.WebhookAck,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": ERROR_STATUSES[status],
            "content": _json_content(_ref(schemas.ErrorBody)),
        }
        for status in statuses
    }


# A query parameter given empty (``?limit=``) counts as absent (shared.web.query_args).
EMPTY_VALUE = {"type": "string", "maxLength": 0}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    parameters = []
    for name, prop in schema["properties"].items():
        value = {key: item for key, item in prop.items() if key != "description"}
        if value.get("type") != "string":
            value = {"anyOf": [value, EMPTY_VALUE]}
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": (prop.get("description", "") + " Empty counts as absent.").strip(),
                "schema": value,
            }
        )
    return parameters


CHAT_ID = {
    "name": "chat_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
MESSAGE_ID = {
    "name": "message_id",
    "in": "path",
    "required": True,
    "description": "The answer: `answer_id` of the `start` event (or `message_id` of `done`).",
    "schema": {"type": "string", "format": "uuid"},
}
ACCEPT = {
    "name": "Accept",
    "in": "header",
    "required": False,
    "description": "text/event-stream or application/x-ndjson; "
    "anything else gets the deployment's default framing.",
    "schema": {"type": "string"},
}
NEXT_CURSOR_HEADERS = {
    "X-Next-Cursor": {
        "description": "Present when there is a next page.",
        "schema": {"type": "string"},
    },
    "Link": {"description": 'rel="next" URL of the next page.', "schema": {"type": "string"}},
}
BEARER: list[dict[str, list[str]]] = [{"clerkSession": []}]


def _sse_event(data: dict[str, Any]) -> dict[str, Any]:
    """One Server-Sent Event whose ``data`` is a JSON document described by ``data``: for a
    stream, OpenAPI's schema describes each event (its data, event, id and retry fields), not
    the JSON inside ``data`` (which contentMediaType/contentSchema describe)."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }


def _chat_links(chat_id: str) -> dict[str, Any]:
    """What can be done next with the chat a response names (schemathesis follows these)."""
    return {
        operation: {"operationId": operation, "parameters": {"chat_id": chat_id}}
        for operation in ("listMessages", "renameChat", "deleteChat")
    }


def _operations() -> dict[str, dict[str, Any]]:
    """What each public endpoint of :mod:`shared.routes` takes and answers, by operation id
    (its path, method, summary and security come from the route table)."""
    stream_content = {
        "text/event-stream": {
            "schema": _sse_event({"oneOf": [_ref(event) for event in SSE_EVENTS]}),
            "x-stream-item": "one event per `data:` line (its `id:` is the event_id)",
        },
        "application/x-ndjson": {
            "schema": {"oneOf": [_ref(event) for event in NDJSON_EVENTS]},
            "x-stream-item": "one event per line",
        },
    }
    return {
        "listChats": {
            "parameters": _query_parameters(schemas.ChatListQuery),
            "responses": {
                "200": {
                    "description": "A page of chats (search hits when `q` is given).",
                    "headers": NEXT_CURSOR_HEADERS,
                    "content": _json_content(
                        {
                            "type": "array",
                            # anyOf: a search hit is a chat too (objects may carry more
                            # fields), so it matches both and oneOf would refuse it.
                            "items": {"anyOf": [_ref(schemas.Chat), _ref(schemas.ChatSearchHit)]},
                        }
                    ),
                },
                **_errors("400", "401", "422", "503"),
            },
        },
        "createChat": {
            "requestBody": {
                "required": False,
                "content": _json_content(_ref(schemas.CreateChatRequest)),
            },
            "responses": {
                "200": {
                    "description": "The new chat.",
                    "content": _json_content(_ref(schemas.CreatedChat)),
                    "links": _chat_links("$response.body#/chat_id"),
                },
                **_errors("400", "401", "408", "413", "422", "503"),
            },
        },
        "listMessages": {
            "parameters": _query_parameters(schemas.MessageListQuery),
            "responses": {
                "200": {
                    "description": "A page of messages.",
                    "headers": NEXT_CURSOR_HEADERS,
                    "content": _json_content({"type": "array", "items": _ref(schemas.Message)}),
                },
                **_errors("401", "404", "422", "503"),
            },
        },
        "renameChat": {
            "requestBody": {
                "required": True,
                "content": _json_content(_ref(schemas.RenameChatRequest)),
            },
            "responses": {
                "200": {
                    "description": "The updated chat.",
                    "content": _json_content(_ref(schemas.Chat)),
                    "links": _chat_links("$response.body#/chatId"),
                },
                **_errors("400", "401", "404", "408", "413", "422", "503"),
            },
        },
        "deleteChat": {
            "responses": {
                "200": {
                    "description": "Deleted.",
                    "content": _json_content(_ref(schemas.DeletedChat)),
                },
                **_errors("401", "404", "503"),
            },
        },
        "sendMessage": {
            "description": (
                "The answer streams as events: `start`, `chunk`..., then `done` or `error`. "
                "Two framings of the same events: an `Accept` naming `text/event-stream` "
                "gets Server-Sent Events, one naming `application/x-ndjson` gets NDJSON "
                "(the higher quality wins if both are named); any other request gets the "
                "deployment's `CHAT_STREAM_FORMAT` (`sse` unless set; the existing web "
                "frontend, which sends no `Accept`, needs `ndjson`). The schemas below "
                "describe one event (one SSE `data:` line, or one NDJSON line)."
            ),
            "parameters": [ACCEPT],
            "requestBody": {
                "required": True,
                "content": _json_content(_ref(schemas.ChatRequest)),
            },
            "responses": {
                "200": {
                    "description": (
                        "SSE: one event JSON per `data:` line, a blank line after each; "
                        "comment lines (`: keep-alive`) are heartbeats. NDJSON: one event "
                        "JSON per line; a chunk also carries `response` (= `content`), an "
                        'error `error` (= `detail`), and `{"type": "heartbeat"}` lines '
                        "are heartbeats."
                    ),
                    "headers": {
                        "Vary": {
                            "description": "Includes Accept: the framing depends on it.",
                            "schema": {"type": "string"},
                        }
                    },
                    "content": stream_content,
                },
                **_errors("400", "401", "404", "408", "409", "413", "422", "429", "503"),
            },
        },
        "resumeAnswer": {
            "description": (
                "Replays the stored text after `Last-Event-ID` (or `after`) as one `chunk`, "
                "then follows the answer live (a `resumable` one grows while it is written) "
                "until `done` or `error`; an answer that has ended gets its text and its "
                "ending at once. Same events and framings as POST /chat, without `start`. "
                "Another user's answer is a 404 like a missing one."
            ),
            "parameters": [
                *_query_parameters(schemas.ResumeQuery),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "The last event_id the client read (wins over `after`).",
                    "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"},
                },
                ACCEPT,
            ],
            "responses": {
                "200": {
                    "description": "The answer's events after the offset, as POST /chat's.",
                    "content": stream_content,
                },
                **_errors("401", "404", "422", "503"),
            },
        },
        "stopAnswer": {
            "description": (
                "The answer is kept, incomplete, with finish_reason `stopped`; its stream "
                "(and every follower's) ends with `done`. An answer that has already "
                "ended is left as it is (`stopping`: false)."
            ),
            "responses": {
                "200": {
                    "description": "Whether the answer was still being written.",
                    "content": _json_content(_ref(schemas.AnswerStopped)),
                },
                **_errors("401", "404", "503"),
            },
        },
        "createUploadUrl": {
            "description": (
                "PUT the file to `url` with exactly `headers`: by default only "
                "`Content-Type` (the URL signs host, object, expiry and content type); "
                "with `bindSize` also `x-goog-content-length-range`. The file lands under "
                "`incoming/` and is checked at its first use in a POST /chat message: "
                "real size within `max_bytes` (422 `media_too_large`), stored type (422 "
                "`media_type_mismatch`), bytes of the declared type (422 "
                "`media_content_mismatch`); a refused file is deleted, an accepted one "
                "moved to `uploads/`. Files never used are deleted after a day."
            ),
            "requestBody": {
                "required": True,
                "content": _json_content(_ref(schemas.UploadUrlRequest)),
            },
            "responses": {
                "200": {
                    "description": "Where and how to upload.",
                    "content": _json_content(_ref(schemas.UploadUrlResponse)),
                },
                **_errors("400", "401", "408", "413", "422", "429", "503"),
            },
        },
        "readUsage": {
            "responses": {
                "200": {
                    "description": "The caller's usage.",
                    "content": _json_content(_ref(schemas.UsageReport)),
                },
                **_errors("401", "503"),
            },
        },
        "clerkWebhook": {
            "parameters": [
                {"name": header, "in": "header", "required": True, "schema": {"type": "string"}}
                for header in ("svix-id", "svix-timestamp", "svix-signature")
            ],
            "requestBody": {"required": True, "content": _json_content({"type": "object"})},
            "responses": {
                "200": {
                    "description": "Processed, or already processed.",
                    "content": _json_content(_ref(schemas.WebhookAck)),
                },
                **_errors("400", "408", "413", "503"),
            },
        },
    }


# Path parameters by name, for every path of the route table that has them.
PATH_PARAMETERS = {"chat_id": CHAT_ID, "message_id": MESSAGE_ID}


def _paths() -> dict[str, Any]:
    """The paths of the route table's public endpoints, each with its operation."""
    operations = _operations()
    endpoints = public_endpoints()
    described = {endpoint.operation_id for endpoint in endpoints}
    if set(operations) != described:
        raise ValueError(
            f"dev/openapi.py describes {sorted(operations)}; "
            f"shared/routes.py has {sorted(described)}"
        )
    paths: dict[str, Any] = {}
    for endpoint in endpoints:
        item = paths.setdefault(endpoint.openapi_path, {})
        if endpoint.path_parameters:
            item["parameters"] = [PATH_PARAMETERS[name] for name in endpoint.path_parameters]
        operation: dict[str, Any] = {
            "operationId": endpoint.operation_id,
            "summary": endpoint.summary,
        }
        if endpoint.auth:
            operation["security"] = BEARER
        item[endpoint.method.lower()] = {**operation, **operations[endpoint.operation_id]}
    return paths


# Every string a request may carry: no NUL, no unpaired surrogate (shared/text.py).
STORABLE_PATTERN = "^[^\\u0000]*$"
# The same, with at least one character that is not whitespace (a title that strips to "").
NOT_BLANK_PATTERN = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
# Unpaired surrogates are refused too (422 invalid_text), but cannot be put in a pattern: the
# validators' regex engines (Rust's, for one) work on Unicode scalar values, which they are not.


def _storable_strings(schema: Any) -> None:
    """Give every free-form string schema the storable-text pattern, in place."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(
            schema
        ):
            schema["pattern"] = STORABLE_PATTERN
        for value in schema.values():
            _storable_strings(value)
    elif isinstance(schema, list):
        for item in schema:
            _storable_strings(item)


def _any_case(text: str) -> str:
    """A regex for ``text`` in any letter case (JSON Schema patterns have no flags)."""
    return "".join(
        f"[{char.lower()}{char.upper()}]"
        if char.isalpha()
        else f"\\{char}"
        if char in ".+*?()[]{}|^$\\"
        else char
        for char in text
    )


def _describe_settings(definitions: dict[str, Any], settings: Settings) -> None:
    """Limits that are settings, as the deployment described has them."""
    upload = definitions["UploadUrlRequest"]["properties"]
    allowed = "|".join(_any_case(kind) for kind in settings.upload_allowed_types)
    upload["contentType"] = {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        # The type on the allowlist, then parameters; a header value, so no control characters.
        "pattern": f"^[ \\t]*({allowed})[ \\t]*(;[ \\t!-~]*[!-~])?[ \\t]*$",
        "description": (
            "The file's MIME type, one of UPLOAD_ALLOWED_TYPES in any case, parameters "
            "allowed (e.g. `image/png; name=x`); anything else is 422 "
            "unsupported_content_type. Allowed here: " + ", ".join(settings.upload_allowed_types)
        ),
    }
    size = next(option for option in upload["size"]["anyOf"] if option.get("type") == "integer")
    size["maximum"] = settings.upload_max_bytes
    upload["size"]["description"] = (
        f"Declared size in bytes; over UPLOAD_MAX_BYTES ({settings.upload_max_bytes}) is 413 "
        "file_too_large."
    )
    rename = definitions["RenameChatRequest"]["properties"]["title"]
    rename["pattern"] = NOT_BLANK_PATTERN


def build_openapi(settings: Settings | None = None) -> dict[str, Any]:
    """The description; limits that are settings come from ``settings`` (defaults if None)."""
    settings = settings or load_settings({"DATABASE_URL": "postgresql://localhost/unused"})
    _, definitions = models_json_schema(
        [(model, "validation") for model in MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas_by_name = definitions.get("$defs", {})
    _describe_settings(schemas_by_name, settings)
    paths = _paths()
    _storable_strings(schemas_by_name)
    _storable_strings(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Raven backend",
            "version": "1.0.0",
            "description": "The Raven backend's HTTP API; docs/api.md is the guide.",
        },
        "servers": [{"url": "http://localhost:8000", "description": "make dev"}],
        "paths": paths,
        "components": {
            "schemas": schemas_by_name,
            "securitySchemes": {
                "clerkSession": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT (Clerk, RS256)",
                }
            },
        },
    }


if __name__ == "__main__":
    print(json.dumps(build_openapi(), indent=2))
