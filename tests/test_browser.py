"""End to end in a real browser: headless Chromium runs the existing frontend's wire behaviour.

``tests/browser/frontend.js`` does exactly what the existing Raven web frontend does (its
headers, bodies, NDJSON reader, Content-Type-only PUT, AbortController stop button and error
display); it runs in a page served from an allowed frontend origin, a different origin than
the API, so every call is a real cross-origin request with CORS preflights, as in production.

One browser and one page per origin serve every test here: each test configures the page with
a brand-new user's token. ``make test`` installs Chromium (Debian's ``chromium``) when it is
missing; only a developer running pytest directly without it gets a skip.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack, free_port
from shared.db import Database

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Flags that run Chromium headless as root on a machine with no screen and no network beyond
# this one (no sandbox: root; nothing fetched in the background). Playwright adds --headless
# and a fresh user-data dir of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_DIR = Path(__file__).resolve().parent / "browser"
CALL_TIMEOUT_MS = 30_000  # no call into the page waits longer than this


def require_browser() -> None:
    """Skip for a developer without Chromium or Playwright; in CI, which runs ``make test``
    (it installs both), fail instead."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(
            f"Chromium is not at {CHROMIUM} (`make test` installs Debian's chromium; "
            "or point CHROMIUM_PATH at one)"
        )
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright is not installed (`make install` installs it)")
    if not missing:
        return
    message = "; ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# --- the pages, the browser ------------------------------------------------------------------


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@functools.cache
def _serve_page_dir(port: int) -> str:
    """Serve tests/browser/ on ``port`` (for the session) and return its origin."""
    handler = functools.partial(_QuietFiles, directory=str(PAGE_DIR))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://localhost:{port}"


class Frontend:
    """The frontend page in the browser: calls window.raven as a user's clicks would."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin

    def open(self, backend_url: str, token: str) -> Frontend:
        """A clean screen, signed in as the token's user, talking to ``backend_url``."""
        self.page.evaluate(
            """([backendUrl, token]) => {
                for (const id of ['error', 'answer', 'messages']) {
                    document.getElementById(id).replaceChildren();
                }
                window.raven.configure(backendUrl, token);
            }""",
            [backend_url, token],
        )
        return self

    def call(self, name: str, *args: Any) -> dict[str, Any]:
        """Run ``raven.<name>(*args)``: ``{"ok": True, "value": ...}``, or the error the page
        showed (``status``, ``detail``, ``code``, ``retryAfter``, ``shown``)."""
        return dict(
            self.page.evaluate(
                """([name, args, timeoutMs]) => Promise.race([
                    window.raven.attempt(name, ...args),
                    new Promise((_, reject) => setTimeout(
                        () => reject(new Error(`${name} took over ${timeoutMs} ms`)), timeoutMs)),
                ])""",
                [name, list(args), CALL_TIMEOUT_MS],
            )
        )

    def value(self, name: str, *args: Any) -> Any:
        """Run a call that must succeed and return its value."""
        result = self.call(name, *args)
        assert result["ok"], result
        return result["value"]

    def pick_file(self, name: str, mime_type: str, data: bytes) -> None:
        """Choose a file in the page's file input, as the user does."""
        files = [{"name": name, "mimeType": mime_type, "buffer": data}]
        self.page.set_input_files("#file", files=files)

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)


# Module-scoped, so one browser serves every test here: Playwright's sync API keeps its event
# loop marked running on this thread while it is started, and asyncio.run() in later test
# modules would refuse to start beside it.
@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield context
        finally:
            context.close()


def _open_page(context: Any, origin: str) -> Any:
    page = context.new_page()
    page.goto(f"{origin}/index.html")
    page.wait_for_function("() => window.raven !== undefined")
    return page


@pytest.fixture(scope="session")
def frontend_origin(browser_frontend_port: int) -> str:
    """An allowed origin (in ALLOWED_ORIGINS), other than the API's, serving the page."""
    return _serve_page_dir(browser_frontend_port)


@pytest.fixture(scope="module")
def frontend_page(stack: LocalStack, browser_context: Any, frontend_origin: str) -> Any:
    assert frontend_origin in stack.env["ALLOWED_ORIGINS"].split(",")
    return _open_page(browser_context, frontend_origin)


