"""The task client: asks the summarize function for a rolling summary or a chat's title
through Cloud Tasks.

A task is an HTTP POST to ``SUMMARIZE_URL`` carrying ids only (never message text), with an
OIDC token for ``TASKS_INVOKER_SERVICE_ACCOUNT`` so a private summarize function accepts
it. Its name is derived from the chat and the cut (a title's from the chat alone), so asking
twice for the same summary or title is harmless: Cloud Tasks refuses the second with
ALREADY_EXISTS, which counts as success
(https://cloud.google.com/tasks/docs/reference/rpc/google.cloud.tasks.v2#createtaskrequest).

A chat turn asks for both at once with :func:`request_after_turn`, which only logs a
failure.

google.cloud.tasks_v2 costs ~0.7 s to import, so it is imported on the first enqueue only,
and the client is created once per instance: ahead of time, in the background, by
:func:`warm_client` once a turn that will ask for a title has its first chunk out. Locally
``TASKS_EMULATOR_HOST`` points it at the Cloud Tasks emulator over a plaintext gRPC channel.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

from shared.settings import SettingsError, get_settings

logger = logging.getLogger(__name__)

_client: Any = None
_client_lock = threading.Lock()
_warming = False
_warm_lock = threading.Lock()


def summary_task_id(chat_id: uuid.UUID, cut: int) -> str:
    """The task's name within the queue: one per chat and cut, so duplicates are refused."""
    return f"summary-{chat_id.hex}-{cut}"


def summary_payload(chat_id: uuid.UUID, cut: int) -> dict[str, Any]:
    return {"chat_id": str(chat_id), "cut": cut}


def title_task_id(chat_id: uuid.UUID) -> str:
    """One title task per chat: however many answers ask for it, the chat is titled once."""
    return f"title-{chat_id.hex}"


def title_payload(chat_id: uuid.UUID) -> dict[str, Any]:
    return {"chat_id": str(chat_id), "task": "title"}


def _tasks_client() -> Any:
    global _client
    with _client_lock:
        if _client is None:
            from google.cloud import tasks_v2

            emulator = get_settings().tasks_emulator_host
            if emulator:
                import grpc
                from google.cloud.tasks_v2.services.cloud_tasks.transports import (
                    CloudTasksGrpcTransport,
                )

                channel = grpc.insecure_channel(emulator)
                _client = tasks_v2.CloudTasksClient(
                    transport=CloudTasksGrpcTransport(channel=channel)
                )
            else:
                _client = tasks_v2.CloudTasksClient()
        return _client


def warm_client() -> threading.Thread | None:
    """Create the client in a background thread, unless it exists or is being created; the
    thread, or None when there was nothing to start.

    Called once a turn that will ask for a task when it ends (a new chat's title) has its
    first chunk out, so the import (~0.7 s of CPU) and the client's creation overlap the rest
    of the answer (started earlier, they delayed that first chunk by ~0.1 s). Left
    to the enqueue, they held each worker's first new chat open between ``done`` and the
    response's end (290-370 ms measured: bench/README.md, "Where issue 17 stands: fourth
    round"). A failure here is logged; the enqueue then tries again and logs its own.
    """
    global _warming
    with _warm_lock:
        if _client is not None or _warming:
            return None
        _warming = True
    thread = threading.Thread(target=_warm, name="tasks-client", daemon=True)
    thread.start()
    return thread


def _warm() -> None:
    global _warming
    try:
        _tasks_client()
    except Exception:
        logger.warning("the Cloud Tasks client could not be created ahead", exc_info=True)
        with _warm_lock:
            _warming = False


def request_summary(chat_id: uuid.UUID, cut: int) -> bool:
    """Enqueue a summary of ``chat_id`` through position ``cut``.

    Returns:
        True when a task was created, False when it already existed.

    Raises:
        SettingsError: TASKS_QUEUE or SUMMARIZE_URL is not configured.
        google.api_core.exceptions.GoogleAPICallError: the queue could not be reached.
    """
    created = _create_task(summary_task_id(chat_id, cut), summary_payload(chat_id, cut))
    if created:
        logger.info("summary requested", extra={"chat": str(chat_id), "cut": cut})
    return created


def request_title(chat_id: uuid.UUID) -> bool:
    """Enqueue a generated title for ``chat_id`` (summarize writes it unless the user renamed
    the chat first). Same returns and raises as :func:`request_summary`."""
    created = _create_task(title_task_id(chat_id), title_payload(chat_id))
    if created:
        logger.info("title requested", extra={"chat": str(chat_id)})
    return created


def request_after_turn(chat_id: uuid.UUID, summary_cut: int | None, title: bool) -> None:
    """After a turn's ``done``: a rolling summary through ``summary_cut`` when one is due,
    and a generated title when ``title``.

    Never raises (the turn is over): a task that could not be queued is logged and asked
    for again by a later turn (the summary) or left to the default (the title).
    """
    try:
        if summary_cut is not None:
            request_summary(chat_id, summary_cut)
    except Exception:
        logger.exception("could not ask for a summary", extra={"chat": str(chat_id)})
    try:
        if title:
            request_title(chat_id)
    except Exception:
        logger.exception("could not ask for a title", extra={"chat": str(chat_id)})


def _create_task(task_id: str, payload: dict[str, Any]) -> bool:
    """Create a named task posting ``payload`` to summarize; False when the name exists."""
    from google.api_core import exceptions
    from google.cloud import tasks_v2

    settings = get_settings()
    if not settings.tasks_queue or not settings.summarize_url:
        raise SettingsError("TASKS_QUEUE and SUMMARIZE_URL must be set to request summaries")
    http_request: dict[str, Any] = {
        "http_method": tasks_v2.HttpMethod.POST,
        "url": settings.summarize_url,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(payload).encode(),
    }
    if settings.tasks_invoker_service_account:
        http_request["oidc_token"] = {
            "service_account_email": settings.tasks_invoker_service_account,
            "audience": settings.summarize_url,
        }
    task = {"name": f"{settings.tasks_queue}/tasks/{task_id}", "http_request": http_request}
    try:
        _tasks_client().create_task(parent=settings.tasks_queue, task=task, timeout=10)
    except exceptions.AlreadyExists:
        return False
    return True
