"""PostgreSQL through pg8000: a small pool per process, prepared statements, short transactions.

Two ways to connect, chosen by settings:

* ``DATABASE_URL`` (local stack, tests): TCP ``postgresql://user:pw@host:5432/db`` or a unix
  socket, ``postgresql://user@/db?host=/socket/dir`` (libpq's form).
* ``INSTANCE_CONNECTION_NAME`` (Cloud Run): the Cloud SQL Python Connector with IAM database
  authentication, so there is no password anywhere, and the lazy refresh strategy that
  Cloud Run's throttled CPU needs
  (https://github.com/GoogleCloudPlatform/cloud-sql-python-connector#configuring-a-lazy-refresh-cloud-run-cloud-functions-etc).
  The connector is imported only on this path: it costs ~0.8 s of cold start.

Connections live for the process's lifetime (connecting costs ~40 ms); each gunicorn worker
process (``WORKERS``) has its own pool of ``DB_POOL_SIZE``, opened after the fork. Each statement is
prepared once per connection and then costs one round trip. A connection that broke while
idle in the pool (Cloud SQL maintenance, an idle timeout) is replaced without the caller
noticing: reads are retried once on a fresh connection, and a transaction's first round trip
(``BEGIN``) is retried before any of the caller's statements ran. A database that cannot be
reached raises :class:`DatabaseUnavailable`, a 503 with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.dbapi
import pg8000.exceptions
import pg8000.native

from shared.errors import ServiceUnavailable, Unauthorized
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)

Row = dict[str, Any]
T = TypeVar("T")

# SQLSTATE classes and codes that mean "this connection is gone", not "your query is wrong":
# 08 connection exceptions; 57P01-57P03 the server shut the session down.
# https://www.postgresql.org/docs/16/errcodes-appendix.html
_CONNECTION_LOST_CODES = {"57P01", "57P02", "57P03"}
_PREPARED_PER_CONNECTION = 128
FOREIGN_KEY_VIOLATION = "23503"
UNIQUE_VIOLATION = "23505"


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be reached now; the client should retry shortly."""

    code = "database_unavailable"

    def __init__(self) -> None:
        super().__init__("The database is unavailable, please retry shortly", retry_after=5)


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE code of a pg8000 error, e.g. ``"23505"`` for a unique violation."""
    if isinstance(error, pg8000.exceptions.DatabaseError) and error.args:
        details = error.args[0]
        if isinstance(details, dict):
            code = details.get("C")
            return str(code) if code else None
    return None


def references_deleted_user(error: BaseException) -> bool:
    """Whether a write failed because its user row is gone: Clerk's ``user.deleted`` was
    processed after :class:`shared.auth.KnownUsers` let the request in, milliseconds ago.
    Every table that belongs to a user names it by ``user_id``, so the foreign key of each
    is ``<table>_user_id_fkey`` (PostgreSQL's default name)."""
    if sqlstate(error) != FOREIGN_KEY_VIOLATION:
        return False
    details = error.args[0] if error.args else None
    constraint = details.get("n") if isinstance(details, dict) else None
    return isinstance(constraint, str) and constraint.endswith("_user_id_fkey")


def is_connection_lost(error: BaseException) -> bool:
    """Whether an error means the connection, not the statement, failed."""
    if isinstance(error, (pg8000.exceptions.InterfaceError, OSError)):
        return True
    code = sqlstate(error)
    return code is not None and (code.startswith("08") or code in _CONNECTION_LOST_CODES)


def connect_kwargs_from_url(url: str) -> dict[str, Any]:
    """pg8000 connection arguments for a ``postgresql://`` URL (TCP or unix socket)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    kwargs: dict[str, Any] = {
        "user": unquote(parts.username or "postgres"),
        "database": unquote(parts.path.lstrip("/")) or "postgres",
    }
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    socket_dir = query.get("host", [None])[0]
    if socket_dir and socket_dir.startswith("/"):
        kwargs["unix_sock"] = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}"
        # libpq never uses TLS over a unix socket. pg8000's default (None: "prefer") builds a
        # fresh SSL context for every connection, ~10 ms of CPU loading the CA bundle, only to
        # be told no by the server (bench/README.md, "Profiles").
        kwargs["ssl_context"] = False
    else:
        kwargs["host"] = parts.hostname or "localhost"
        kwargs["port"] = parts.port or 5432
        if query.get("sslmode", [""])[0] == "disable":
            kwargs["ssl_context"] = False
    return kwargs


def connection_factory(settings: Settings) -> Callable[[], Any]:
    """A function that opens one new pg8000 connection as the settings say."""
    if settings.instance_connection_name:
        instance = settings.instance_connection_name
        state: dict[str, Any] = {}
        lock = threading.Lock()
        # The connector runs its own thread and event loop, which a forked worker lacks.
        os.register_at_fork(after_in_child=state.clear)

        def connect_cloud_sql() -> Any:
            with lock:
                if "connector" not in state:
                    from google.cloud.sql.connector import Connector

                    state["connector"] = Connector(
                        refresh_strategy="lazy", ip_type=settings.db_ip_type.lower()
                    )
            return state["connector"].connect(
                instance,
                "pg8000",
                user=settings.db_iam_user,
                db=settings.db_name,
                enable_iam_auth=True,
            )

        return connect_cloud_sql

    assert settings.database_url is not None  # load_settings guarantees one of the two
    kwargs = connect_kwargs_from_url(settings.database_url)

    def connect_url() -> Any:
        return pg8000.dbapi.connect(timeout=10, **kwargs)

    return connect_url


class _Connection:
    """One pooled connection with its cache of prepared statements."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._prepared: OrderedDict[str, pg8000.native.PreparedStatement] = OrderedDict()

    def run(self, sql: str, params: dict[str, Any]) -> list[Row]:
        statement = self._prepared.get(sql)
        if statement is None:
            statement = pg8000.native.PreparedStatement(self.raw, sql)
            self._prepared[sql] = statement
            if len(self._prepared) > _PREPARED_PER_CONNECTION:
                _, oldest = self._prepared.popitem(last=False)
                oldest.close()
        else:
            self._prepared.move_to_end(sql)
        rows = statement.run(**{name: _adapt(value) for name, value in params.items()})
        if not rows:
            return []
        names = [column["name"] for column in statement.columns]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def simple(self, sql: str) -> None:
        self.raw.execute_simple(sql)

    def close(self) -> None:
        # Closing a broken socket may fail; the connection is discarded either way.
        with contextlib.suppress(Exception):
            self.raw.close()


def _adapt(value: Any) -> Any:
    """Send dicts and lists as JSON text; columns that take them cast with ``CAST(:x AS jsonb)``."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


class Transaction:
    """Statements inside one ``BEGIN ... COMMIT``; obtained from :meth:`Database.transaction`."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    def fetch_all(self, sql: str, **params: Any) -> list[Row]:
        return self._connection.run(sql, params)

    def fetch_one(self, sql: str, **params: Any) -> Row | None:
        rows = self._connection.run(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, **params: Any) -> None:
        self._connection.run(sql, params)


_pools: weakref.WeakSet[Database] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for database in list(_pools):
        database._forget_connections()


# gunicorn's master imports the function (functions-framework builds the app there) and forks
# WORKERS processes: each must have its own pool.
os.register_at_fork(after_in_child=_after_fork_in_child)


class Database:
    """A thread-safe pool of at most ``pool_size`` connections, opened on first use."""

    def __init__(
        self, connect: Callable[[], Any], pool_size: int, acquire_timeout: float = 10.0
    ) -> None:
        self._connect = connect
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._pool_size = pool_size
        self._slots = threading.BoundedSemaphore(pool_size)
        self._acquire_timeout = acquire_timeout
        _pools.add(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(
            connection_factory(settings),
            settings.db_pool_size,
            settings.db_acquire_timeout_seconds,
        )

    def _open(self) -> _Connection:
        try:
            raw = self._connect()
        except Exception as error:
            logger.error("database connection failed", extra={"error": type(error).__name__})
            raise DatabaseUnavailable() from error
        raw.autocommit = True
        return _Connection(raw)

    def _acquire(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """Borrow a connection; returns it and whether it was reused from the pool.

        Args:
            fresh: open a new connection even if idle ones are pooled (after one broke,
                the others, opened at the same time to the same server, likely broke too).
        """
        if not self._slots.acquire(timeout=self._acquire_timeout):
            logger.warning("database pool exhausted")
            raise DatabaseUnavailable()
        connection = None
        if not fresh:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
        if connection is not None:
            return connection, True
        try:
            return self._open(), False
        except BaseException:
            self._slots.release()
            raise

    def _release(self, connection: _Connection, broken: bool = False) -> None:
        if broken:
            connection.close()
        else:
            with self._lock:
                self._idle.append(connection)
        self._slots.release()

    def _first_round_trip(self, action: Callable[[_Connection], T]) -> tuple[_Connection, T]:
        """Borrow a connection and run ``action`` on it, on a fresh one if the pooled one broke.

        Only for a first round trip that is safe to repeat (a read, or ``BEGIN``). The
        connection stays borrowed: the caller releases it.
        """
        for attempt in (1, 2):
            connection, reused = self._acquire(fresh=attempt == 2)
            try:
                return connection, action(connection)
            except Exception as error:
                lost = is_connection_lost(error)
                self._release(connection, broken=lost)
                if not lost:
                    raise
                if attempt == 2 or not reused:
                    raise DatabaseUnavailable() from error
                logger.info("replacing a broken database connection")
        raise AssertionError("unreachable")

    def fetch_all(self, sql: str, **params: Any) -> list[Row]:
        """Run one read-only statement outside a transaction."""
        connection, rows = self._first_round_trip(lambda c: c.run(sql, params))
        self._release(connection)
        return rows

    def fetch_one(self, sql: str, **params: Any) -> Row | None:
        rows = self.fetch_all(sql, **params)
        return rows[0] if rows else None

    def write(self, sql: str, **params: Any) -> list[Row]:
        """Run one statement that writes, as its own transaction: one round trip, where
        ``BEGIN``, the statement and ``COMMIT`` cost three (several tables change at once
        through data-modifying ``WITH`` clauses, which see one snapshot and commit together).

        Like a read, it is retried once on a fresh connection when the pooled one turns out
        broken, so the statement must be safe to repeat: a reply lost after the commit runs
        it twice (see :func:`shared.answers.store_ending` for how a turn's end is; a turn's
        start, whose repeat meets the ids its first run stored, reads that run's turn back:
        ``shared.turn._begin_send``).

        Raises:
            DatabaseUnavailable: the database cannot be reached.
            Unauthorized: ``user_deleted``: a row it writes names a user deleted meanwhile.
        """
        try:
            connection, rows = self._first_round_trip(lambda c: c.run(sql, params))
        except Exception as error:
            if references_deleted_user(error):
                raise Unauthorized("This account has been deleted", code="user_deleted") from None
            raise
        self._release(connection)
        return rows

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A short explicit transaction: committed when the block ends, rolled back on error.

        Keep the block free of network calls other than the database's: it holds a pooled
        connection and row locks for its whole duration.
        """
        connection, _ = self._first_round_trip(lambda c: c.simple("BEGIN"))
        try:
            yield Transaction(connection)
            connection.simple("COMMIT")
        except BaseException as error:
            lost = is_connection_lost(error)
            if not lost:
                try:
                    connection.simple("ROLLBACK")
                except Exception:  # noqa: BLE001 - the connection died while rolling back
                    lost = True
            self._release(connection, broken=lost)
            if lost and not isinstance(error, DatabaseUnavailable):
                raise DatabaseUnavailable() from error
            if references_deleted_user(error):
                raise Unauthorized("This account has been deleted", code="user_deleted") from None
            raise
        self._release(connection)

    def _forget_connections(self) -> None:
        """In a forked child (a gunicorn worker): drop the parent's connections unclosed.

        Their sockets belong to the parent's sessions: closing them here would send
        PostgreSQL a Terminate for the parent, and using them would interleave two
        processes' messages on one session. The child opens its own, on first use.
        """
        self._idle = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self._pool_size)

    def close(self) -> None:
        """Close every idle connection (tests and the local stack use this at exit)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


@lru_cache(maxsize=1)
def database() -> Database:
    """The instance's pool: created on first use, kept for the instance's life.

    Cloud Run reuses an instance for many requests, so connections outlive a request
    (https://cloud.google.com/run/docs/tips/general#use_global_variables). It lives here, not
    in ``shared.runtime``, so that modules below the runtime (the deleted-user check, the
    storage cleanup thread) reach the one pool without importing upward (tools/layers.py).
    """
    return Database.from_settings(get_settings())
