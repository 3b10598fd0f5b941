"""Migrations: up on an empty database, a no-op when current, down, and up again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from dev.stack import LocalStack
from shared.db import Database
from tests.conftest import REPO_ROOT

TABLES = {
    "users",
    "webhook_events",
    "chats",
    "messages",
    "summaries",
    "uploads",
    "chat_uploads",
    "storage_deletions",
    "usage_daily",
    "rate_limit_windows",
}


@pytest.fixture
def scratch_url(stack: LocalStack, db: Database) -> Iterator[str]:
    """A fresh, empty database on the stack's server."""
    db.fetch_all("DROP DATABASE IF EXISTS migration_scratch")
    db.fetch_all("CREATE DATABASE migration_scratch")
    yield stack.env["DATABASE_URL"].replace("/postgres?", "/migration_scratch?")
    db.fetch_all("DROP DATABASE IF EXISTS migration_scratch WITH (FORCE)")


def alembic(url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_ROOT,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def tables(url: str) -> set[str]:
    import pg8000.dbapi

    from shared.db import connect_kwargs_from_url

    connection = pg8000.dbapi.connect(**connect_kwargs_from_url(url))
    cursor = connection.cursor()
    cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    names = {row[0] for row in cursor.fetchall()}
    connection.close()
    return names - {"alembic_version"}


def test_up_noop_down_up(scratch_url: str) -> None:
    assert tables(scratch_url) == set()
    output = alembic(scratch_url, "upgrade", "head")
    assert "Running upgrade  -> 0001" in output
    assert tables(scratch_url) == TABLES

    again = alembic(scratch_url, "upgrade", "head")
    assert "Running upgrade" not in again
    assert "(head)" in alembic(scratch_url, "current")

    alembic(scratch_url, "downgrade", "base")
    assert tables(scratch_url) == set()

    alembic(scratch_url, "upgrade", "head")
    assert tables(scratch_url) == TABLES


def test_deleting_a_user_cascades_to_everything_they_own(db: Database) -> None:
    import uuid

    user_id = "user_cascade_" + uuid.uuid4().hex[:8]
    chat_id, upload_id = uuid.uuid4(), uuid.uuid4()
    with db.transaction() as tx:
        tx.execute("INSERT INTO users (id) VALUES (:id)", id=user_id)
        tx.execute("INSERT INTO chats (id, user_id) VALUES (:id, :u)", id=chat_id, u=user_id)
        tx.execute(
            "INSERT INTO messages (id, chat_id, position, role) VALUES (:id, :c, 0, 'user')",
            id=uuid.uuid4(),
            c=chat_id,
        )
        tx.execute(
            "INSERT INTO summaries (id, chat_id, version, covers_through_position, content) "
            "VALUES (:id, :c, 1, 0, 's')",
            id=uuid.uuid4(),
            c=chat_id,
        )
        tx.execute(
            "INSERT INTO uploads (id, user_id, bucket, object_name, content_type) "
            "VALUES (:id, :u, 'b', :o, 'image/png')",
            id=upload_id,
            u=user_id,
            o=f"uploads/{user_id}/x.png",
        )
        tx.execute("INSERT INTO chat_uploads VALUES (:c, :u)", c=chat_id, u=upload_id)
        tx.execute("INSERT INTO usage_daily (user_id, day) VALUES (:u, current_date)", u=user_id)
        tx.execute(
            "INSERT INTO rate_limit_windows (user_id, window_start) VALUES (:u, now())", u=user_id
        )
    with db.transaction() as tx:
        tx.execute("DELETE FROM users WHERE id = :id", id=user_id)
    for table, column, value in [
        ("chats", "user_id", user_id),
        ("messages", "chat_id", chat_id),
        ("summaries", "chat_id", chat_id),
        ("uploads", "user_id", user_id),
        ("chat_uploads", "chat_id", chat_id),
        ("usage_daily", "user_id", user_id),
        ("rate_limit_windows", "user_id", user_id),
    ]:
        row = db.fetch_one(f"SELECT count(*) AS n FROM {table} WHERE {column} = :v", v=value)
        assert row == {"n": 0}, table
