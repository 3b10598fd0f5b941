"""The whole backend on one machine: ``make dev`` (``python -m dev.stack``).

Starts, with no account or cloud needed:

1. PostgreSQL 16 from the ``pgserver`` wheel, its data in ``.data/pg`` (kept across restarts),
   and applies the migrations (``alembic upgrade head``);
2. local stand-ins for what the cloud provides: the metadata server (the functions' identity,
   as on Cloud Run), Gemini (unless GEMINI_API_KEY is set: then the real Gemini API), the
   Cloud Tasks emulator with the summaries queue (from its own virtualenv, .venv-tasks) and
   Cloud Storage: ``gcp-storage-emulator`` with the uploads bucket, data in ``.data/storage``,
   which browsers reach through the router (:mod:`dev.storage_emulator`);
3. each function as it runs in the cloud: ``functions-framework`` with its own entry point, in
   its own process, on its own port;
4. the router (:mod:`dev.router`) on http://localhost:8000, which serves every path of the
   contract plus the local-only ``/dev`` endpoints.

Configuration: ``.env.example``, then ``.env``, then the process environment, then what the
stack itself provides (database URL, JWKS URL, issuer). Ctrl-C stops everything.

What it prints is for a person: a few lines while it starts, then the banner (the URLs, the
docs, what to try), then one readable line per log entry of every process, each named
(:mod:`dev.logs`). The functions write Cloud Logging JSON as deployed; the stack reads it,
counts it for ``/dev/metrics`` and prints it readably. Third-party chatter (pgserver, alembic,
the emulators' start-up, the router's own access log) is left out, and the stack checks its
functions are up without HTTP requests, so no health poll is ever logged.

Started again after being killed, it stops what the dead one left running
(:mod:`dev.stack_state`); started while another one runs on the same data folder or port, it
says so and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from dev.bundle import REPO_ROOT, function_names
from dev.logs import DevMetrics, LogFiles, LogRelay
from dev.router import JsonErrorRequestHandler, Router, StorageUpstream
from dev.stack_state import StackError, StackState, port_holder, repair_postgres
from dev.storage_front import SignatureFront
from dev.tokens import LocalSigner
from shared.log import configure_logging

logger = logging.getLogger("raven.stack")

FUNCTION_THREADS = "16"  # like Cloud Run's concurrency: one open SSE stream holds one thread
STANDIN_CHUNK_SECONDS = 0.08  # the Gemini stand-in's pace under `make dev`
TASKS_MAX_RETRIES = 20  # the emulator retries at once, with no backoff: keep it bounded
STOP_SECONDS = 15.0  # how long the processes get to stop before they are killed
# What the Cloud Tasks emulator prints on every start (the rest of its output is its errors).
TASKS_EMULATOR_CHATTER = ("Starting Cloud Tasks Emulator",)


def function_command(name: str, port: int, source: Path | str | None = None) -> list[str]:
    """How a function runs, locally as on Cloud Run: functions-framework with its entry point.

    Args:
        name: the function's folder, which is also its entry point's name.
        port: the port to listen on (0 lets the system pick; the process then cannot be
            reached, which suits a start-up check).
        source: its ``main.py``; by default the one under ``functions/<name>/``.
    """
    main = source if source is not None else REPO_ROOT / "functions" / name / "main.py"
    return [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        name,
        "--source",
        str(main),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; no shell expansion."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def start_postgres(data_dir: Path) -> Any:
    """Start (or reuse) the embedded PostgreSQL whose data lives in ``data_dir``."""
    # pgserver logs each command it runs and its output at INFO, and platformdirs warns
    # when XDG_RUNTIME_DIR is unset (containers): neither is news to whoever runs the stack.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    if (data_dir / "PG_VERSION").exists():
        repair_postgres(data_dir)
    else:
        logger.info("creating the database in %s (first run)", data_dir)
    # cleanup_mode="stop": the server stops when this process exits; the data stays.
    return pgserver.get_server(data_dir, cleanup_mode="stop")


def stop_postgres(server: Any) -> None:
    """Release the stack's handle on its PostgreSQL, and stop the server if it was the last.

    pgserver stops only the server process it started itself: one restarted under the
    running stack (after a crash, or by an operator's ``pg_ctl restart``) has another pid and
    would outlive the stack. So whatever server runs on the data directory then is stopped.
    """
    from pgserver.utils import process_is_running

    server.cleanup()
    pgdata = Path(server.pgdata)
    holders = pgdata / ".handle_pids.json"
    if holders.exists() and holders.read_text().strip() not in ("", "[]"):
        return  # another process still uses the server: pgserver leaves it running too
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return  # no server running
    if process_is_running(pid):
        pg_ctl(server, "stop", "-m", "fast")


def pg_ctl(server: Any, *args: str) -> None:
    """Run pgserver's own pg_ctl on the server's data directory, as the server's user."""
    from pgserver._commands import POSTGRES_BIN_PATH

    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), "-w", *args],
        user=server.system_user,
        check=True,
        # Not pipes: a server started by pg_ctl inherits them and would hold them open.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )


