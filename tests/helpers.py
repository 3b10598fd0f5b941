"""Helpers several test modules share: rows stored the way the functions store them, and Clerk's
webhook deliveries as Svix signs them. Fixtures live in conftest.py; test modules import only from
conftest.py and here, never from one another.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import requests
from svix.webhooks import Webhook

from shared.db import Database

# A small valid PNG (magic number and enough bytes for the upload checks).
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# --- rows as the functions store them -----------------------------------------------------------


def add_messages(db: Database, chat_id: str, texts: list[str]) -> list[str]:
    """Store messages the way chat_stream does (user and assistant alternating)."""
    ids = []
    with db.transaction() as tx:
        start = tx.fetch_one(
            "UPDATE chats SET message_count = message_count + :n, updated_at = now() "
            "WHERE id = :id RETURNING message_count - :n AS first",
            n=len(texts),
            id=uuid.UUID(chat_id),
        )
        assert start is not None
        for offset, text in enumerate(texts):
            message_id = uuid.uuid4()
            ids.append(str(message_id))
            tx.execute(
                "INSERT INTO messages (id, chat_id, position, role, content, parts) "
                "VALUES (:id, :chat_id, :position, :role, :content, CAST(:parts AS jsonb))",
                id=message_id,
                chat_id=uuid.UUID(chat_id),
                position=start["first"] + offset,
                role="user" if offset % 2 == 0 else "assistant",
                content=text,
                parts=[{"type": "text", "text": text}],
            )
    return ids


def add_media_message(db: Database, chat_id: str, text: str, media: list[dict[str, Any]]) -> None:
    """Store a user message whose parts reference uploads, the way chat_stream stores one."""
    from shared.media import link_media_to_chat

    with db.transaction() as tx:
        row = tx.fetch_one(
            "UPDATE chats SET message_count = message_count + 1 WHERE id = :id "
            "RETURNING message_count - 1 AS position",
            id=uuid.UUID(chat_id),
        )
        assert row is not None
        tx.execute(
            "INSERT INTO messages (id, chat_id, position, role, content, parts) "
            "VALUES (:id, :chat_id, :position, 'user', :content, CAST(:parts AS jsonb))",
            id=uuid.uuid4(),
            chat_id=uuid.UUID(chat_id),
            position=row["position"],
            content=text,
            parts=[*media, {"type": "text", "text": text}],
        )
        link_media_to_chat(tx, uuid.UUID(chat_id), [part["upload_id"] for part in media])


# --- Clerk's webhook, delivered through Svix ----------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def new_user_id() -> str:
    return "user_" + uuid.uuid4().hex[:27]


def clerk_user(
    user_id: str,
    *,
    updated_at: int,
    email: str | None = "ada@example.com",
    first_name: str | None = "Ada",
    last_name: str | None = "Lovelace",
    image_url: str = "https://img.clerk.com/ada.png",
    other_emails: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Clerk's User object as webhooks carry it; the primary email is listed last on purpose."""

    def address(value: str) -> dict[str, Any]:
        return {
            "email_address": value,
            "id": "idn_" + uuid.uuid4().hex[:27],
            "linked_to": [],
            "object": "email_address",
            "reserved": False,
            "verification": {
                "attempts": None,
                "expire_at": None,
                "status": "verified",
                "strategy": "email_code",
            },
        }

    addresses = [address(value) for value in other_emails]
    primary = address(email) if email else None
    if primary:
        addresses.append(primary)
    return {
        "backup_code_enabled": False,
        "banned": False,
        "birthday": "",
        "created_at": updated_at - 1000,
        "email_addresses": addresses,
        "external_accounts": [],
        "external_id": None,
        "first_name": first_name,
        "gender": "",
        "has_image": True,
        "id": user_id,
        "image_url": image_url,
        "last_name": last_name,
        "last_sign_in_at": None,
        "locked": False,
        "object": "user",
        "password_enabled": True,
        "phone_numbers": [],
        "primary_email_address_id": primary["id"] if primary else None,
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "private_metadata": {},
        "profile_image_url": image_url,
        "public_metadata": {},
        "two_factor_enabled": False,
        "unsafe_metadata": {},
        "updated_at": updated_at,
        "username": None,
        "web3_wallets": [],
    }


def clerk_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": data,
        "event_attributes": {
            "http_request": {"client_ip": "192.0.2.1", "user_agent": "Mozilla/5.0 (test)"}
        },
        "instance_id": "ins_2abcdefghijklmnopqrstuvwxyz",
        "object": "event",
        "timestamp": now_ms(),
        "type": event_type,
    }


def deleted_event(user_id: str) -> dict[str, Any]:
    return clerk_event("user.deleted", {"deleted": True, "id": user_id, "object": "user"})


class Svix:
    """Delivers events to /clerk-webhook the way Svix does: signed svix-* headers, raw body."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.webhook = Webhook(secret)
        self.session = requests.Session()

    def headers(
        self, body: str, msg_id: str, at: datetime | None = None, webhook: Webhook | None = None
    ) -> dict[str, str]:
        at = at or datetime.now(tz=UTC)
        return {
            "Content-Type": "application/json",
            "svix-id": msg_id,
            "svix-timestamp": str(int(at.timestamp())),
            "svix-signature": (webhook or self.webhook).sign(msg_id, at, body),
        }

    def post(self, body: str | bytes, headers: dict[str, str]) -> requests.Response:
        data = body.encode() if isinstance(body, str) else body
        return self.session.post(self.url, data=data, headers=headers, timeout=30)

    def deliver(self, event: dict[str, Any], msg_id: str | None = None) -> requests.Response:
        body = json.dumps(event)
        return self.post(body, self.headers(body, msg_id or new_msg_id()))


def new_msg_id() -> str:
    return "msg_" + uuid.uuid4().hex[:27]


def user_row(db: Database, user_id: str) -> dict[str, Any] | None:
    return db.fetch_one(
        "SELECT email, first_name, last_name, image_url, clerk_updated_at FROM users "
        "WHERE id = :id",
        id=user_id,
    )


def assert_acknowledged(response: requests.Response, message: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"message": message}
