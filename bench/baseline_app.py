"""The original backend's stack, minimal: ``GET /api/chats`` in FastAPI + asyncpg.

Run by bench/list_baseline.py in its own virtualenv (.venv-baseline, tools/requirements-
baseline.txt) as ``uvicorn bench.baseline_app:app`` (one process, uvloop and httptools), over
the same PostgreSQL and schema as chats_crud. It does what a request of the old backend's
list did, and nothing more:

* verify the Clerk session token (RS256 against the JWKS fetched at start, issuer checked,
  with PyJWT, on every request, as the old backend did);
* one query through an asyncpg pool: the user's newest chats, a page of 100 as chats_crud's;
* answer them as JSON through FastAPI's own response path (its encoder, its pydantic-free
  ``list[dict]`` return).

Imports nothing of ours: it cannot run in our virtualenv, nor ours in its.

Environment: ``DATABASE_URL`` (libpq form, ``?host=`` for a unix socket), ``CLERK_JWKS_URL``,
``CLERK_ISSUER``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import jwt
from fastapi import FastAPI, Header, HTTPException

LIST_SQL = """
    SELECT id, user_id, title, created_at, updated_at FROM chats
    WHERE user_id = $1 ORDER BY updated_at DESC, id DESC LIMIT $2
"""
PAGE_SIZE = 100  # as chats_crud's default page (shared.schemas.LIST_PAGE_SIZE)
state: dict[str, Any] = {}


def _connect_args(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    args: dict[str, Any] = {
        "user": unquote(parts.username or "postgres"),
        "database": unquote(parts.path.lstrip("/")) or "postgres",
        "port": parts.port or 5432,
    }
    if parts.password:
        args["password"] = unquote(parts.password)
    args["host"] = query.get("host", [parts.hostname or "localhost"])[0]
    return args


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    state["pool"] = await asyncpg.create_pool(
        min_size=4, max_size=10, **_connect_args(os.environ["DATABASE_URL"])
    )
    state["jwks"] = jwt.PyJWKClient(os.environ["CLERK_JWKS_URL"])
    state["issuer"] = os.environ.get("CLERK_ISSUER")
    yield
    await state["pool"].close()


app = FastAPI(lifespan=lifespan)


def current_user(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(401, "Missing token")
    token = authorization[7:].strip()
    try:
        key = state["jwks"].get_signing_key_from_jwt(token).key
        claims = jwt.decode(
            token, key, algorithms=["RS256"], issuer=state["issuer"], options={"verify_aud": False}
        )
    except jwt.PyJWTError as error:
        raise HTTPException(401, "Invalid token") from error
    return str(claims["sub"])


@app.get("/api/chats")
async def list_chats(authorization: str | None = Header(default=None)) -> list[dict[str, Any]]:
    user_id = current_user(authorization)
    rows = await state["pool"].fetch(LIST_SQL, user_id, PAGE_SIZE)
    return [
        {
            "chatId": str(row["id"]),
            "userId": row["user_id"],
            "title": row["title"],
            "createdAt": row["created_at"].timestamp(),
            "updatedAt": row["updated_at"].timestamp(),
        }
        for row in rows
    ]