@pytest.fixture(scope="module")
def foreign_page(stack: LocalStack, browser_context: Any) -> Any:
    """The same page served from an origin that is not in ALLOWED_ORIGINS."""
    origin = _serve_page_dir(free_port())
    assert origin not in stack.env["ALLOWED_ORIGINS"].split(",")
    return _open_page(browser_context, origin)


@pytest.fixture
def user_id() -> str:
    return "user_browser_" + uuid.uuid4().hex[:12]


@pytest.fixture
def frontend(stack: LocalStack, frontend_page: Any, frontend_origin: str, user_id: str) -> Frontend:
    """The frontend signed in as a brand-new user (a token issued for the page's origin)."""
    token = stack.signer.token(user_id, origin=frontend_origin)
    return Frontend(frontend_page, frontend_origin).open(stack.base_url, token)


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG of that size (a gradient)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(
        b"\x00" + bytes(channel for x in range(width) for channel in (x * 40, y * 40, 200))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def history_until(
    frontend: Frontend, chat_id: str, ready: Any, timeout: float = 10
) -> list[dict[str, Any]]:
    """The chat's history as the page loads it, once ``ready(messages)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        messages: list[dict[str, Any]] = frontend.value("loadHistory", chat_id)["messages"]
        if ready(messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.2)


# --- chats ---------------------------------------------------------------------------------


def test_create_then_list(frontend: Frontend, user_id: str) -> None:
    created = frontend.value("createChat")
    assert created["chat_id"] == created["chatId"]
    assert created["title"] == "New Chat"
    assert created["userId"] == user_id  # the body's user_id is ignored, the token's sub wins

    listed = frontend.value("listChats")
    assert [chat["chatId"] for chat in listed["chats"]] == [created["chat_id"]]
    assert listed["nextCursor"] is None


def test_rename_then_delete(frontend: Frontend) -> None:
    chat_id = frontend.value("createChat")["chat_id"]

    renamed = frontend.value("renameChat", chat_id, "Birds of Norway")
    assert renamed["title"] == "Birds of Norway"
    assert [chat["title"] for chat in frontend.value("listChats")["chats"]] == ["Birds of Norway"]

    deleted = frontend.value("deleteChat", chat_id)
    assert isinstance(deleted["message"], str) and deleted["message"]
    assert frontend.value("listChats")["chats"] == []
    gone = frontend.call("loadHistory", chat_id)
    assert (gone["status"], gone["code"]) == (404, "chat_not_found")


def test_paging_headers_are_readable(frontend: Frontend) -> None:
    created = [frontend.value("createChat")["chat_id"] for _ in range(3)]

    first = frontend.value("listChats", "?limit=2")
    assert len(first["chats"]) == 2
    assert first["nextCursor"], first  # exposed through CORS: JS can read it
    assert 'rel="next"' in first["link"] and "cursor=" in first["link"]
    rest = frontend.value("listChats", f"?limit=2&cursor={first['nextCursor']}")
    assert rest["nextCursor"] is None
    seen = [chat["chatId"] for chat in first["chats"] + rest["chats"]]
    assert sorted(seen) == sorted(created)


# --- uploads and chat ----------------------------------------------------------------------


def test_upload_then_chat_about_the_image(frontend: Frontend, model: StandinControl) -> None:
    image = png(6, 4)
    frontend.pick_file("photo.png", "image/png", image)
    uploaded = frontend.value("uploadPickedFile")  # the PUT carries only Content-Type
    assert uploaded["putStatus"] == 200 and uploaded["type"] == "image/png"

    chat_id = frontend.value("createChat")["chat_id"]
    question = unique("What is in this picture?")
    media = [{"gcs_url": uploaded["gcs_url"], "mimeType": uploaded["type"]}]
    sent = frontend.value("sendMessage", chat_id, [], question, media)

    assert sent["contentType"].startswith("application/x-ndjson")
    assert sent["error"] is None and not sent["aborted"]
    assert sent["lines"][0]["type"] == "start"
    assert sent["lines"][-1]["type"] == "done"
    # The model saw the image, and the reader assembled its answer (the stand-in describes
    # the media it received).
    record = model.requests(match=question)[0]
    assert record["outcome"] == "ok"
    assert "media: image/png" in sent["answer"]

    history = frontend.value("loadHistory", chat_id)["messages"]
    assert [message["role"] for message in history] == ["user", "assistant"]
    assert history[0]["content"] == question
    assert history[0]["media_type"] == "image/png"
    assert history[1]["content"] == sent["answer"]  # what the reader showed is what was stored
    assert history[1]["status"] == "complete"

    # The history's media loads in an <img> straight from its signed URL.
    images = frontend.evaluate("() => window.raven.historyImages()")
    assert len(images) == 1
    assert images[0]["src"] == history[0]["media_url"]
    assert images[0]["naturalWidth"] == 6


def test_the_stream_arrives_incrementally(frontend: Frontend, model: StandinControl) -> None:
    chat_id = frontend.value("createChat")["chat_id"]
    first_question = unique("Count to four")
    chunks = ["one ", "two ", "three ", "four"]
    # Paced like a model: pieces the model sends apart arrive apart.
    model.script(match=first_question, chunks=chunks, delay_per_chunk=0.3)
    sent = frontend.value("sendMessage", chat_id, [], first_question)

    assert sent["answer"] == "one two three four"
    reads_with_text_before_the_end = [
        read for read in sent["reads"] if read["texts"] > 0 and not read["done"]
    ]
    assert len(reads_with_text_before_the_end) > 1, sent["reads"]
    assert [line["response"] for line in sent["lines"] if "response" in line] == chunks

    # The next turn carries the client's copy of the history, as the frontend sends it.
    history = frontend.value("loadHistory", chat_id)["messages"]
    assert history[-1]["content"] == sent["answer"]
    second_question = unique("And back")
    model.script(match=second_question, reply="four three two one")
    again = frontend.value("sendMessage", chat_id, history, second_question)
    assert again["answer"] == "four three two one"
    stored = frontend.value("loadHistory", chat_id)["messages"]
    assert [message["content"] for message in stored] == [
        first_question,
        "one two three four",
        second_question,
        "four three two one",
    ]


def test_a_failure_mid_stream_is_shown_and_the_partial_answer_kept(
    frontend: Frontend, model: StandinControl
) -> None:
    chat_id = frontend.value("createChat")["chat_id"]
    question = unique("Fail half way")
    model.script(
        match=question,
        chunks=["half ", "an ", "answer"],
        delay_per_chunk=0.1,
        stream_error={"after_chunks": 2, "status": 500, "message": "model broke"},
    )
    sent = frontend.value("sendMessage", chat_id, [], question)

    assert sent["error"]  # the reader stopped at the line with .error
    assert sent["lines"][-1]["type"] == "error"
    assert sent["answer"] == "half an "
    shown = frontend.evaluate("() => document.getElementById('error').textContent")
    assert shown == sent["error"]
    history = frontend.value("loadHistory", chat_id)["messages"]
    assert [(m["role"], m["content"], m["status"]) for m in history] == [
        ("user", question, "complete"),
        ("assistant", "half an ", "incomplete"),
    ]


def test_stop_keeps_the_question_and_the_partial_answer(
    frontend: Frontend, model: StandinControl
) -> None:
    chat_id = frontend.value("createChat")["chat_id"]
    question = unique("Tell me a long story")
    model.script(match=question, chunks=[f"part{n} " for n in range(30)], delay_per_chunk=0.2)
    sent = frontend.value("sendMessage", chat_id, [], question, [], 2)  # stop after 2 pieces

    assert sent["aborted"] and sent["error"] is None
    assert sent["answer"] == "part0 part1 "
    history = history_until(
        frontend, chat_id, lambda messages: len(messages) == 2 and messages[1]["content"]
    )
    assert [message["role"] for message in history] == ["user", "assistant"]
    assert history[0]["content"] == question
    assert history[1]["status"] == "incomplete"
    assert history[1]["content"].startswith(sent["answer"])
    assert len(history[1]["content"].split()) < 30


def test_sse_for_a_client_that_asks_for_it(frontend: Frontend, model: StandinControl) -> None:
    question = unique("Greet me")
    model.script(match=question, chunks=["Hello", " there"], delay_per_chunk=0.1)
    sent = frontend.value("sendMessageSse", None, question)

    assert sent["contentType"].startswith("text/event-stream")
    events = sent["events"]
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    assert "".join(event["content"] for event in events if event["type"] == "chunk") == (
        "Hello there"
    )
    history = frontend.value("loadHistory", events[0]["chat_id"])["messages"]
    assert history[-1]["content"] == "Hello there"


# --- errors and origins --------------------------------------------------------------------


def assert_shown_error(result: dict[str, Any], status: int, code: str) -> None:
    """The page could read the error's JSON cross-origin and showed its ``detail``."""
    assert not result["ok"], result
    assert (result["status"], result["code"]) == (status, code), result
    assert isinstance(result["detail"], str) and result["detail"]
    assert result["shown"] == result["detail"]


def test_error_details_are_readable_cross_origin(
    stack: LocalStack, frontend: Frontend, user_id: str, db: Database
) -> None:
    # 404: a chat that is not there.
    assert_shown_error(frontend.call("loadHistory", str(uuid.uuid4())), 404, "chat_not_found")

    # 422: a file type off the allowlist, refused before any URL is signed.
    frontend.pick_file("setup.exe", "application/x-msdownload", b"MZ\x90\x00")
    assert_shown_error(frontend.call("uploadPickedFile"), 422, "unsupported_content_type")

    # 413: a request bigger than a request may be (a pasted wall of text as a chat's title).
    chat_id = frontend.value("createChat")["chat_id"]
    oversized = "x" * (int(stack.env["MAX_REQUEST_BYTES"]) + 1)
    too_large = frontend.call("renameChat", chat_id, oversized)
    assert_shown_error(too_large, 413, "payload_too_large")

    # 429: the user's daily tokens are spent.
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO usage_daily (user_id, day, input_tokens, output_tokens) "
            "VALUES (:u, (now() AT TIME ZONE 'utc')::date, 1500000, 600000)",
            u=user_id,
        )
    limited = frontend.call("sendMessage", None, [], "one more please")
    assert_shown_error(limited, 429, "rate_limited_tokens")
    assert int(limited["retryAfter"]) > 0  # Retry-After is exposed to JS too

    # 401: the session's token has expired.
    expired = stack.signer.token(user_id, origin=frontend.origin, lifetime_seconds=-3600)
    frontend.open(stack.base_url, expired)
    assert_shown_error(frontend.call("listChats"), 401, "token_expired")


