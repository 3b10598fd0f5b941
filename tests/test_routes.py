"""The one route table (shared/routes.py) and what is generated from it or checked against it.

The functions' routes (make_api), the local router and the OpenAPI paths are built from the
table at import; the load balancer's path rules are a JSON file Terraform reads, written by
``make routes``, which must be current.
"""

from __future__ import annotations

import json
import re

import pytest
from flask import Request, Response

from dev.bundle import function_names
from dev.openapi import build_openapi
from dev.router import CONTRACT_ROUTES
from shared.routes import (
    ENDPOINTS,
    LOAD_BALANCER_ROUTES_FILE,
    is_prefix_rule,
    load_balancer_paths,
    load_balancer_routes_json,
    public_endpoints,
)
from shared.runtime import make_api


def test_the_load_balancer_routes_file_is_current() -> None:
    assert LOAD_BALANCER_ROUTES_FILE.read_text() == load_balancer_routes_json(), (
        "terraform/load_balancer_routes.json is stale: run `make routes`"
    )


def test_every_function_is_in_the_table_and_every_endpoint_is_unique() -> None:
    assert {endpoint.function for endpoint in ENDPOINTS} == set(function_names())
    operation_ids = [endpoint.operation_id for endpoint in ENDPOINTS]
    assert len(operation_ids) == len(set(operation_ids))
    public = [(endpoint.method, endpoint.path) for endpoint in public_endpoints()]
    assert len(public) == len(set(public))


def test_every_public_path_reaches_its_function_through_the_load_balancer_rules() -> None:
    """Each public endpoint's path, with sample values for its parameters, reaches its own
    function through the URL map as terraform/load_balancer.tf orders its route rules: path
    templates (one ``*`` per segment) first, then exact paths, then ``/*`` prefixes; and no
    two rules of one kind that a path matches belong to different functions."""
    rules = [
        (rule, function) for function, paths in load_balancer_paths().items() for rule in paths
    ]

    def kind(rule: str) -> int:
        return 2 if is_prefix_rule(rule) else 0 if "*" in rule else 1

    def matches(rule: str, path: str) -> bool:
        if is_prefix_rule(rule):
            return path.startswith(rule[:-1])
        pattern = "^" + "[^/]+".join(re.escape(piece) for piece in rule.split("*")) + "$"
        return re.match(pattern, path) is not None

    for endpoint in public_endpoints():
        path = endpoint.openapi_path.replace("{chat_id}", "0b6c3c1e-8d1f-4c62-9a43-000000000000")
        path = path.replace("{message_id}", "5d7b2c90-1f3e-4a8b-9c6d-000000000001")
        matched = sorted((kind(rule), function) for rule, function in rules if matches(rule, path))
        assert matched, endpoint
        first_kind = matched[0][0]
        owners = {function for rule_kind, function in matched if rule_kind == first_kind}
        assert owners == {endpoint.function}, (endpoint, matched)


def test_router_and_openapi_are_generated_from_the_table() -> None:
    routed = {
        (re.sub(r"<segment_\d+>", "*", path.replace("<path:rest>", "*")), function)
        for path, function in CONTRACT_ROUTES.items()
    }
    assert routed == {
        (path, function) for function, paths in load_balancer_paths().items() for path in paths
    }
    document = build_openapi()
    described = {
        (
            method.upper(),
            path,
            operation["operationId"],
            operation["summary"],
            "security" in operation,
        )
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert described == {
        (e.method, e.openapi_path, e.operation_id, e.summary, e.auth) for e in public_endpoints()
    }
    assert not any(
        endpoint.function in {"summarize", "storage_sweep"} for endpoint in public_endpoints()
    )


def test_make_api_refuses_handlers_that_do_not_match_the_table() -> None:
    def handler(request: Request) -> Response:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="listChats"):
        make_api("chats_crud", {"listChats": handler})  # the others are missing
    with pytest.raises(ValueError, match="surplus"):
        make_api("upload_url", {"createUploadUrl": handler, "surplus": handler})


def test_the_json_file_is_what_terraform_decodes() -> None:
    routes = json.loads(LOAD_BALANCER_ROUTES_FILE.read_text())
    assert routes == load_balancer_paths()
    assert all(isinstance(paths, list) and paths for paths in routes.values())
