"""Per-user rate limits and usage, kept in Postgres so they hold across every instance.

* Messages per minute: a counter per user per UTC minute (``rate_limit_windows``), bumped
  in the transaction that stores the message; a send over the limit rolls it back, so a
  refused send does not count.
* Tokens per day: Gemini's reported usage summed per user per UTC day (``usage_daily``),
  checked before the model is called and added after it answers.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

from shared.db import Transaction
from shared.errors import RateLimited

# Old minute windows are pruned on roughly one send in this many.
PRUNE_ONE_IN = 50


def seconds_until_next_minute(now: float | None = None) -> int:
    current = time.time() if now is None else now
    return max(1, 60 - int(current) % 60)


def seconds_until_next_utc_day(now: datetime | None = None) -> int:
    current = now or datetime.now(UTC)
    tomorrow = (current + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - current).total_seconds()))


def check_and_count_message(
    tx: Transaction, user_id: str, *, messages_per_minute: int, tokens_per_day: int
) -> None:
    """Count one message against the user's limits, or refuse it with a 429.

    Runs inside the transaction that stores the message, so a refusal (which rolls the
    transaction back) leaves the counters as they were.

    Raises:
        RateLimited: with ``Retry-After`` and a detail naming the limit that was hit.
    """
    row = tx.fetch_one(
        """
        INSERT INTO rate_limit_windows (user_id, window_start, messages)
        VALUES (:user_id, date_trunc('minute', now()), 1)
        ON CONFLICT (user_id, window_start)
        DO UPDATE SET messages = rate_limit_windows.messages + 1
        RETURNING messages,
            (SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM usage_daily
             WHERE user_id = :user_id AND day = (now() AT TIME ZONE 'utc')::date) AS tokens_today
        """,
        user_id=user_id,
    )
    assert row is not None
    if row["messages"] > messages_per_minute:
        raise RateLimited(
            f"Too many messages: the limit is {messages_per_minute} per minute",
            retry_after=seconds_until_next_minute(),
            code="rate_limited_messages",
        )
    if row["tokens_today"] >= tokens_per_day:
        raise RateLimited(
            f"Daily token limit reached: {tokens_per_day} tokens per day (resets at 00:00 UTC)",
            retry_after=seconds_until_next_utc_day(),
            code="rate_limited_tokens",
        )
    if random.randrange(PRUNE_ONE_IN) == 0:
        tx.execute(
            "DELETE FROM rate_limit_windows WHERE user_id = :user_id "
            "AND window_start < now() - interval '1 hour'",
            user_id=user_id,
        )


def record_usage(tx: Transaction, user_id: str, input_tokens: int, output_tokens: int) -> None:
    """Add one answered turn's tokens to the user's usage of the current UTC day."""
    tx.execute(
        """
        INSERT INTO usage_daily (user_id, day, messages, input_tokens, output_tokens)
        VALUES (:user_id, (now() AT TIME ZONE 'utc')::date, 1, :input_tokens, :output_tokens)
        ON CONFLICT (user_id, day) DO UPDATE SET
            messages = usage_daily.messages + 1,
            input_tokens = usage_daily.input_tokens + EXCLUDED.input_tokens,
            output_tokens = usage_daily.output_tokens + EXCLUDED.output_tokens
        """,
        user_id=user_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
