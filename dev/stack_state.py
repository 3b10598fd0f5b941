"""What a running local stack leaves in its data folder, so the next one starts cleanly.

``make dev`` twice in a row, or after the stack was killed (``kill -9``, a closed laptop, an
out-of-memory kill), must start without the user cleaning anything up. A stack that dies
without stopping leaves behind:

* its child processes (each function's gunicorn, the Cloud Tasks emulator): they run in
  sessions of their own (so that Ctrl-C reaches the stack only, which stops them in order),
  so nothing else stops them;
* the embedded PostgreSQL, started by ``pg_ctl`` in its own session, still running on the
  data folder, and pgserver's list of the processes using it (``.handle_pids.json``) naming
  a process that is gone, which would keep the next stack from ever stopping the server;
* or, if PostgreSQL died too, a ``postmaster.pid`` whose pid may since name another process.

:class:`StackState` holds a lock on ``<data>/stack.lock`` for the stack's life (the kernel
releases it however the process ends) and records every child in ``<data>/stack.json``.
The next stack that gets the lock and finds the record stops what is left of the last one.
A stack that finds the lock held refuses to start and names the one that holds it.

Local use only; nothing here is deployed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import psutil  # pgserver's own dependency, so always installed with the local stack

logger = logging.getLogger("raven.stack")


class StackError(RuntimeError):
    """The stack cannot start; the message says why and what to do."""


def _group_members(pgid: int, started: float | None) -> list[psutil.Process]:
    """The processes of group ``pgid`` (a child started in its own session, and its own
    children), if it is still the group recorded: pids are reused, so only processes
    started since the group's leader was count."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) != pgid:
                continue
            if started is not None and process.create_time() < started - 1.0:
                continue
            if process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (psutil.Error, OSError):
            continue
    return members


def stop_processes(members: list[psutil.Process], timeout: float) -> None:
    """SIGTERM each process, then SIGKILL what is left after ``timeout``."""
    for process in members:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(members, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def port_holder(port: int) -> str | None:
    """Who listens on ``port`` (``"pid 123 (python -m dev.stack)"``), or None if it is free."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
            return None
        except OSError:
            pass
    with contextlib.suppress(psutil.Error, OSError):
        for connection in psutil.net_connections("tcp"):
            listening = connection.status == psutil.CONN_LISTEN
            address = connection.laddr  # (ip, port), or () for a socket with none
            if listening and len(address) == 2 and address[1] == port and connection.pid:
                command = " ".join(psutil.Process(connection.pid).cmdline()[:4])
                return f"pid {connection.pid} ({command})"
    return "another process"


class StackState:
    """The lock and the record of one stack's processes in its data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock_path = data_dir / "stack.lock"
        self.record_path = data_dir / "stack.json"
        self._lock: Any = None
        self._record: dict[str, Any] = {}

    def acquire(self, base_url: str) -> None:
        """Take the data folder for this stack, stopping what a dead one left behind.

        Raises:
            StackError: another stack is running on this data folder.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            other = self._read_record()
            where = f" (pid {other.get('pid')}, {other.get('url')})" if other else ""
            raise StackError(
                f"Another local stack is running on {self.data_dir}{where}. Stop it first "
                "(Ctrl-C in its terminal), or give this one another data folder and port: "
                "python -m dev.stack --data-dir <dir> --port <port>"
            ) from None
        self._lock = lock
        self._stop_leftovers()
        self._record = {"pid": os.getpid(), "url": base_url, "processes": {}}
        self._write_record()

    def add(self, name: str, pid: int) -> None:
        """Record a child process (started with ``start_new_session=True``, so its pid is
        also its process group's id)."""
        with contextlib.suppress(psutil.Error):
            started = psutil.Process(pid).create_time()
            self._record["processes"][name] = {"pid": pid, "started": started}
            self._write_record()

    def release(self) -> None:
        """The stack stopped cleanly: nothing is left to clean up."""
        if self._lock is None:
            return  # never acquired: the record, if any, is another stack's
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()
        self._lock.close()  # closing the file releases the lock
        self._lock = None

    def _read_record(self) -> dict[str, Any]:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _write_record(self) -> None:
        temporary = self.record_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._record, indent=2))
        temporary.replace(self.record_path)

    def _stop_leftovers(self) -> None:
        """Stop the processes of a stack that ended without stopping them."""
        previous = self._read_record()
        processes = previous.get("processes")
        if not isinstance(processes, dict):
            return
        # Each child led its own process group; its leader (gunicorn's arbiter) may be gone
        # while its workers run on.
        groups = {
            name: _group_members(child["pid"], child.get("started"))
            for name, child in processes.items()
            if isinstance(child, dict) and isinstance(child.get("pid"), int)
        }
        stopped = [name for name, members in groups.items() if members]
        stop_processes([process for members in groups.values() for process in members], 5.0)
        if stopped:
            logger.warning(
                "the last stack (pid %s) ended without stopping its processes: "
                "stopped what was left of them (%s)",
                previous.get("pid"),
                ", ".join(stopped),
            )


def repair_postgres(pgdata: Path) -> None:
    """Undo what a stack killed while PostgreSQL ran leaves in its data folder.

    Only called with the data folder's lock held, so no live stack uses the server.
    """
    handles = pgdata / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError):
        pids = json.loads(handles.read_text())
        alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
        if alive != pids:
            # pgserver stops the server when the last process in this list lets go of it: a
            # dead one left in it would keep it running after every later stack stopped.
            handles.write_text(json.dumps(alive))
    postmaster = pgdata / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(postmaster.read_text().splitlines()[0])
        try:
            name = psutil.Process(pid).name()
        except psutil.NoSuchProcess:
            return  # PostgreSQL sees a dead pid as stale itself
        if name not in ("postgres", "postmaster"):
            # PostgreSQL died with the stack and its pid now names another process:
            # pgserver would take that one for the server and never start it.
            logger.info("removing a stale postmaster.pid (pid %s is now %s)", pid, name)
            postmaster.unlink()
