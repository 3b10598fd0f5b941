"""Gemini through google-genai: one client and one event loop per instance, many streams.

A chat_stream instance carries many open streams at once and each holds one request thread
(gunicorn's gthread worker). The model side runs on a single asyncio loop thread shared by
every stream (google-genai's async client; its aiohttp connector has no connection limit),
so 200 open streams cost 200 request threads plus one, not 400. Each request thread reads
its stream's events from a queue, which also lets it send a heartbeat while the model is
silent and give up after ``MODEL_TIMEOUT_SECONDS`` of silence.

Stopping a stream (the client disconnected, or we gave up) cancels its task on the loop,
which closes the HTTP connection to Gemini: no more tokens are read or paid for.

Vertex AI (project and location from settings, the service account's identity) is the
default; a ``GEMINI_API_KEY`` switches to the Gemini API. ``GEMINI_BASE_URL`` points either
at another endpoint (the local stand-in). google-genai is imported on first use (~1.1 s).

Streams are read through :mod:`shared.gemini_raw`: google-genai builds, authenticates and
sends the request and raises its errors, but each streamed chunk's JSON is read directly
instead of being validated into the SDK's pydantic models (~200 µs of CPU a chunk).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import Future
from typing import Any

from shared.gemini_raw import check_seam, raw_stream, read_chunk
from shared.model_events import (
    Finished,
    Heartbeat,
    ModelError,
    StreamEvent,
    TextChunk,
    finish_reason_of,
)
from shared.settings import Settings

logger = logging.getLogger(__name__)


def _describe_failure(error: BaseException) -> ModelError:
    from google.genai import errors

    if isinstance(error, errors.APIError):
        code = error.code or 0
        if code == 429:
            return ModelError(
                "The model is busy right now; please try again shortly.", "busy", "429"
            )
        if code >= 500:
            return ModelError(
                "The model is unavailable right now; please try again.", "unavailable", str(code)
            )
        return ModelError("The model could not answer this request.", "refused", str(code))
    return ModelError(
        "The connection to the model was interrupted; please try again.",
        "unavailable",
        type(error).__name__,
    )


class GeminiStreamer:
    """Streams generations for many request threads over one per-instance event loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        os.register_at_fork(after_in_child=self._forget_process_state)

    @staticmethod
    def preload() -> None:
        """Import google-genai (~1.1 s) now, at instance start, not in the first request.

        Only the import: functions-framework imports the entry module in gunicorn's master
        and forks the worker afterwards, so threads, event loops and connections must be
        created lazily, in the worker (see :meth:`_forget_process_state`).
        """
        import google.genai
        import google.genai.types  # noqa: F401

        check_seam()  # the fast stream path's private SDK API: fail at start, not per stream

    def _forget_process_state(self) -> None:
        """After a fork, drop what belonged to the parent: its loop thread did not survive."""
        self._lock = threading.Lock()
        self._loop = None
        self._client = None

    @property
    def client(self) -> Any:
        """The google-genai client, created once. Keep it referenced: it closes on collection."""
        self._ensure_started()
        return self._client

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                from google import genai
                from google.genai import types

                settings = self._settings
                options = types.HttpOptions(base_url=settings.gemini_base_url)
                if settings.gemini_api_key:
                    self._client = genai.Client(
                        api_key=settings.gemini_api_key, http_options=options
                    )
                else:
                    self._client = genai.Client(
                        vertexai=True,
                        project=settings.project_id,
                        location=settings.location,
                        http_options=options,
                    )
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True, name="gemini-loop").start()
                self._loop = loop
            return self._loop

    def generation_config(self, system_instruction: str, max_output_tokens: int | None) -> Any:
        from google.genai import types

        return types.GenerateContentConfig(
            system_instruction=system_instruction,
            thinking_config=types.ThinkingConfig(thinking_budget=self._settings.thinking_budget),
            max_output_tokens=max_output_tokens,
        )

    def stream(
        self,
        *,
        model: str,
        system_instruction: str,
        contents: list[dict[str, Any]],
        heartbeat_seconds: float,
        max_output_tokens: int | None = None,
    ) -> Generator[StreamEvent, None, None]:
        """Yield the model's text as it comes, heartbeats while it is silent, then the usage.

        Before the first chunk, a busy or unavailable call is retried with jittered
        exponential backoff while ``GEMINI_RETRY_BUDGET_SECONDS`` lasts, then tried once on
        ``GEMINI_FALLBACK_MODEL`` if one is set. Never after a chunk: the caller has already
        passed it on, and a second answer would repeat it. A call that stayed silent for
        ``MODEL_TIMEOUT_SECONDS`` is not retried either (the user has waited long enough).
        ``Finished.model`` names the model that answered.

        Raises:
            ModelError: the model failed (after any retries), or stayed silent too long.
        """
        settings = self._settings
        deadline = time.monotonic() + settings.gemini_retry_budget_seconds
        fallback = settings.gemini_fallback_model
        attempt = 0
        while True:
            text_sent = False
            try:
                for event in self._stream_once(
                    model, system_instruction, contents, heartbeat_seconds, max_output_tokens
                ):
                    text_sent = text_sent or isinstance(event, TextChunk)
                    if isinstance(event, Finished) and attempt:
                        event = dataclasses.replace(event, retries=attempt)
                    yield event
                return
            except ModelError as error:
                error.retries = attempt
                if text_sent or not error.retryable or error.cause == "timeout":
                    raise
                attempt += 1
                delay = backoff_seconds(attempt)
                if time.monotonic() + delay <= deadline:
                    logger.info(
                        "model call retried",
                        extra={"model": model, "attempt": attempt, "cause": error.cause},
                    )
                    yield from _wait(delay, heartbeat_seconds)
                    continue
                if fallback and fallback != model:
                    logger.warning(
                        "model call falls back",
                        extra={"model": model, "fallback": fallback, "cause": error.cause},
                    )
                    model, fallback, deadline = fallback, None, 0.0  # one try, no retries
                    continue
                raise

    def _stream_once(
        self,
        model: str,
        system_instruction: str,
        contents: list[dict[str, Any]],
        heartbeat_seconds: float,
        max_output_tokens: int | None,
    ) -> Iterator[StreamEvent]:
        """One streamed call to one model (see :meth:`stream`)."""
        loop = self._ensure_started()
        config = self.generation_config(system_instruction, max_output_tokens)
        events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        future: Future[None] = asyncio.run_coroutine_threadsafe(
            self._pump(model, contents, config, events), loop
        )
        idle_limit = float(self._settings.model_timeout_seconds)
        last_activity = time.monotonic()
        try:
            while True:
                silent_for = time.monotonic() - last_activity
                if silent_for >= idle_limit:
                    raise ModelError(
                        "The model took too long to answer; please try again.",
                        "unavailable",
                        "timeout",
                    )
                try:
                    kind, payload = events.get(
                        timeout=min(heartbeat_seconds, idle_limit - silent_for)
                    )
                except queue.Empty:
                    if time.monotonic() - last_activity < idle_limit:
                        yield Heartbeat()
                    continue
                last_activity = time.monotonic()
                if kind == "text":
                    text, (kind, payload) = _coalesce(events, payload)
                    yield TextChunk(text)
                if kind == "done":
                    yield payload
                    return
                if kind == "error":
                    raise _describe_failure(payload)
        finally:
            future.cancel()  # a no-op when done; otherwise stops reading from the model

    async def _pump(
        self,
        model: str,
        contents: list[dict[str, Any]],
        config: Any,
        events: queue.SimpleQueue[tuple[str, Any]],
    ) -> None:
        input_tokens = output_tokens = 0
        api_reason: str | None = None
        prompt_blocked = False
        try:
            # The raw SSE JSON read directly, not the SDK's pydantic models (shared.gemini_raw).
            async for response in raw_stream(self._client, model, contents, config):
                chunk = read_chunk(response)
                if chunk.text:
                    events.put(("text", chunk.text))
                input_tokens = chunk.prompt_tokens or input_tokens
                output_tokens = chunk.output_tokens or output_tokens
                if chunk.finish_reason:
                    api_reason = chunk.finish_reason
                if chunk.block_reason:
                    prompt_blocked = True
                    api_reason = chunk.block_reason
            finished = Finished(
                input_tokens, output_tokens, finish_reason_of(api_reason), model, prompt_blocked
            )
            events.put(("done", finished))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - every failure is reported to the reader
            events.put(("error", error))

    def generate(
        self,
        *,
        model: str,
        system_instruction: str,
        contents: list[dict[str, Any]],
        max_output_tokens: int | None = None,
        temperature: float | None = None,
    ) -> tuple[str, Finished]:
        """One whole (non-streamed) generation, e.g. for summaries and titles."""
        from google.genai import types

        self._ensure_started()
        config = self.generation_config(system_instruction, max_output_tokens)
        if temperature is not None:
            config = config.model_copy(update={"temperature": temperature})
        try:
            response = self._client.models.generate_content(
                model=model, contents=contents, config=config
            )
        except Exception as error:
            raise _describe_failure(error) from error
        usage = response.usage_metadata or types.GenerateContentResponseUsageMetadata()
        reason = response.candidates[0].finish_reason if response.candidates else None
        return _text_of(response), Finished(
            usage.prompt_token_count or 0,
            usage.candidates_token_count or 0,
            finish_reason_of(str(reason.value) if reason else None),
            model,
        )


