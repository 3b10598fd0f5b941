"""Work after the response (shared.background): run in order in the request's context,
failures logged, nothing lost when the process exits or is told to drain; and chat_stream's
summary and title tasks asked for that way, after the stream has ended."""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared.background import Background
from tests.conftest import REPO_ROOT, ApiClient, function_process, stream_events, unique, wait_for

TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="none")


def test_jobs_run_in_order_in_the_submitters_context() -> None:
    worker = Background("test-order", idle_seconds=0.05)
    seen: list[tuple[int, str]] = []
    finished = threading.Event()

    def note(index: int) -> None:
        seen.append((index, TRACE.get()))

    for index in range(20):
        TRACE.set(f"request-{index}")
        worker.submit(functools.partial(note, index))
    worker.submit(finished.set)
    assert finished.wait(10)
    assert seen == [(index, f"request-{index}") for index in range(20)]
    wait_for(lambda: worker.pending() == 0)


def test_a_failing_job_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    worker = Background("test-failure", idle_seconds=0.05)
    finished = threading.Event()

    def fail() -> None:
        raise RuntimeError("queue unreachable")

    with caplog.at_level(logging.ERROR, logger="raven.background"):
        worker.submit(fail)
        worker.submit(finished.set)
        assert finished.wait(10)
    [record] = [r for r in caplog.records if r.message == "background job failed"]
    assert record.exc_info is not None and "queue unreachable" in str(record.exc_info[1])


def test_a_drained_worker_ends_without_its_idle_wait() -> None:
    worker = Background("test-drain", idle_seconds=3600)
    ran = threading.Event()

    def hold() -> None:
        ran.wait()  # holds the thread until released

    worker.submit(hold)
    thread = next(t for t in threading.enumerate() if t.name == "test-drain")
    worker.drain()
    ran.set()
    thread.join(timeout=30)
    assert not thread.is_alive()  # an hour of idle wait was not waited for
    # A job handed over after the drain still runs (a turn ending during the shutdown).
    late = threading.Event()
    worker.submit(late.set)
    assert late.wait(10)


def test_held_jobs_wait_for_the_response_to_end() -> None:
    worker = Background("test-held", idle_seconds=0.05)
    held = worker.held()
    ran: list[str] = []
    held.submit(lambda: ran.append("title"))
    assert worker.pending() == 0 and ran == []  # the response has not ended
    held.release()
    wait_for(lambda: ran == ["title"])
    # A turn that outlived its client (a resumable one) ends after its response: at once.
    late = threading.Event()
    held.submit(late.set)
    assert late.wait(10)


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_no_job_is_lost_when_the_process_exits(tmp_path: Path, how: str) -> None:
    """The main thread returns (gunicorn's worker after its requests ended) right after
    handing over a slow job, or SIGTERM drains the worker: the job still completes."""
    marker = tmp_path / "done"
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from shared.background import Background

        worker = Background("after-turn", idle_seconds=3600)
        signal.signal(signal.SIGTERM, lambda *_: worker.drain())

        def slow_job():
            time.sleep(0.5)
            open({str(marker)!r}, "w").write("created")

        worker.submit(slow_job)
        if {how!r} == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=60)
    assert marker.read_text() == "created"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_chat_stream_asks_for_the_title_after_the_stream_and_logs_a_failure(
    stack: LocalStack, alice: ApiClient, model: StandinControl
) -> None:
    """Cloud Tasks unreachable: the stream still ends with done (it never waited for the
    task), and the failure is logged with the turn's chat."""
    with function_process(
        stack, "chat_stream", TASKS_EMULATOR_HOST=f"127.0.0.1:{closed_port()}"
    ) as base:
        question = unique("a title nobody can queue")
        model.script(match=question, reply="Fine.")
        client = ApiClient(base, alice.token, alice.user_id)
        events = stream_events(client.send(question))
        assert events[-1]["type"] == "done"
        chat_id = events[0]["chat_id"]
        assert stack.log_dir is not None
        port = base.rsplit(":", 1)[1]
        log = stack.log_dir / f"chat_stream-{port}.log"

        def failure_logged() -> bool:
            for line in log.read_text().splitlines():
                if line.startswith("{"):
                    entry = json.loads(line)
                    if entry.get("message") == "could not ask for a title":
                        return bool(entry.get("chat") == chat_id)
            return False

        wait_for(failure_logged, timeout=60)
