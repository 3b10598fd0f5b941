"""GET /api/usage and per-plan limits: the plan comes from a token claim, limits from settings."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from dev.stack import LocalStack
from tests.conftest import ApiClient, assert_error, function_process, stream_events

PLANS = {"pro": {"messages_per_minute": 60, "tokens_per_day": 5000}, "tiny": {"tokens_per_day": 1}}


@pytest.fixture(scope="module")
def planned_crud(stack: LocalStack) -> Iterator[str]:
    with function_process(
        stack, "chats_crud", PLAN_LIMITS=json.dumps(PLANS), PLAN_CLAIM="metadata.plan"
    ) as base:
        yield base


def as_client(base: str, client: ApiClient) -> ApiClient:
    return ApiClient(base, client.token, client.user_id)


def test_a_new_user_on_the_default_plan(alice: ApiClient) -> None:
    before = time.time()
    response = alice.get("/api/usage")
    assert response.status_code == 200
    report = response.json()
    assert report["plan"] == "free"
    assert report["today"] == {
        "messages": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
    }
    assert report["limits"] == {"messages_per_minute": 20, "tokens_per_day": 2_000_000}
    assert report["remaining"] == {"messages_this_minute": 20, "tokens_today": 2_000_000}
    assert before < report["resets_at"]["minute"] <= before + 61
    assert report["resets_at"]["day"] % 86400 == 0 and report["resets_at"]["day"] > before
    assert report["day"] == time.strftime("%Y-%m-%d", time.gmtime(report["resets_at"]["day"] - 1))


def test_usage_counts_what_was_sent_and_answered(alice: ApiClient) -> None:
    events = stream_events(alice.send("How many tokens is this?"))
    done = events[-1]
    assert done["type"] == "done"
    report = alice.get("/api/usage").json()
    assert report["today"]["messages"] == 1
    assert report["today"]["input_tokens"] == done["usage"]["input_tokens"]
    assert report["today"]["output_tokens"] == done["usage"]["output_tokens"]
    assert report["remaining"]["messages_this_minute"] == 19
    assert report["remaining"]["tokens_today"] == 2_000_000 - done["usage"]["total_tokens"]


def test_the_plan_claim_picks_the_limits(planned_crud: str, make_user: object) -> None:
    pro = as_client(planned_crud, make_user(metadata={"plan": "pro"}))  # type: ignore[operator]
    report = pro.get("/api/usage").json()
    assert report["plan"] == "pro"
    assert report["limits"] == {"messages_per_minute": 60, "tokens_per_day": 5000}

    # A limit the plan leaves out is the default plan's.
    tiny = as_client(planned_crud, make_user(metadata={"plan": "tiny"}))  # type: ignore[operator]
    assert tiny.get("/api/usage").json()["limits"] == {
        "messages_per_minute": 20,
        "tokens_per_day": 1,
    }
    # No claim, an unknown plan, or the claim at the wrong place: the default plan.
    for claims in ({}, {"metadata": {"plan": "platinum"}}, {"plan": "pro"}):
        client = as_client(planned_crud, make_user(**claims))  # type: ignore[operator]
        assert client.get("/api/usage").json()["plan"] == "free", claims


def test_the_429s_name_the_plan_and_the_limit_hit(stack: LocalStack, make_user: object) -> None:
    plans = {"chatty": {"messages_per_minute": 1}, "thrifty": {"tokens_per_day": 1}}
    with function_process(stack, "chat_stream", PLAN_LIMITS=json.dumps(plans)) as base:
        chatty = as_client(base, make_user(plan="chatty"))  # type: ignore[operator]
        # The limit counts per UTC minute: two sends straddling a minute's end would both pass.
        into_minute = time.time() % 60
        if into_minute > 45:
            time.sleep(60 - into_minute + 0.1)
        assert stream_events(chatty.send("one"))[-1]["type"] == "done"
        refused = assert_error(chatty.send("two"), 429, "rate_limited_messages")
        assert "chatty plan" in refused["detail"] and "1 per minute" in refused["detail"]

        thrifty = as_client(base, make_user(plan="thrifty"))  # type: ignore[operator]
        assert stream_events(thrifty.send("one"))[-1]["type"] == "done"
        response = thrifty.send("two")
        refused = assert_error(response, 429, "rate_limited_tokens")
        assert "thrifty plan" in refused["detail"] and "1 tokens per day" in refused["detail"]
        assert int(response.headers["Retry-After"]) > 0


def test_usage_needs_a_token(anonymous: ApiClient) -> None:
    assert_error(anonymous.get("/api/usage"), 401)
