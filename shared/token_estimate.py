"""Local token estimates, so building a context window costs no network round trip.

Gemini reports exact usage after each turn and that count is stored with the assistant's
message (``token_source = 'reported'``). Everything not yet counted by Gemini is estimated
here, deliberately on the high side so a window built from estimates stays within budget:

* text: one token per 4 characters, Google's rule of thumb for Gemini models
  (https://ai.google.dev/gemini-api/docs/tokens), rounded up, plus 4 tokens of per-turn
  overhead. Text in scripts without spaces (CJK) is denser: one token per character there.
* images: 258 tokens per 768x768 tile; a photo of unknown size is counted as 4 tiles
  (https://ai.google.dev/gemini-api/docs/tokens#multimodal-tokens).
* video: 263 tokens per second, audio: 32 tokens per second; the duration is estimated from
  the file's size (2 Mbit/s video, 128 kbit/s audio) when nothing better is known.
* PDF: 258 tokens per page, at ~100 kB per page.
"""

from __future__ import annotations

import math

TEXT_CHARS_PER_TOKEN = 4
TURN_OVERHEAD_TOKENS = 4
IMAGE_TILE_TOKENS = 258
IMAGE_DEFAULT_TILES = 4
VIDEO_TOKENS_PER_SECOND = 263
VIDEO_BYTES_PER_SECOND = 250_000  # ~2 Mbit/s
AUDIO_TOKENS_PER_SECOND = 32
AUDIO_BYTES_PER_SECOND = 16_000  # ~128 kbit/s
PDF_TOKENS_PER_PAGE = 258
PDF_BYTES_PER_PAGE = 100_000
UNKNOWN_MEDIA_TOKENS = 1_000


def estimate_text_tokens(text: str) -> int:
    """Tokens of a text: ~4 characters each, one per character for CJK-like scripts."""
    if not text:
        return 0
    dense = sum(1 for char in text if ord(char) >= 0x2E80)  # CJK, kana, hangul and beyond
    sparse = len(text) - dense
    return dense + math.ceil(sparse / TEXT_CHARS_PER_TOKEN)


def estimate_media_tokens(mime_type: str, size_bytes: int | None) -> int:
    """Tokens of one media part, from Gemini's published per-image and per-second rates."""
    size = size_bytes or 0
    if mime_type.startswith("image/"):
        return IMAGE_TILE_TOKENS * IMAGE_DEFAULT_TILES
    if mime_type.startswith("video/"):
        seconds = max(1, math.ceil(size / VIDEO_BYTES_PER_SECOND))
        return VIDEO_TOKENS_PER_SECOND * seconds
    if mime_type.startswith("audio/"):
        seconds = max(1, math.ceil(size / AUDIO_BYTES_PER_SECOND))
        return AUDIO_TOKENS_PER_SECOND * seconds
    if mime_type == "application/pdf":
        pages = max(1, math.ceil(size / PDF_BYTES_PER_PAGE))
        return PDF_TOKENS_PER_PAGE * pages
    if mime_type.startswith("text/"):
        return max(1, math.ceil(size / TEXT_CHARS_PER_TOKEN))
    return UNKNOWN_MEDIA_TOKENS


def estimate_message_tokens(text: str, media: list[tuple[str, int | None]]) -> int:
    """Tokens of a whole message: its text, each media part, and the turn's overhead."""
    return (
        TURN_OVERHEAD_TOKENS
        + estimate_text_tokens(text)
        + sum(estimate_media_tokens(mime, size) for mime, size in media)
    )
