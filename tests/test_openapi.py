"""The OpenAPI description and the served routes agree, both ways."""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from typing import Any

import pytest

from dev.bundle import REPO_ROOT, function_names
from dev.openapi import build_openapi
from dev.router import CONTRACT_ROUTES
from dev.stack import LocalStack
from shared.settings import get_settings

# Invoked by Cloud Tasks and Cloud Scheduler only, never by the frontend.
INTERNAL_FUNCTIONS = {"summarize", "storage_sweep"}


def served_routes(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str]]:
    """(METHOD, /path/{param}) for every route of every public function's entry module."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    routes: set[tuple[str, str]] = set()
    root_handlers = logging.getLogger().handlers[:]
    try:
        for name in function_names():
            if name in INTERNAL_FUNCTIONS:
                continue
            spec = importlib.util.spec_from_file_location(
                f"served_{name}", REPO_ROOT / "functions" / name / "main.py"
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            # Registered while it runs, as an import would: dataclasses look their module up.
            monkeypatch.setitem(sys.modules, spec.name, module)
            spec.loader.exec_module(module)
            for route in module.API.routes:
                path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route.path)
                routes.add((route.method, path))
    finally:
        get_settings.cache_clear()
        logging.getLogger().handlers = root_handlers  # entry modules configure logging
    return routes


def described_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "patch", "put", "delete"}
    }


def test_every_served_route_is_described_and_every_described_route_served(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert served_routes(stack.env, monkeypatch) == described_routes(build_openapi())


def test_every_described_path_is_routed_by_the_local_router() -> None:
    router_paths = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path) for path in CONTRACT_ROUTES}
    for path in build_openapi()["paths"]:
        prefix_ok = any(
            path == routed or (routed.endswith("{rest}") and path.startswith(routed[:-6]))
            for routed in router_paths
        )
        assert prefix_ok, path


def test_document_is_openapi_31_with_resolvable_refs(stack: LocalStack) -> None:
    import requests

    document = requests.get(f"{stack.base_url}/dev/openapi.json", timeout=10).json()
    assert document == build_openapi()
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    refs = re.findall(r'"#/components/schemas/(\w+)"', str(document).replace("'", '"'))
    assert refs and all(ref in schemas for ref in refs)
    for event in ("StartEvent", "ChunkEvent", "DoneEvent", "ErrorEvent"):
        assert event in schemas
    assert set(schemas["Chat"]["required"]) == {
        "chatId",
        "userId",
        "title",
        "createdAt",
        "updatedAt",
    }
    message_fields = set(schemas["Message"]["properties"])
    assert {
        "messageId",
        "role",
        "content",
        "timestamp",
        "media_type",
        "media_url",
    } <= message_fields


# The names the contract (docs/api.md) fixes, per schema: a model whose field is renamed
# changes the OpenAPI and the wire alike (tests/test_wire.py cannot see that), so they are
# pinned here, each required where the contract always sends or reads it.
CONTRACT_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    # schema: (required, optional)
    "ErrorBody": ({"detail", "code"}, set()),
    "Chat": ({"chatId", "userId", "title", "createdAt"}, set()),
    "CreatedChat": ({"chat_id", "chatId", "userId", "title", "createdAt"}, set()),
    "Message": ({"messageId", "role", "content", "timestamp", "media_type", "media_url"}, set()),
    "DeletedChat": ({"message"}, set()),
    "WebhookAck": ({"message"}, set()),
    "UploadUrlResponse": ({"url", "gcs_url"}, set()),
    "StartEvent": ({"type", "chat_id", "message_id"}, set()),
    "ChunkEvent": ({"type", "content"}, set()),
    "NdjsonChunkEvent": ({"type", "content", "response"}, set()),
    "DoneEvent": ({"type", "message_id"}, set()),
    "ErrorEvent": ({"type", "detail"}, set()),
    "NdjsonErrorEvent": ({"type", "detail", "error"}, set()),
    "CreateChatRequest": (set(), {"title"}),
    "RenameChatRequest": ({"title"}, set()),
    "ChatRequest": (set(), {"chatId", "messages"}),
    "ChatMessageIn": ({"role", "parts"}, set()),
    "ChatPartIn": ({"text"}, {"type", "mimeType"}),
    "UploadUrlRequest": ({"filename", "contentType"}, {"size"}),
}


@pytest.mark.parametrize("schema", sorted(CONTRACT_FIELDS))
def test_the_contracts_field_names_are_described(schema: str) -> None:
    described = build_openapi()["components"]["schemas"][schema]
    required, optional = CONTRACT_FIELDS[schema]
    assert required <= set(described.get("required", [])), schema
    assert required | optional <= set(described["properties"]), schema