# Backoff between retries: doubling from BACKOFF_BASE_SECONDS up to BACKOFF_CAP_SECONDS, each
# wait drawn between half and all of it ("equal jitter"), so instances that failed together do
# not all come back at the same moment.
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 2.0


def backoff_seconds(attempt: int) -> float:
    """The wait before retry number ``attempt`` (1, 2, ...)."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _wait(seconds: float, heartbeat_seconds: float) -> Iterator[Heartbeat]:
    """Sleep ``seconds``, yielding a heartbeat every ``heartbeat_seconds`` of it."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, heartbeat_seconds))
        if time.monotonic() < end:
            yield Heartbeat()


def _coalesce(events: queue.SimpleQueue[tuple[str, Any]], text: str) -> tuple[str, tuple[str, Any]]:
    """Join the text chunks already waiting behind ``text``; return it and the next event.

    Under load this sends what has piled up as one chunk (one wake-up and one write instead
    of many), so a busy instance catches up instead of falling further behind. The next
    event is ``("none", None)`` when nothing else was waiting.
    """
    while True:
        try:
            kind, payload = events.get_nowait()
        except queue.Empty:
            return text, ("none", None)
        if kind != "text":
            return text, (kind, payload)
        text += payload


def _text_of(response: Any) -> str:
    """The answer text of a response chunk, without thought parts."""
    if not response.candidates:
        return ""
    content = response.candidates[0].content
    if content is None or not content.parts:
        return ""
    return "".join(part.text for part in content.parts if part.text and not part.thought)