def test_an_origin_outside_allowed_origins_cannot_read_the_api(
    stack: LocalStack, frontend: Frontend, foreign_page: Any, user_id: str
) -> None:
    chat_id = frontend.value("createChat")["chat_id"]
    as_the_frontend = {
        "headers": {
            "Authorization": f"Bearer {stack.signer.token(user_id, origin=frontend.origin)}",
            "Content-Type": "application/json",
        }
    }
    calls = [
        # as the frontend calls: preflighted (Authorization, JSON), so never even sent
        (f"{stack.base_url}/api/chats", as_the_frontend),
        (f"{stack.base_url}/api/chats/{chat_id}", as_the_frontend),
        # a simple request with no preflight: sent, but its answer is not the page's to read
        (f"{stack.base_url}/api/chats", {}),
    ]
    foreign = Frontend(foreign_page, "foreign")
    for url, init in calls:
        refused = foreign.evaluate("([u, i]) => window.raven.probe(u, i)", [url, init])
        assert refused["readable"] is False, (url, refused)
        assert refused["error"].startswith("TypeError")
        # The same call from the allowed origin is readable.
        allowed = frontend.evaluate("([u, i]) => window.raven.probe(u, i)", [url, init])
        assert allowed["readable"] is True, (url, allowed)
    # The chat is untouched and still the user's only one.
    assert [chat["chatId"] for chat in frontend.value("listChats")["chats"]] == [chat_id]
