"""Fixtures: the real local stack, a direct database handle, and API clients per user.

The suite runs against the same stack ``make dev`` runs: an embedded PostgreSQL, every
function in its own functions-framework process, and the router in front. Requests go over
HTTP exactly as the frontend sends them; assertions about stored state read Postgres.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pg8000.dbapi
import pytest
import requests

from dev.gemini_standin import StandinControl, StandinServer, start_standin
from dev.stack import LocalStack, free_port, function_command
from shared.db import Database, connect_kwargs_from_url
from shared.settings import load_settings
from shared.storage import MediaStorage
from tests.helpers import Svix

FRONTEND_ORIGIN = "http://localhost:3000"
# The origin the browser tests (tests/test_browser.py) serve their frontend page from: a port
# picked per run, so test runs side by side never share it. Allowed like the frontend's.
BROWSER_FRONTEND_PORT = free_port()
BROWSER_FRONTEND_ORIGIN = f"http://localhost:{BROWSER_FRONTEND_PORT}"

# Settings every test process agrees on; anything not here comes from .env.example.
TEST_ENV = {
    "ENVIRONMENT": "test",
    # As deployed for the existing frontend, which sends no Accept and reads NDJSON.
    "CHAT_STREAM_FORMAT": "ndjson",
    "ALLOWED_ORIGINS": f"{FRONTEND_ORIGIN},https://app.example.com,{BROWSER_FRONTEND_ORIGIN}",
    "MAX_REQUEST_BYTES": "65536",
}


class ApiClient:
    """Calls the stack as the frontend does, as one user (or anonymously with no token)."""

    def __init__(self, base_url: str, token: str | None = None, user_id: str | None = None):
        self.base_url = base_url
        self.token = token
        self.user_id = user_id
        self.session = requests.Session()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Origin": FRONTEND_ORIGIN, **kwargs.pop("headers", {})}
        if self.token is not None:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        return self.session.request(
            method, self.base_url + path, headers=headers, timeout=30, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def send(
        self,
        text: str,
        chat_id: str | None = None,
        *,
        history: list[dict[str, Any]] | None = None,
        media: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """POST /chat as the frontend does: the client's history, then the new message."""
        parts = [*(media or []), {"type": "text", "text": text}]
        body = {"chatId": chat_id, "messages": [*(history or []), {"role": "user", "parts": parts}]}
        return self.post("/chat", json=body, stream=True, **kwargs)

    def create_chat(self, title: str | None = None) -> dict[str, Any]:
        response = self.post("/api/chats/create", json={"title": title})
        assert response.status_code == 200, response.text
        return dict(response.json())


def stream_lines(response: requests.Response) -> Iterator[str]:
    """The response body's lines as they arrive, decoded."""
    for line in response.iter_lines():
        yield line.decode()


HEARTBEAT = "heartbeat"  # what stream_events lists for a heartbeat, in either framing


def stream_events(response: requests.Response) -> list[Any]:
    """Every event of a ``POST /chat`` stream, in either framing, checked against its rules.

    Events come back as dicts without the NDJSON-only fields, so one test body serves both
    framings; heartbeats as :data:`HEARTBEAT`. NDJSON lines must each be one JSON object,
    a chunk's ``response`` equal to its ``content`` and an error's ``error`` to its ``detail``
    (what the existing frontend reads); SSE events are ``data:`` lines and comment lines.
    """
    media_type = response.headers["Content-Type"]
    events: list[Any] = []
    if media_type.startswith("application/x-ndjson"):
        for line in stream_lines(response):
            if not line:
                continue
            event = json.loads(line)
            assert isinstance(event, dict), line
            if event["type"] == "chunk":
                assert event.pop("response") == event["content"], line
            elif event["type"] == "error":
                assert event.pop("error") == event["detail"], line
            elif event["type"] == "heartbeat":
                event = HEARTBEAT
            events.append(event)
        return events
    assert media_type.startswith("text/event-stream"), (media_type, response.text)
    event_id: str | None = None
    for line in stream_lines(response):
        if line.startswith("id: "):
            event_id = line[len("id: ") :]
        elif line.startswith("data: "):
            event = json.loads(line[len("data: ") :])
            # The SSE id is the event's event_id (what EventSource sends back to resume).
            assert event_id == (None if "event_id" not in event else str(event["event_id"]))
            event_id = None
            events.append(event)
        elif line.startswith(":"):
            events.append(HEARTBEAT)
        else:
            assert line == "", line  # SSE events are separated by blank lines
    return events


def dicts(events: list[Any]) -> list[dict[str, Any]]:
    """The events of :func:`stream_events` without the heartbeats."""
    return [event for event in events if isinstance(event, dict)]


def assert_error(response: requests.Response, status: int, code: str | None = None) -> dict:
    """The contract's error shape: the status, JSON with a human ``detail`` and a ``code``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.text
    if code is not None:
        assert body["code"] == code, body
    return dict(body)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("stack")
    local = LocalStack(data_dir, free_port(), log_to_files=True, env_overrides=TEST_ENV)
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def browser_frontend_port(stack: LocalStack) -> int:
    """The port of the allowed origin the browser tests serve their page from.

    A fixture, not an import: pytest loads this file as ``conftest`` and a test's
    ``from tests.conftest import ...`` loads it again, which would pick another port.
    """
    assert BROWSER_FRONTEND_ORIGIN in stack.env["ALLOWED_ORIGINS"].split(",")
    return BROWSER_FRONTEND_PORT


@pytest.fixture(scope="session")
def db(stack: LocalStack) -> Iterator[Database]:
    """A direct handle on the stack's database, for arranging and checking stored state."""
    kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])
    database = Database(lambda: pg8000.dbapi.connect(**kwargs), pool_size=2)
    yield database
    database.close()


