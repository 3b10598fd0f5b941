"""Gemini through google-genai: one client per process, each stream read by its own request.

A chat_stream instance carries many open streams at once and each holds one request thread
(gunicorn's gthread worker). That thread also reads the model's answer: it sends the
``streamGenerateContent`` request and reads the SSE response on a socket of its own
(:mod:`shared.sse_client`, keep-alive connections pooled per process), so a streamed chunk
crosses one thread, from the model's socket to the client's, instead of being handed from
an event loop thread through a queue. While the model is silent the thread wakes up anyway
(the socket is polled with a timeout): it yields a heartbeat every ``heartbeat_seconds`` and
gives up after ``MODEL_TIMEOUT_SECONDS`` of silence.

Stopping a stream (the client disconnected, or we gave up) closes the generator, which
closes the connection to Gemini: no more tokens are read or paid for.

Vertex AI (project and location from settings, the service account's identity) is the
default; a ``GEMINI_API_KEY`` switches to the Gemini API. ``GEMINI_BASE_URL`` points either
at another endpoint (the local stand-in). google-genai is imported on first use (~1.1 s).

google-genai builds the URL and headers, authenticates and raises its errors
(:mod:`shared.gemini_raw`); the body is built as REST JSON once per turn and each streamed
chunk's JSON is read directly, without the SDK's pydantic models (~200 µs of CPU a chunk).
Whole generations (summaries, titles) use the SDK's sync client as they are.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

from shared.gemini_raw import Generation, check_seam, raw_stream, read_chunk
from shared.model_events import (
    Finished,
    Heartbeat,
    ModelError,
    StreamEvent,
    TextChunk,
    finish_reason_of,
)
from shared.settings import Settings
from shared.sse_client import ConnectionPool, ServerSilent

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
    """Streams generations for many request threads, each reading its own stream."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._client: Any = None
        self.pool = ConnectionPool()  # drops its connections after a fork itself
        os.register_at_fork(after_in_child=self._forget_process_state)

    @staticmethod
    def preload() -> None:
        """Import google-genai (~1.1 s) now, at instance start, not in the first request.

        Only the import: functions-framework imports the entry module in gunicorn's master
        and forks the worker afterwards, so clients and connections must be created lazily,
        in the worker (see :meth:`_forget_process_state`).
        """
        import google.genai
        import google.genai.types  # noqa: F401

        check_seam()  # the fast stream path's private SDK API: fail at start, not per stream

    def _forget_process_state(self) -> None:
        """After a fork, drop what belonged to the parent: its client and its HTTP clients."""
        self._lock = threading.Lock()
        self._client = None

    @property
    def client(self) -> Any:
        """The google-genai client, created once. Keep it referenced: it closes on collection."""
        return self._ensure_client()

    def _ensure_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google import genai
                from google.genai import types

                settings = self._settings
                options = types.HttpOptions(
                    base_url=settings.gemini_base_url, **self._shared_tls_args()
                )
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
            return self._client

    def _shared_tls_args(self) -> dict[str, Any]:
        """The SDK's HTTP clients on the stream pool's TLS context: left to itself,
        google-genai builds three (httpx, aiohttp, websockets), each loading the CA bundle,
        0.15-0.18 s of each worker's first turn (bench/README.md, "Where issue 17 stands:
        fourth round"), for clients our streams never use. Not where google-auth says to
        use a client certificate (mTLS): the SDK then loads it into contexts of its own."""
        from google.auth.transport import mtls  # already imported by google-genai

        if mtls.should_use_client_cert():  # type: ignore[no-untyped-call]
            return {}
        context = self.pool.ssl_context()
        return {
            "client_args": {"verify": context},  # httpx
            "async_client_args": {"verify": context, "ssl": context},  # httpx, aiohttp
        }

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
        """One streamed call to one model, read in this thread (see :meth:`stream`)."""
        client = self._ensure_client()
        generation = Generation(
            system_instruction, self._settings.thinking_budget, max_output_tokens
        )
        input_tokens = output_tokens = 0
        api_reason: str | None = None
        prompt_blocked = False
        # Closing this generator (the client left, the turn stopped) closes `batches`, whose
        # socket closes: the model stops generating for us.
        batches = raw_stream(
            client,
            self.pool,
            model,
            contents,
            generation,
            heartbeat_seconds=heartbeat_seconds,
            silence_seconds=float(self._settings.model_timeout_seconds),
        )
        try:
            for batch in batches:
                if not batch:
                    yield Heartbeat()
                    continue
                # The responses that arrived together are sent as one chunk: under load,
                # what has piled up goes out in one write, so a busy instance catches up.
                text = ""
                for response in batch:
                    chunk = read_chunk(response)
                    text += chunk.text
                    input_tokens = chunk.prompt_tokens or input_tokens
                    output_tokens = chunk.output_tokens or output_tokens
                    if chunk.finish_reason:
                        api_reason = chunk.finish_reason
                    if chunk.block_reason:
                        prompt_blocked = True
                        api_reason = chunk.block_reason
                if text:
                    yield TextChunk(text)
        except ServerSilent:
            raise ModelError(
                "The model took too long to answer; please try again.", "unavailable", "timeout"
            ) from None
        except ModelError:
            raise
        except Exception as error:  # every failure is described the same way
            raise _describe_failure(error) from error
        finally:
            batches.close()
        yield Finished(
            input_tokens, output_tokens, finish_reason_of(api_reason), model, prompt_blocked
        )

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

        client = self._ensure_client()
        config = self.generation_config(system_instruction, max_output_tokens)
        if temperature is not None:
            config = config.model_copy(update={"temperature": temperature})
        try:
            response = client.models.generate_content(model=model, contents=contents, config=config)
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


def _text_of(response: Any) -> str:
    """The answer text of a response chunk, without thought parts."""
    if not response.candidates:
        return ""
    content = response.candidates[0].content
    if content is None or not content.parts:
        return ""
    return "".join(part.text for part in content.parts if part.text and not part.thought)
