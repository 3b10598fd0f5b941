"""The migrations job's entry point: upgrade the schema, then let the functions use it.

Runs inside the Cloud Run job ``<prefix>-migrate`` (terraform/migrations.tf), from the image that
``migrate.sh`` builds:

1. starts the Cloud SQL Auth Proxy for ``CLOUD_SQL_INSTANCE`` on 127.0.0.1 (private IP unless
   ``DB_IP_TYPE=PUBLIC``) and waits until the database answers;
2. runs ``alembic upgrade head`` with ``DATABASE_URL`` pointing at the proxy as
   ``MIGRATOR_USER``, the built-in user that owns the schema;
3. grants the ``raven_app`` role to every IAM database user in ``APP_DB_USERS`` (the functions'
   service accounts): read and write on every table and sequence in schema public, including
   those later migrations create. Cloud SQL creates IAM users with no privileges at all, so
   without this step the functions could log in but read nothing.

Every statement is idempotent: running the job again is always safe.

Locally, ``python terraform/migrations/run_migrations.py --grants-only`` with DATABASE_URL set and
no proxy applies step 3 alone, e.g. to try the grants against a development database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence

APP_ROLE = "raven_app"
PROXY_PORT = 5432
READY_TIMEOUT_SECONDS = 120


def quote_ident(name: str) -> str:
    """Quote a Postgres identifier (IAM user names contain @ and dots)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def grant_statements(
    database: str, app_users: Sequence[str], app_role: str = APP_ROLE
) -> list[str]:
    """SQL that lets ``app_users`` read and write the application's tables, and nothing more."""
    role = quote_ident(app_role)
    statements = [
        # A group role the migrations never have to know the deployment's user names for.
        "DO $$ BEGIN "
        "IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles "
        f"WHERE rolname = {quote_literal(app_role)}) "
        f"THEN CREATE ROLE {role} NOLOGIN; END IF; END $$",
        f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        # Tables and sequences the migrator creates from now on.
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
    ]
    statements += [f"GRANT {role} TO {quote_ident(user)}" for user in app_users]
    return statements


def database_url(
    user: str, password: str, database: str, host: str = "127.0.0.1", port: int = PROXY_PORT
) -> str:
    quote = lambda part: urllib.parse.quote(part, safe="")  # noqa: E731
    return f"postgresql://{quote(user)}:{quote(password)}@{host}:{port}/{quote(database)}"


def _connect(url: str):
    import pg8000.dbapi  # installed with the functions' requirements

    parts = urllib.parse.urlsplit(url)
    return pg8000.dbapi.connect(
        user=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or "") or None,
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        database=urllib.parse.unquote(parts.path.lstrip("/")),
    )


def wait_until_ready(url: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _connect(url).close()
            return
        except Exception as error:  # the proxy is still starting, or the instance is unreachable
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"database not reachable through the proxy after {timeout:.0f}s: {error}"
                ) from error
            time.sleep(2)


def apply_grants(url: str, database: str, app_users: Sequence[str]) -> None:
    connection = _connect(url)
    try:
        connection.autocommit = True
        cursor = connection.cursor()
        for statement in grant_statements(database, app_users):
            cursor.execute(statement)
    finally:
        connection.close()
    print(f"granted {APP_ROLE} to {len(app_users)} IAM database user(s)", flush=True)


def run_alembic(url: str) -> None:
    env = dict(os.environ, DATABASE_URL=url)
    # The connector settings would make shared/settings.py prefer IAM login through the connector:
    # migrations use DATABASE_URL, through the proxy, as the migrator.
    for name in ("INSTANCE_CONNECTION_NAME", "DB_IAM_USER", "MIGRATOR_PASSWORD"):
        env.pop(name, None)
    print("alembic upgrade head", flush=True)
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], env=env, check=True)


def main(argv: Sequence[str]) -> int:
    app_users = [user for user in os.environ.get("APP_DB_USERS", "").split(",") if user]
    if "--grants-only" in argv:
        url = os.environ["DATABASE_URL"]
        database = urllib.parse.unquote(urllib.parse.urlsplit(url).path.lstrip("/"))
        apply_grants(url, database, app_users)
        return 0

    instance = os.environ["CLOUD_SQL_INSTANCE"]
    database = os.environ.get("DB_NAME", "raven")
    url = database_url(os.environ["MIGRATOR_USER"], os.environ["MIGRATOR_PASSWORD"], database)
    proxy_args = ["cloud-sql-proxy", "--address", "127.0.0.1", "--port", str(PROXY_PORT)]
    if os.environ.get("DB_IP_TYPE", "PRIVATE").upper() == "PRIVATE":
        proxy_args.append("--private-ip")
    proxy = subprocess.Popen([*proxy_args, instance])
    try:
        wait_until_ready(url)
        run_alembic(url)
        apply_grants(url, database, app_users)
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