def postgres_url(server: Any) -> str:
    """The unix-socket DATABASE_URL of a pgserver (libpq's ``?host=`` form)."""
    return f"postgresql://postgres@/postgres?host={server.pgdata}"


def migrate(env: dict[str, str]) -> None:
    """``alembic upgrade head``, saying which migrations it applied (its own log only if it
    fails)."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise StackError(f"the migrations failed:\n{result.stdout}{result.stderr}")
    # alembic logs "Running upgrade 0001 -> 0002, <message>" for each one it applies.
    applied = [
        line.split("->", 1)[1].split(",", 1)[0].strip()
        for line in (result.stdout + result.stderr).splitlines()
        if "Running upgrade" in line and "->" in line
    ]
    if applied:
        logger.info("applied migrations %s", ", ".join(applied))


def http_answers(url: str) -> bool:
    """Whether anything answers HTTP at ``url`` (any status counts: the process is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def tcp_answers(host_port: str) -> bool:
    """Whether something accepts connections at ``host:port``: a function's gunicorn is
    up (no request is sent, so nothing is logged: Cloud Run's default startup probe is
    a TCP one too)."""
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def postgres_answers(database_url: str) -> Callable[[], bool]:
    def check() -> bool:
        import pg8000.dbapi

        from shared.db import connect_kwargs_from_url

        try:
            connection = pg8000.dbapi.connect(timeout=2, **connect_kwargs_from_url(database_url))
        except Exception:  # noqa: BLE001 - any failure means "not up"
            return False
        connection.close()
        return True

    return check


class LocalStack:
    """The processes of the local backend, started in order and stopped together."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        log_to_files: bool = False,
        env_overrides: dict[str, str] | None = None,
    ) -> None:
        """
        Args:
            data_dir: where the database, the dev signing key and logs live.
            port: the router's port.
            log_to_files: write each function's logs to ``data_dir/logs/<name>.log`` instead
                of this terminal (the tests read them).
            env_overrides: settings that win over .env.example, .env and the environment.
        """
        self.data_dir = data_dir
        self.port = port
        self.base_url = f"http://localhost:{port}"
        self.log_dir = data_dir / "logs" if log_to_files else None
        self.env_overrides = dict(env_overrides or {})
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.function_urls: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.signer = LocalSigner(data_dir / "dev-signing-key.pem", issuer=f"{self.base_url}/dev")
        self._server: Any = None
        self._postgres: Any = None
        self._standins: list[Any] = []
        self.gemini_standin_url: str | None = None
        self.gemini_description = ""
        self.storage_url = ""
        self.metrics = DevMetrics()
        self.state = StackState(data_dir)
        # make dev: each process's output, printed readably (None: written to log files).
        self.relay: LogRelay | None = None if log_to_files else LogRelay(self.metrics)

    def environment(self, database_url: str) -> dict[str, str]:
        env = read_env_file(REPO_ROOT / ".env.example")
        env.update(read_env_file(REPO_ROOT / ".env"))
        env.update(os.environ)
        env.update(self.env_overrides)
        env.update(
            {
                "DATABASE_URL": env.get("DATABASE_URL") or database_url,
                "CLERK_JWKS_URL": f"http://127.0.0.1:{self.port}/dev/.well-known/jwks.json",
                "CLERK_ISSUER": f"{self.base_url}/dev",
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
                "THREADS": FUNCTION_THREADS,
                # JSON, whatever ENVIRONMENT says: the stack reads the lines (for /dev/metrics
                # and the tests) and prints them readably itself.
                "LOG_FORMAT": "json",
            }
        )
        # A token or key that points verification elsewhere would bypass the local signer.
        env.pop("CLERK_JWT_KEY", None)
        return env

    def start(self) -> None:
        """Start everything and wait until it answers.

        Raises:
            StackError: it cannot start (another stack runs on the data folder, the port is
                taken, a process exited while starting...); the message says what to do.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        started = time.monotonic()
        self.state.acquire(self.base_url)
        holder = port_holder(self.port)
        if holder is not None:
            raise StackError(
                f"Port {self.port} is in use by {holder}. Stop it, or start the stack on "
                "another port: PORT=8001 make dev"
            )
        # The router's access log would repeat each function's own line.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        logger.info(
            "starting PostgreSQL, the cloud stand-ins and %d functions (data in %s)",
            len(function_names()),
            self.data_dir,
        )
        self._postgres = start_postgres(self.data_dir / "pg")
        env = self.env = self.environment(postgres_url(self._postgres))
        migrate(env)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.function_urls = {name: f"http://127.0.0.1:{free_port()}" for name in function_names()}
        self._start_standins(env)
        self._start_tasks_emulator(env)
        # Each function's log lines: in its own file (tests, benchmarks), read when
        # /dev/metrics is asked for; or through the relay, which prints them readably.
        relay = self.relay
        log_files = (
            LogFiles(self.metrics, self.log_dir, self.function_urls)
            if self.log_dir is not None
            else None
        )
        for name, url in self.function_urls.items():
            port = int(url.rsplit(":", 1)[1])
            log = None if self.log_dir is None else (self.log_dir / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                function_command(name, port),
                cwd=REPO_ROOT,
                # FUNCTION_TARGET as Cloud Run sets it: every log line names its function.
                env={**env, "PORT": str(port), "FUNCTION_TARGET": name},
                stdout=log if relay is None else subprocess.PIPE,
                stderr=log if relay is None else subprocess.STDOUT,
                # Its own session: Ctrl-C reaches the stack only, which stops it in order.
                start_new_session=True,
            )
            self.state.add(name, self.processes[name].pid)
            if relay is not None:
                relay.attach(name, self.processes[name])

        def metrics() -> dict[str, Any]:
            if log_files is not None:
                log_files.collect()
            return self.metrics.snapshot()

        health_checks: dict[str, Callable[[], bool]] = {
            "postgres": postgres_answers(env["DATABASE_URL"]),
            "tasks_emulator": functools.partial(tcp_answers, env["TASKS_EMULATOR_HOST"]),
            "storage": functools.partial(http_answers, self.storage_url + "/"),
        }
        for name, url in self.function_urls.items():
            health_checks[name] = functools.partial(tcp_answers, url.removeprefix("http://"))

        from dev.openapi import build_openapi
        from shared.settings import load_settings

        router = Router(
            self.function_urls,
            self.signer,
            health_checks,
            functools.partial(build_openapi, load_settings(env)),
            metrics=metrics,
            storage=StorageUpstream(
                env["GCS_BUCKET_NAME"],
                self.storage_url,
                env.get("ALLOWED_ORIGINS", "").split(","),
                SignatureFront.from_key_file(env["GCS_BUCKET_NAME"], env["SIGNER_KEY_FILE"]),
            ),
        )
        self._server = make_server(
            "0.0.0.0", self.port, router, threaded=True, request_handler=JsonErrorRequestHandler
        )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.wait_healthy(timeout=60)
        logger.info("stack ready in %.1f s", time.monotonic() - started)

    def _start_standins(self, env: dict[str, str]) -> None:
        """Start the metadata and Gemini stand-ins and point the functions' settings at them."""
        from dev.gemini_standin import start_standin
        from dev.metadata_standin import start_metadata_standin

        metadata = start_metadata_standin(env.get("PROJECT_ID") or "raven-local")
        self._standins.append(metadata)
        env.update(metadata.environment())
        self._start_storage(env, metadata.service_account)
        if env.get("GEMINI_API_KEY"):
            self.gemini_description = "the real Gemini API (GEMINI_API_KEY is set)"
            return
        # Paced like a model, so the local frontend shows answers streaming in; the tests
        # (ENVIRONMENT=test) script their own pacing and run unpaced.
        pacing = 0.0 if env.get("ENVIRONMENT") == "test" else STANDIN_CHUNK_SECONDS
        gemini, url = start_standin(port=0, default_delay_per_chunk=pacing)
        self._standins.append(gemini)
        self.gemini_standin_url = url
        env["GEMINI_BASE_URL"] = url
        self.gemini_description = (
            "the local Gemini stand-in (GEMINI_API_KEY in .env: the real Gemini API)"
        )

    def _start_storage(self, env: dict[str, str], service_account: str) -> None:
        """Start the storage emulator. The functions talk to it directly, and sign URLs for
        the router's host (which proxies browsers to it) with a local key, since IAM signBlob
        cannot be reached here."""
        from dev.storage_emulator import StorageEmulator, ensure_signing_key

        bucket = env.get("GCS_BUCKET_NAME") or "raven-uploads-local"
        emulator = StorageEmulator(self.data_dir / "storage", bucket).start()
        self._standins.append(emulator)
        self.storage_url = emulator.url
        key = ensure_signing_key(
            self.data_dir / "storage-signer.json", service_account, env.get("PROJECT_ID") or ""
        )
        env.update(
            {
                "GCS_BUCKET_NAME": bucket,
                "STORAGE_EMULATOR_HOST": emulator.url,
                "STORAGE_PUBLIC_URL": env.get("STORAGE_PUBLIC_URL") or self.base_url,
                "SIGNER_KEY_FILE": str(key),
            }
        )

    def _start_tasks_emulator(self, env: dict[str, str]) -> None:
        """Cloud Tasks emulator with the summaries queue; tasks reach summarize over HTTP.

        It runs from its own virtualenv (it pins protobuf<5, which google-cloud-* cannot use).
        Like Cloud Tasks it POSTs each task to its URL with the X-CloudTasks-* headers, and
        redelivers a task whose handler answered an error; dev/tasks_emulator.py makes it
        refuse a reused task name with ALREADY_EXISTS, as Cloud Tasks does.
        """
        executable = REPO_ROOT / ".venv-tasks" / "bin" / "gcloud-tasks-emulator"
        if not executable.exists():
            raise StackError(f"{executable} is missing: run `make dev`, which installs it")
        # Through our launcher, which refuses a reused task name as Cloud Tasks does.
        launcher = [str(executable.parent / "python"), str(REPO_ROOT / "dev" / "tasks_emulator.py")]
        port = free_port()
        queue = (
            f"projects/{env.get('PROJECT_ID') or 'raven-local'}/locations/"
            f"{env.get('LOCATION') or 'us-central1'}/queues/summaries"
        )
        log = None if self.log_dir is None else (self.log_dir / "tasks-emulator.log").open("ab")
        process = self.processes["tasks_emulator"] = subprocess.Popen(
            [
                *launcher,
                "start",
                "--port",
                str(port),
                "--default-queue",
                queue,
                "--max-retries",
                str(TASKS_MAX_RETRIES),
                "--quiet",  # errors only: the summarize function logs every task it runs
            ],
            cwd=self.data_dir,
            # google-api-core warns at import that it will drop this Python in a year or two.
            env={**os.environ, "PYTHONWARNINGS": "ignore::FutureWarning", "PYTHONUNBUFFERED": "1"},
            stdout=log if self.relay is None else subprocess.PIPE,
            stderr=log if self.relay is None else subprocess.STDOUT,
            start_new_session=True,
        )
        self.state.add("tasks_emulator", process.pid)
        if self.relay is not None:
            self.relay.attach("tasks", process, skip=TASKS_EMULATOR_CHATTER)
        env["TASKS_EMULATOR_HOST"] = f"127.0.0.1:{port}"
        env["TASKS_QUEUE"] = queue
        env["SUMMARIZE_URL"] = self.function_urls["summarize"] + "/"

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    where = "above" if self.log_dir is None else f"in {self.log_dir}"
                    raise StackError(
                        f"{name} exited with code {process.returncode} while starting "
                        f"(its output is {where})"
                    )
            try:
                with urllib.request.urlopen(f"{self.base_url}/dev/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise StackError(
            f"the stack was not healthy within {timeout} s: see {self.base_url}/dev/healthz"
        )

    def stop(self) -> None:
        """Stop everything that was started (idempotent); the data stays."""
        processes, self.processes = self.processes, {}
        # SIGTERM to each child only: gunicorn's arbiter then stops its workers gracefully
        # (a few seconds: they finish what they serve). Each leads its own process group,
        # which is killed whole if that takes too long.
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for name, process in processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s: killed", name, STOP_SECONDS)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        standins, self._standins = self._standins, []
        for standin in standins:
            standin.stop()
        postgres, self._postgres = self._postgres, None
        if postgres is not None:
            stop_postgres(postgres)
        self.state.release()