@pytest.fixture(scope="session")
def model(stack: LocalStack) -> StandinControl:
    """The Gemini stand-in's control API: scripts answers, records the requests it got."""
    assert stack.gemini_standin_url is not None
    return StandinControl(stack.gemini_standin_url)


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[StandinServer, str]]:
    """A Gemini stand-in of the module's own, outside the stack (tests of the stand-in and of
    google-genai talking to it), and its base URL."""
    server, base_url = start_standin(port=0)
    yield server, base_url
    server.stop()


@pytest.fixture
def control(standin: tuple[StandinServer, str]) -> Iterator[StandinControl]:
    """The module's own stand-in (:func:`standin`) reset for one test, which must leave it
    with no unexpected error."""
    control = StandinControl(standin[1])
    control.reset()
    yield control
    assert control.health()["unexpected_errors"] == 0


def unique(label: str) -> str:
    """A label no other test uses, to script and find one test's own model requests."""
    return f"{label}-{uuid.uuid4().hex[:10]}"


def wait_for(condition: Any, timeout: float = 20.0) -> Any:
    """Poll ``condition`` until it returns something truthy (and return it), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def anonymous(stack: LocalStack) -> ApiClient:
    return ApiClient(stack.base_url)


@pytest.fixture
def make_user(stack: LocalStack) -> Any:
    """A factory of clients, each a brand-new user with a valid token."""

    def make(**claims: Any) -> ApiClient:
        user_id = "user_" + uuid.uuid4().hex[:20]
        token = stack.signer.token(user_id, extra_claims=claims)
        return ApiClient(stack.base_url, token, user_id)

    return make


@pytest.fixture
def alice(make_user: Any) -> ApiClient:
    return make_user(email="alice@example.com", first_name="Alice")


@pytest.fixture
def bob(make_user: Any) -> ApiClient:
    return make_user(email="bob@example.com", first_name="Bob")


def store_history(db: Database, chat_id: str, count: int, tokens_each: int = 10) -> None:
    """``count`` alternating user/assistant messages "message 0".., as earlier turns store them."""
    with db.transaction() as tx:
        tx.execute(
            "UPDATE chats SET message_count = :n WHERE id = :id", n=count, id=uuid.UUID(chat_id)
        )
        for position in range(count):
            text = f"message {position}"
            tx.execute(
                "INSERT INTO messages (id, chat_id, position, role, content, parts, token_count) "
                "VALUES (:id, :chat, :pos, :role, :text, CAST(:parts AS jsonb), :tokens)",
                id=uuid.uuid4(),
                chat=uuid.UUID(chat_id),
                pos=position,
                role="user" if position % 2 == 0 else "assistant",
                text=text,
                parts=[{"type": "text", "text": text}],
                tokens=tokens_each,
            )


def read_logs(stack: LocalStack, function: str) -> list[dict[str, Any]]:
    """Every JSON log line a function wrote so far."""
    assert stack.log_dir is not None
    lines = (stack.log_dir / f"{function}.log").read_text().splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


REPO_ROOT = Path(__file__).resolve().parent.parent


# --- uploads -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def storage_client(stack: LocalStack) -> Any:
    """A google-cloud-storage client on the stack's emulator, for arranging and checking objects."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="raven-local",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": stack.storage_url},
    )


@pytest.fixture(scope="session")
def media_store(stack: LocalStack, storage_client: Any) -> MediaStorage:
    """The uploads bucket as the functions see it (same settings), on the test's client."""
    return MediaStorage.from_settings(
        load_settings(stack.env), client_factory=lambda: storage_client
    )


def upload_file(
    client: ApiClient,
    data: bytes,
    filename: str = "photo.png",
    content_type: str = "image/png",
    *,
    bind_size: bool = False,
) -> dict[str, Any]:
    """Upload as the existing frontend does: ask for a URL, then PUT the bytes with only
    ``Content-Type`` (``fetch(url, {method: 'PUT', body: file, headers: {'Content-Type':
    file.type}})``). With ``bind_size``, the opt-in flow: send ``size`` and ``bindSize`` and
    PUT with every header the answer lists."""
    body: dict[str, Any] = {"filename": filename, "contentType": content_type}
    if bind_size:
        body.update(size=len(data), bindSize=True)
    response = client.post("/api/upload-url", json=body)
    assert response.status_code == 200, response.text
    answer = dict(response.json())
    headers = answer["headers"] if bind_size else {"Content-Type": content_type}
    put = requests.put(
        answer["url"], data=data, headers={**headers, "Origin": FRONTEND_ORIGIN}, timeout=30
    )
    assert put.status_code == 200, put.text
    return answer


@contextmanager
def function_process(stack: LocalStack, name: str, **env: str) -> Iterator[str]:
    """One more instance of a function, with settings overridden; yields its base URL."""
    from dev.stack import free_port as pick_port

    port = pick_port()
    assert stack.log_dir is not None
    log = (stack.log_dir / f"{name}-{port}.log").open("ab")
    process = subprocess.Popen(
        function_command(name, port),
        env={**stack.env, "PORT": str(port), **env},
        stdout=log,
        stderr=log,
        start_new_session=True,  # its own process group: gunicorn's workers die with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"{name} exited during start"
            try:
                requests.get(base + "/", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()  # gunicorn stops gracefully: seconds, more on a busy machine
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def svix(stack: LocalStack) -> Svix:
    """Delivers signed Clerk events to the stack's /clerk-webhook."""
    return Svix(f"{stack.base_url}/clerk-webhook", stack.env["CLERK_WEBHOOK_SECRET"])
