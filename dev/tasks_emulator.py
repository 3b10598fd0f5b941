"""The Cloud Tasks emulator, made as strict as Cloud Tasks about task names.

``gcloud-tasks-emulator`` accepts a second task with a name it has already seen; Cloud Tasks
refuses it with ALREADY_EXISTS, both while the task exists and for a while after it ran or
was deleted ("up to one hour", https://cloud.google.com/tasks/docs/reference/rpc/google.cloud.tasks.v2#createtaskrequest).
Our deduplication (one summary per cut, one title per chat) relies on that refusal, so this
launcher remembers every name created in the last :data:`NAME_RESERVED_SECONDS` and refuses
it again the same way, then runs the emulator unchanged.

Run with the emulator's own interpreter (``.venv-tasks/bin/python dev/tasks_emulator.py
start ...``): it imports nothing from this repository.
"""

from __future__ import annotations

import threading
import time
from typing import Any

# Cloud Tasks keeps a task's name reserved for about an hour after the task ran or was deleted.
NAME_RESERVED_SECONDS = 3600.0


def refuse_reused_names() -> None:
    from gcloud_tasks_emulator import server
    from google.api_core.exceptions import AlreadyExists

    create_task = server.QueueState.create_task
    seen: dict[str, float] = {}
    lock = threading.Lock()

    def strict_create_task(self: Any, queue: str, task: Any) -> Any:
        name = task.name
        if name:
            now = time.monotonic()
            with lock:
                created = seen.get(name)
                if created is not None and now - created < NAME_RESERVED_SECONDS:
                    raise AlreadyExists(f"Requested entity already exists: {name}")
                seen[name] = now
        return create_task(self, queue, task)

    server.QueueState.create_task = strict_create_task


if __name__ == "__main__":
    from gcloud_tasks_emulator.__main__ import main

    refuse_reused_names()
    main()
