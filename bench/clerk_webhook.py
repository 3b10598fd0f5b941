"""clerk_webhook: latency of verified deliveries, which must stay well inside Svix's 15 s.

Deliveries are signed with svix's own code and posted to one clerk_webhook instance of the
local stack: ``user.updated`` events for one user (each verified, deduplicated and applied
in one transaction), then ``user.deleted`` of users who own a chat.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from svix.webhooks import Webhook

from dev.stack import LocalStack, free_port

REQUESTS = 200


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        stack = LocalStack(Path(data_dir), free_port(), log_to_files=True)
        stack.start()
        try:
            url = stack.function_urls["clerk_webhook"] + "/clerk-webhook"
            signer = Webhook(stack.env["CLERK_WEBHOOK_SECRET"])

            def deliver(event: dict[str, Any]) -> float:
                body = json.dumps(event)
                msg_id = "msg_" + uuid.uuid4().hex
                now = datetime.now(UTC)
                headers = {
                    "svix-id": msg_id,
                    "svix-timestamp": str(int(now.timestamp())),
                    "svix-signature": signer.sign(msg_id, now, body),
                    "Content-Type": "application/json",
                }
                began = time.perf_counter()
                response = requests.post(url, data=body, headers=headers, timeout=30)
                elapsed = time.perf_counter() - began
                assert response.status_code == 200, response.text
                return elapsed * 1000

            def user(user_id: str, updated_at: int) -> dict[str, Any]:
                email_id = "idn_" + uuid.uuid4().hex[:10]
                return {
                    "id": user_id,
                    "object": "user",
                    "first_name": "Bench",
                    "last_name": "User",
                    "image_url": "https://img.clerk.com/x.png",
                    "primary_email_address_id": email_id,
                    "email_addresses": [
                        {"id": email_id, "email_address": f"{user_id}@example.com"}
                    ],
                    "created_at": updated_at,
                    "updated_at": updated_at,
                }

            user_id = "user_" + uuid.uuid4().hex[:16]
            started = int(time.time() * 1000)
            deliver({"type": "user.created", "object": "event", "data": user(user_id, started)})
            updates = [
                deliver(
                    {
                        "type": "user.updated",
                        "object": "event",
                        "data": user(user_id, started + n + 1),
                    }
                )
                for n in range(REQUESTS)
            ]
            deletions = []
            for _ in range(REQUESTS // 4):
                doomed = "user_" + uuid.uuid4().hex[:16]
                deliver({"type": "user.created", "object": "event", "data": user(doomed, started)})
                token = stack.signer.token(doomed)
                requests.post(
                    stack.base_url + "/api/chats/create",
                    json={"title": "x"},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
                deletions.append(
                    deliver(
                        {
                            "type": "user.deleted",
                            "object": "event",
                            "data": {"id": doomed, "deleted": True, "object": "user"},
                        }
                    )
                )
        finally:
            stack.stop()

    def row(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "p50_ms": statistics.median(ordered),
            "p99_ms": ordered[int(len(ordered) * 0.99) - 1],
            "max_ms": ordered[-1],
        }

    results = {"user_updated": row(updates), "user_deleted": row(deletions)}
    print("clerk_webhook (one instance, direct)")
    for name, values in results.items():
        print(
            f"  {name:<13} p50 {values['p50_ms']:.1f} ms  p99 {values['p99_ms']:.1f} ms  "
            f"max {values['max_ms']:.1f} ms   (Svix waits 15 s)"
        )
    return results
