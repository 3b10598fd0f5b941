"""What a model call yields and how it fails, independent of the model's SDK.

The Gemini adapter (:mod:`shared.gemini`) produces these; the turn (:mod:`shared.turn`) and the
workers consume them without importing the adapter (nor google-genai). :class:`AnswerChunk`
is the answer's text as a turn (or a followed answer) passes it on, with its offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.schemas import FinishReason


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class AnswerChunk:
    """A piece of the answer, and the answer's length once it is added (its event id)."""

    text: str
    end: int


@dataclass(frozen=True)
class Heartbeat:
    """The model has been silent for a while; the caller may keep the connection alive."""


# Why the model stopped, as the API reports it (Gemini's FinishReason and the prompt's
# BlockedReason, many of them), folded into the few a client can act on.
_FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "max_tokens",
    "SAFETY": "safety",
    "BLOCKLIST": "safety",
    "PROHIBITED_CONTENT": "safety",
    "SPII": "safety",
    "IMAGE_SAFETY": "safety",
    "IMAGE_PROHIBITED_CONTENT": "safety",
    "RECITATION": "recitation",
    "IMAGE_RECITATION": "recitation",
}
BLOCKING_REASONS = frozenset({"safety", "recitation"})


def finish_reason_of(api_reason: str | None) -> FinishReason:
    """Gemini's reason (``"MAX_TOKENS"``...) as one of ours; an unreported one is ``other``."""
    return _FINISH_REASONS.get(api_reason or "", "other")


@dataclass(frozen=True)
class Finished:
    """The end of a generation: its usage, why it stopped and which model answered."""

    input_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    model: str = ""
    prompt_blocked: bool = False  # the input itself was refused: there is no candidate
    retries: int = 0  # calls made before the one that answered (retries and the fallback)

    @property
    def blocked(self) -> bool:
        """The answer was withheld or cut by the model's safety or recitation checks."""
        return self.prompt_blocked or self.finish_reason in BLOCKING_REASONS


StreamEvent = TextChunk | Heartbeat | Finished


# How a model call failed, which decides whether retrying can help:
# busy (429) and unavailable (5xx, timeouts, broken connections) pass; refused (other 4xx)
# will fail the same way again.
FailureKind = Literal["busy", "unavailable", "refused"]


class ModelError(Exception):
    """The model failed; ``detail`` is safe to show the user, ``cause`` is for the logs."""

    def __init__(self, detail: str, kind: FailureKind, cause: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.kind = kind
        self.cause = cause
        self.retries = 0  # calls made before the last one, which failed like this

    @property
    def retryable(self) -> bool:
        return self.kind != "refused"