def _shown_path(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def banner(
    base_url: str, gemini: str, stream_format: str, data_dir: Path, functions: list[str]
) -> str:
    """What the stack prints once it is ready, last, so that it stays on screen."""
    other = "sse" if stream_format == "ndjson" else "ndjson"
    accept = {"sse": "text/event-stream", "ndjson": "application/x-ndjson"}[other]
    framing = {
        "ndjson": 'one JSON event per line ({"type": "chunk", ...})',
        "sse": 'a "data: {JSON event}" line and a blank line per event',
    }[stream_format]
    return f"""
Raven backend is ready at {base_url}
  Functions:  {", ".join(functions)}
  Model:      {gemini}
  Streams:    POST /chat answers {stream_format.upper()}, {framing};
              send Accept: {accept} for {other.upper()} (CHAT_STREAM_FORMAT sets the default)
  API docs:   docs/api.md, and as OpenAPI at {base_url}/dev/openapi.json
  Frontend:   NEXT_PUBLIC_BACKEND_URL={base_url}
  Local only: /dev/token (a token for any user), /dev/healthz, /dev/metrics (the numbers
              the deployed dashboard shows, since start)
  Data:       {_shown_path(data_dir)} (kept across restarts; delete it to start afresh)

  Try it:
    TOKEN=$(curl -s {base_url}/dev/token -d '{{"sub": "user_demo", "first_name": "Ada"}}' \\
            | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    curl -sN {base_url}/chat -H "Authorization: Bearer $TOKEN" \\
         -d '{{"messages": [{{"role": "user", "parts": [{{"type": "text", "text": "Hi!"}}]}}]}}'
    curl -s {base_url}/api/chats -H "Authorization: Bearer $TOKEN"

  Below: one line per request, chat turn and task, from every process. Ctrl-C stops it all.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".data")
    parser.add_argument(
        "--log-to-files", action="store_true", help="write function logs to <data-dir>/logs/"
    )
    args = parser.parse_args()
    configure_logging(None, function="stack", readable=True)

    stack = LocalStack(args.data_dir.resolve(), args.port, log_to_files=args.log_to_files)
    stopping = threading.Event()
    # A closed terminal (SIGHUP) or `kill` (SIGTERM) stops the stack as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: stopping.set())
    code = 0
    started = False
    try:
        stack.start()  # if it fails, it stops what it started
        started = True
        if stack.relay is not None:
            stack.relay.wait_quiet(0.3, timeout=3)  # the banner comes last
        stream_format = stack.env.get("CHAT_STREAM_FORMAT") or "sse"
        print(
            banner(
                stack.base_url,
                stack.gemini_description,
                stream_format,
                stack.data_dir,
                list(stack.function_urls),
            ),
            flush=True,
        )
        while not stopping.is_set():
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    raise StackError(
                        f"{name} stopped unexpectedly (exit code {process.returncode}); "
                        "its last lines are above"
                    )
            stopping.wait(1)
    except KeyboardInterrupt:
        pass
    except StackError as error:
        logger.error("%s", error)
        code = 1
    finally:
        if started:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback
            logger.info("stopping (a few seconds)")
            stack.stop()
            logger.info("stopped; the data stays in %s", _shown_path(stack.data_dir))
    sys.exit(code)


if __name__ == "__main__":
    main()
