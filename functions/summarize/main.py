"""summarize: builds a chat's next rolling summary; invoked by Cloud Tasks only.

chat_stream asks for a summary (through :mod:`shared.tasks`) when a chat's tokens not yet
covered by a summary pass ``SUMMARY_TRIGGER_TOKENS``. The task carries ids only:
``{"chat_id": ..., "cut": <position>}``. This function folds the previous summary and the
messages after it, through the cut, into a new summary of about ``SUMMARY_TARGET_TOKENS``,
and stores it as the next version. A chat still titled "New Chat" also gets a short
generated title (a title the user set always wins, also one set while this runs).

A title task, ``{"chat_id": ..., "task": "title"}``, is asked for by chat_stream after a
chat's first complete answer: one small model call titles the chat from its first exchange
(again only while the chat has its default title).

Delivery is at least once, so every outcome is idempotent and the status code tells Cloud
Tasks what to do (https://cloud.google.com/tasks/docs/creating-http-target-tasks#handler):

* 200: done, or nothing to do (already summarised through the cut, chat deleted), or a
  permanent failure (malformed task, the model refusing the input): logged, never retried;
* 429 / 503 with ``Retry-After``: a passing failure (model busy or down, database down):
  Cloud Tasks retries with the queue's backoff.

Deployed, the function is private: only the tasks invoker service account may call it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import functions_framework
from flask import Request, Response

from shared import summaries
from shared.errors import RateLimited, ServiceUnavailable
from shared.gemini import GeminiStreamer
from shared.model_events import ModelError
from shared.runtime import database, make_api, start_function
from shared.schemas import TaskAck
from shared.summaries import Dropped, NothingToDo, SummaryTask, TitleTask, read_task
from shared.telemetry import logs_task, task_attempt, task_queue_delay
from shared.web import json_response

logger = logging.getLogger("raven.summarize")

settings = start_function()
MODEL = GeminiStreamer(settings)
MODEL.preload()


def done(message: str, *, version: int | None = None, title: str | None = None) -> Response:
    return json_response(TaskAck(message=message, version=version, title=title), exclude_none=True)


def task_outcome(response: Response) -> str:
    """``stored``, ``skipped`` (nothing to do) or ``dropped``, from the answer's message."""
    message = str((response.get_json(silent=True) or {}).get("message", ""))
    if message.startswith(("summary stored", "title stored")):
        return "stored"
    return "dropped" if message.startswith("dropped") else "skipped"


def handle_task(request: Request) -> Response:
    """Handle one summary or title task (see the module docstring for the status codes)."""
    raw = request.get_json(silent=True)
    if isinstance(raw, dict) and raw.get("task") == "title":
        return title_chat(request, raw)
    return summarize_chat(request, raw)


@logs_task("summary", task_outcome, queue_delay_s=task_queue_delay, attempt=task_attempt)
def summarize_chat(request: Request, raw: Any) -> Response:
    """Fold the chat's messages through the task's cut into its next summary."""
    task = read_task(raw, SummaryTask, request.headers.get("X-CloudTasks-TaskName"))
    if task is None:
        return done("dropped: malformed task")

    def summarize() -> Response:
        work = summaries.summary_work(database(), task.chat_id, task.cut)
        summary = summaries.write_summary(
            MODEL.generate,
            work,
            model=settings.summary_model,
            target_tokens=settings.summary_target_tokens,
            max_tokens=settings.summary_max_tokens,
        )
        version = summaries.store_summary(database(), work, summary, settings.summary_model)
        return done("summary stored", version=version)

    return answered(task, summarize)


@logs_task("title", task_outcome, queue_delay_s=task_queue_delay, attempt=task_attempt)
def title_chat(request: Request, raw: dict[str, Any]) -> Response:
    """Title a chat still titled by default from its first exchange (one small model call).

    chat_stream asks for it after the first complete answer. The title is written only if
    the chat still has its default title then: a rename by the user, even one made while
    the model was answering, wins.
    """
    task = read_task(raw, TitleTask, request.headers.get("X-CloudTasks-TaskName"))
    if task is None:
        return done("dropped: malformed task")

    def title() -> Response:
        messages = summaries.first_exchange(database(), task.chat_id)
        written = summaries.write_title(MODEL.generate, messages, model=settings.summary_model)
        return done("title stored", title=summaries.store_title(database(), task.chat_id, written))

    return answered(task, title)


def answered(task: SummaryTask | TitleTask, work: Callable[[], Response]) -> Response:
    """``work``'s answer, or how the task ended early: nothing to do, dropped, or the model
    failed (retried by Cloud Tasks when that can help)."""
    try:
        return work()
    except NothingToDo as reason:
        return done(f"nothing to do: {reason}")
    except Dropped as reason:
        return done(f"dropped: {reason}")
    except ModelError as error:
        return model_failure(task, error)


def model_failure(task: SummaryTask | TitleTask, error: ModelError) -> Response:
    """Passing failures are retried by Cloud Tasks (429/503); permanent ones are dropped."""
    logger.warning(
        "summary model call failed", extra={"chat": str(task.chat_id), "cause": error.cause}
    )
    if error.kind == "busy":
        raise RateLimited("The model is busy", retry_after=30, code="model_busy")
    if not error.retryable:
        return done("dropped: the model refused this input")
    raise ServiceUnavailable("The model is unavailable", retry_after=30, code="model_unavailable")


# No bearer token: deployed, Cloud Run's IAM admits only the tasks invoker's OIDC token.
API = make_api("summarize", {"runTask": handle_task})


@functions_framework.http
def summarize(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to summarize_chat."""
    return API.handle(request)
