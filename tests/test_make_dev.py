"""`make dev` as a person sees it: `python -m dev.stack` in a terminal, started, killed with
``kill -9``, started again, stopped with Ctrl-C.

Each stack here has a data folder and a router port of its own (the other ports are picked
free by the stack), so it runs beside the suite's stack and other checkouts' stacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from dev.bundle import function_names
from dev.stack import free_port
from dev.stack_state import StackState, repair_postgres
from tests.conftest import REPO_ROOT, ApiClient, wait_for

START_TIMEOUT = 240.0  # a first start initialises PostgreSQL; this machine may be busy
BANNER_FIRST_LINE = "Raven backend is ready at"
BANNER_LAST_LINE = "Below: one line per request, chat turn and task, from every process."
# Every line a process writes: time, process name, level (blank for a line that is not a log
# entry), message.
PROCESS_NAMES = {"stack", "tasks", *function_names()}
LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<name>\S+) +(?:(?:DEBUG|INFO|WARN|ERROR) +)?\S")


class Terminal:
    """`python -m dev.stack` with its output collected as a terminal would show it."""

    def __init__(self, data_dir: Path, port: int) -> None:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(data_dir),
            "ENVIRONMENT": "development",  # as .env.example has it for make dev
            "CHAT_STREAM_FORMAT": "ndjson",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dev.stack", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> int:
        """The index of the first line containing ``text``, once it is printed."""

        def found() -> int | None:
            assert self.process.poll() is None or any(text in line for line in self.lines), (
                "the stack exited:\n" + "\n".join(self.lines)
            )
            return next((i + 1 for i, line in enumerate(self.lines) if text in line), None)

        return int(wait_for(found, timeout=timeout)) - 1

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def running_groups(record: dict) -> list[str]:
    """Which processes of a stack's record still run (their process groups)."""
    alive = []
    for name, child in record["processes"].items():
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(process.pid) == child["pid"] and process.create_time() >= (
                    child["started"] - 1
                ):
                    alive.append(name)
                    break
    return alive


def postgres_running(data_dir: Path) -> bool:
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(data_dir / "pg") in (
            process.info["cmdline"] or []
        ):
            return True
    return False


@contextlib.contextmanager
def cleaned_up(data_dir: Path) -> Iterator[None]:
    """Whatever happens in the test, nothing of its stacks is left running."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            state = StackState(data_dir)
            state.acquire("cleanup")  # stops what a dead stack left
            state.release()
        for process in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if process.info["name"] == "postgres" and str(data_dir) in " ".join(
                    process.info["cmdline"] or []
                ):
                    process.terminate()


def check_reads_like_a_product(lines: list[str], banner: int) -> None:
    """No JSON, no traceback, no health poll; every line named; the banner last."""
    text = "\n".join(lines)
    assert not [line for line in lines if line.lstrip().startswith("{")], text
    for noise in ("Traceback", "healthz HTTP", "__healthz", "PostmasterInfo", "Warning:"):
        assert noise not in text, (noise, text)
    before = [line for line in lines[:banner] if line.strip()]
    assert before, text
    for line in before:
        match = LINE.match(line)
        assert match and match["name"] == "stack", line
    end = next(i for i, line in enumerate(lines) if BANNER_LAST_LINE in line)
    banner_text = "\n".join(lines[banner : end + 1])
    for expected in ("/dev/openapi.json", "docs/api.md", "NDJSON", "curl", "/dev/token"):
        assert expected in banner_text, banner_text
    for line in lines[end + 1 :]:  # after the banner: only the processes' own lines
        if line.strip():
            match = LINE.match(line)
            assert match and match["name"] in PROCESS_NAMES, line


@pytest.mark.slow
def test_make_dev_reads_well_and_starts_again_after_kill_9(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://localhost:{port}"
    with cleaned_up(tmp_path):
        # --- first start: what a new user sees -------------------------------------------
        first = Terminal(tmp_path, port)
        banner = first.wait_for_line(BANNER_FIRST_LINE)
        first.wait_for_line(BANNER_LAST_LINE)
        token = requests.post(f"{base}/dev/token", json={"sub": "user_kill9"}, timeout=10)
        client = ApiClient(base, token.json()["token"])
        client.create_chat("survives a kill -9")
        first.wait_for_line("POST /api/chats/create 200", timeout=30)
        check_reads_like_a_product(first.lines, banner)
        assert "creating the database" in "\n".join(first.lines[:banner])

        # --- kill -9: the stack dies, its children do not --------------------------------
        record = json.loads((tmp_path / "stack.json").read_text())
        assert set(record["processes"]) == {"tasks_emulator", *function_names()}
        first.process.send_signal(signal.SIGKILL)
        first.finish()
        assert running_groups(record)  # what `make dev` after a kill -9 must deal with

        # --- started again: it cleans up after the dead one and comes up -----------------
        second = Terminal(tmp_path, port)
        banner = second.wait_for_line(BANNER_FIRST_LINE)
        second.wait_for_line(BANNER_LAST_LINE)
        assert running_groups(record) == []
        warning = next(line for line in second.lines[:banner] if "ended without stopping" in line)
        assert f"pid {record['pid']}" in warning
        token = requests.post(f"{base}/dev/token", json={"sub": "user_kill9"}, timeout=10)
        client = ApiClient(base, token.json()["token"])
        titles = [chat["title"] for chat in client.get("/api/chats").json()]
        assert titles == ["survives a kill -9"]
        second.wait_for_line("GET /api/chats 200", timeout=30)
        check_reads_like_a_product(second.lines, banner)

        # --- `make dev` again while it runs: told why it cannot start ---------------------
        same_folder = Terminal(tmp_path, free_port())
        assert same_folder.finish() == 1
        assert "Another local stack is running on" in "\n".join(same_folder.lines)
        same_port = Terminal(tmp_path / "other", port)
        assert same_port.finish() == 1
        assert f"Port {port} is in use" in "\n".join(same_port.lines)

        # --- Ctrl-C: everything stops, nothing is left ----------------------------------
        running = json.loads((tmp_path / "stack.json").read_text())
        second.process.send_signal(signal.SIGINT)
        assert second.finish(timeout=120) == 0
        assert "stopped; the data stays in" in second.lines[-1]
        assert "Traceback" not in "\n".join(second.lines)
        assert running_groups(running) == []
        assert not postgres_running(tmp_path)
        assert not (tmp_path / "stack.json").exists()


def test_what_a_dead_postgres_leaves_is_repaired(tmp_path: Path) -> None:
    """PostgreSQL killed with the stack: its pid may now be another process's, and pgserver's
    list of the server's users names a dead one (which would keep the server from stopping)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n")  # a python process
    (pgdata / ".handle_pids.json").write_text(json.dumps([dead.pid, os.getpid()]))
    repair_postgres(pgdata)
    assert not (pgdata / "postmaster.pid").exists()
    assert json.loads((pgdata / ".handle_pids.json").read_text()) == [os.getpid()]
