"""The local stack and the HTTP plumbing every function shares: health, dev tokens,
persistence, CORS, logs, and dependency failures."""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from dev.stack import LocalStack
from shared.db import Database
from tests.conftest import (
    FRONTEND_ORIGIN,
    ApiClient,
    assert_error,
    function_process,
    read_logs,
    wait_for,
)


def test_healthz_reports_every_part(stack: LocalStack) -> None:
    response = requests.get(f"{stack.base_url}/dev/healthz", timeout=10)
    assert response.status_code == 200
    parts = response.json()["parts"]
    expected = ["postgres", "tasks_emulator", "storage", *stack.function_urls]
    assert parts == {name: True for name in expected}


def test_dev_token_works_with_the_functions(stack: LocalStack) -> None:
    response = requests.post(
        f"{stack.base_url}/dev/token",
        json={"sub": "user_devtoken", "email": "dev@example.com", "first_name": "Dev"},
        timeout=10,
    )
    assert response.status_code == 200
    client = ApiClient(stack.base_url, response.json()["token"])
    assert client.create_chat("via dev token")["userId"] == "user_devtoken"


def test_dev_token_validates_its_body(stack: LocalStack) -> None:
    assert_error(requests.post(f"{stack.base_url}/dev/token", json={}, timeout=10), 422)
    assert_error(requests.post(f"{stack.base_url}/dev/token", data="{", timeout=10), 400)
    assert_error(requests.post(f"{stack.base_url}/dev/token", json={"sub": 5}, timeout=10), 422)


def test_jwks_is_served_for_the_functions(stack: LocalStack) -> None:
    keys = requests.get(f"{stack.base_url}/dev/.well-known/jwks.json", timeout=10).json()["keys"]
    assert [key["kid"] for key in keys] == [stack.signer.kid]
    assert keys[0]["kty"] == "RSA" and "d" not in keys[0]  # public half only


def test_cors_preflight_and_headers(stack: LocalStack, alice: ApiClient) -> None:
    preflight = requests.options(
        f"{stack.base_url}/api/chats/create",
        headers={
            "Origin": FRONTEND_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]

    refused = requests.options(
        f"{stack.base_url}/api/chats",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
        timeout=10,
    )
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers

    response = alice.get("/api/chats")
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    assert "X-Next-Cursor" in response.headers["Access-Control-Expose-Headers"]
    error = ApiClient(stack.base_url).get("/api/chats")
    assert error.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN  # errors readable too


def test_logs_are_structured_and_keep_secrets_out(stack: LocalStack, alice: ApiClient) -> None:
    trace_id = uuid.uuid4().hex
    secret_title = "my very private title " + uuid.uuid4().hex
    response = alice.post(
        "/api/chats/create",
        json={"title": secret_title},
        headers={"traceparent": f"00-{trace_id}-{'1' * 16}-01"},
    )
    assert response.status_code == 200
    time.sleep(0.2)
    entries = read_logs(stack, "chats_crud")
    mine = [e for e in entries if trace_id in e.get("logging.googleapis.com/trace", "")]
    mine = [e for e in mine if "httpRequest" in e]  # its access line (not "JWKS fetched")
    assert len(mine) == 1
    entry = mine[0]
    assert entry["severity"] == "INFO"
    assert entry["httpRequest"]["status"] == 200
    assert entry["httpRequest"]["requestMethod"] == "POST"
    assert entry["httpRequest"]["latency"].endswith("s")
    assert entry["user"] == alice.user_id
    raw = (stack.log_dir / "chats_crud.log").read_text()  # type: ignore[operator]
    assert alice.token is not None and alice.token not in raw
    assert alice.token.split(".")[2] not in raw
    assert secret_title not in raw


def test_a_function_logs_readable_lines_in_development(stack: LocalStack) -> None:
    """ENVIRONMENT=development (LOG_FORMAT unset): one line a person reads per entry."""
    with function_process(stack, "chats_crud", ENVIRONMENT="development", LOG_FORMAT="") as base:
        assert requests.get(f"{base}/api/chats", timeout=10).status_code == 401
        assert stack.log_dir is not None
        log = stack.log_dir / f"chats_crud-{base.rsplit(':', 1)[1]}.log"
        text = wait_for(lambda: "GET /api/chats 401" in log.read_text() and log.read_text())
    line = next(line for line in text.splitlines() if "GET /api/chats 401" in line)
    assert re.fullmatch(r"\d\d:\d\d:\d\d chats_crud +INFO +GET /api/chats 401 · \d+ ms", line)
    assert "{" not in text  # no JSON


def test_gunicorn_s_own_errors_are_log_entries(stack: LocalStack) -> None:
    """What gunicorn itself logs (a worker killed, out of memory) is a JSON entry like ours,
    not a "--- Logging error ---" traceback."""
    with function_process(stack, "chats_crud") as base:
        port = base.rsplit(":", 1)[1]
        arbiter = next(
            process
            for process in psutil.process_iter(["cmdline"])
            if "functions_framework" in (process.info["cmdline"] or [])
            and port in process.info["cmdline"]
        )
        worker = arbiter.children()[0]
        worker.kill()
        assert stack.log_dir is not None
        log = stack.log_dir / f"chats_crud-{port}.log"
        text = wait_for(lambda: "was sent SIGKILL" in log.read_text() and log.read_text())
    assert "Logging error" not in text and "Traceback" not in text
    entry = next(json.loads(line) for line in text.splitlines() if "was sent SIGKILL" in line)
    assert entry["severity"] == "ERROR" and entry["logger"] == "gunicorn.error"
    assert entry["function"] == "chats_crud"


def test_cloud_trace_header_is_understood(stack: LocalStack, alice: ApiClient) -> None:
    trace_id = uuid.uuid4().hex
    alice.get("/api/chats", headers={"X-Cloud-Trace-Context": f"{trace_id}/123;o=1"})
    time.sleep(0.2)
    entries = read_logs(stack, "chats_crud")
    assert any(trace_id in e.get("logging.googleapis.com/trace", "") for e in entries)


def test_database_down_is_503_with_retry_after(stack: LocalStack, tmp_path: Path) -> None:
    broken_url = f"postgresql://postgres@/postgres?host={tmp_path}"
    with function_process(stack, "chats_crud", DATABASE_URL=broken_url) as base:
        client = ApiClient(base, stack.signer.token("user_dbdown"))
        response = client.get("/api/chats")
        assert_error(response, 503, "database_unavailable")
        assert int(response.headers["Retry-After"]) > 0


def test_broken_pooled_connections_are_replaced_unnoticed(
    stack: LocalStack, alice: ApiClient, db: Database
) -> None:
    alice.create_chat("before the outage")
    # Fill the pool: concurrent requests leave several idle connections behind.
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: alice.get("/api/chats").status_code, range(16)))
    assert statuses == [200] * 16
    # Cloud SQL maintenance or an idle timeout: the server ends every client session.
    terminated = db.fetch_all(
        "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    assert terminated and all(row["ok"] for row in terminated)
    for _ in range(3):  # reads and writes, each on a pool of dead connections
        assert alice.get("/api/chats").status_code == 200
        assert alice.post("/api/chats/create", json={"title": "after"}).status_code == 200
    titles = [chat["title"] for chat in alice.get("/api/chats").json()]
    assert titles.count("after") == 3
