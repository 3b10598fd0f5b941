"""More than one gunicorn worker process per instance (WORKERS): nothing made before the fork
is shared after it.

functions-framework imports the function in gunicorn's master and forks WORKERS processes.
A database pool, the model's event loop thread and its HTTP client must each be the worker's
own: a connection used by two processes interleaves their messages on one session.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pg8000.dbapi
import requests

from dev.stack import LocalStack
from shared.db import Database, connect_kwargs_from_url
from tests.conftest import ApiClient, dicts, function_process, stream_events, unique, wait_for


def backend_pid(database: Database) -> int:
    row = database.fetch_one("SELECT pg_backend_pid() AS pid")
    assert row is not None
    return int(row["pid"])


def test_a_forked_child_opens_its_own_connections(stack: LocalStack) -> None:
    kwargs = connect_kwargs_from_url(stack.env["DATABASE_URL"])
    database = Database(lambda: pg8000.dbapi.connect(**kwargs), pool_size=1)
    try:
        parent_session = backend_pid(database)  # one pooled connection, idle at the fork
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # the child: report its session, or the error, and leave at once
            try:
                report = str(backend_pid(database))
            except BaseException as error:  # noqa: BLE001 - reported to the parent
                report = f"error {error!r}"
            os.write(write_end, report.encode())
            os._exit(0)
        os.close(write_end)
        _, status = os.waitpid(child, 0)
        answer = os.read(read_end, 200).decode()
        os.close(read_end)
        assert os.WEXITSTATUS(status) == 0
        assert answer.isdigit(), answer
        assert int(answer) != parent_session  # a session of its own
        # The child neither used nor closed the parent's connection: it still works, and is
        # still the same session.
        assert backend_pid(database) == parent_session
    finally:
        database.close()


def test_unix_socket_and_sslmode_disable_skip_tls() -> None:
    unix = connect_kwargs_from_url("postgresql://raven@/raven?host=/run/pg")
    assert unix["unix_sock"] == "/run/pg/.s.PGSQL.5432" and unix["ssl_context"] is False
    tcp = connect_kwargs_from_url("postgresql://raven:pw@db.internal:5433/raven")
    assert "ssl_context" not in tcp  # pg8000's default: TLS when the server offers it
    disabled = connect_kwargs_from_url("postgresql://raven@db.internal/raven?sslmode=disable")
    assert disabled["ssl_context"] is False


def worker_pids(base_url: str) -> list[int]:
    """The gunicorn workers of the instance listening on base_url's port."""
    port = int(base_url.rsplit(":", 1)[1])
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            inode = fields[9]
    assert inode is not None
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            holders.append(int(proc.name))
    # The master holds the listening socket too; the workers are its children.
    parents = {pid: _parent(pid) for pid in holders}
    return [pid for pid, parent in parents.items() if parent in parents]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_two_workers_serve_concurrent_turns_and_lists(
    stack: LocalStack, make_user: Any, model: Any
) -> None:
    with (
        function_process(stack, "chat_stream", WORKERS="2") as stream_base,
        function_process(stack, "chats_crud", WORKERS="2") as crud_base,
    ):
        # Ready once one worker answers; gunicorn may still be forking the second.
        wait_for(lambda: len(worker_pids(stream_base)) == 2)
        wait_for(lambda: len(worker_pids(crud_base)) == 2)
        user = make_user()
        marker = unique("workers")
        for index in range(8):
            model.script(match=f"{marker} {index}", reply=f"answer {index}")

        def turn(index: int) -> list[dict[str, Any]]:
            # A session per thread: requests' Session is not thread-safe.
            client = ApiClient(stream_base, user.token, user.user_id)
            with client.send(f"{marker} {index}") as response:
                assert response.status_code == 200, response.text
                return dicts(stream_events(response))

        barrier = threading.Barrier(8)

        def turn_together(index: int) -> list[dict[str, Any]]:
            barrier.wait(timeout=30)
            return turn(index)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(turn_together, range(8)))
        for index, events in enumerate(results):
            assert events[-1]["type"] == "done", events
            text = "".join(e["content"] for e in events if e["type"] == "chunk")
            assert text == f"answer {index}"
        chat_ids = {events[0]["chat_id"] for events in results}
        assert len(chat_ids) == 8

        def listing(_: int) -> set[str]:
            response = requests.get(
                crud_base + "/api/chats",
                headers={"Authorization": f"Bearer {user.token}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            return {chat["chatId"] for chat in response.json()}

        with ThreadPoolExecutor(8) as pool:
            for listed in pool.map(listing, range(16)):
                assert listed == chat_ids
