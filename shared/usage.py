"""Per-user rate limits and usage, kept in Postgres so they hold across every instance.

* Messages per minute: a counter per user per UTC minute (``rate_limit_windows``), bumped
  in the transaction that stores the message; a send over the limit rolls it back, so a
  refused send does not count.
* Tokens per day: Gemini's reported usage summed per user per UTC day (``usage_daily``),
  checked before the model is called and added after it answers.

The limits are the caller's plan's: the plan is named by a token claim (``PLAN_CLAIM``) and
``PLAN_LIMITS`` maps plan names to limits; a user without a known plan has ``DEFAULT_PLAN``,
whose limits are ``RATE_LIMIT_MESSAGES_PER_MINUTE`` and ``RATE_LIMIT_TOKENS_PER_DAY``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.db import Database, Transaction
from shared.errors import RateLimited
from shared.schemas import UsageLimits, UsageRemaining, UsageReport, UsageResets, UsageToday
from shared.settings import Settings

# Old minute windows are pruned on roughly one send in this many.
PRUNE_ONE_IN = 50


def seconds_until_next_minute(now: float | None = None) -> int:
    current = time.time() if now is None else now
    return max(1, 60 - int(current) % 60)


def seconds_until_next_utc_day(now: datetime | None = None) -> int:
    current = now or datetime.now(UTC)
    tomorrow = (current + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - current).total_seconds()))


@dataclass(frozen=True)
class Plan:
    """The limits that apply to one user."""

    name: str
    messages_per_minute: int
    tokens_per_day: int


def plan_for(settings: Settings, claimed: str | None) -> Plan:
    """The plan a token's claim names; no claim, or a plan not configured: the default plan."""
    name = claimed if claimed in settings.plan_limits else settings.default_plan
    limits = settings.plan_limits.get(name)
    return Plan(
        name=name,
        messages_per_minute=(limits and limits.messages_per_minute)
        or settings.rate_limit_messages_per_minute,
        tokens_per_day=(limits and limits.tokens_per_day) or settings.rate_limit_tokens_per_day,
    )


def check_and_count_message(tx: Transaction, user_id: str, plan: Plan) -> None:
    """Count one message against the user's limits, or refuse it with a 429.

    Runs inside the transaction that stores the message, so a refusal (which rolls the
    transaction back) leaves the counters as they were.

    Raises:
        RateLimited: with ``Retry-After``; the code and the detail name the limit that was
            hit (and the plan it belongs to).
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
    if row["messages"] > plan.messages_per_minute:
        raise _messages_refusal(plan)
    if row["tokens_today"] >= plan.tokens_per_day:
        raise _tokens_refusal(plan)
    if random.randrange(PRUNE_ONE_IN) == 0:
        tx.execute(
            "DELETE FROM rate_limit_windows WHERE user_id = :user_id "
            "AND window_start < now() - interval '1 hour'",
            user_id=user_id,
        )


# The user's tokens of the current UTC day, as a scalar subquery (``:user_id``).
TOKENS_TODAY = """
    (SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM usage_daily
     WHERE user_id = :user_id AND day = (now() AT TIME ZONE 'utc')::date)
"""

# The messages counted in the current minute, as a scalar subquery (``:user_id``).
MINUTE_MESSAGES = """
    (SELECT messages FROM rate_limit_windows
     WHERE user_id = :user_id AND window_start = date_trunc('minute', now()))
"""


def count_message_sql(condition: str = "TRUE") -> str:
    """Count one message against the user's limits (``:user_id``, ``:messages_per_minute``,
    ``:tokens_per_day``) when ``condition`` (SQL) holds, as a data-modifying ``WITH`` clause
    of the statement that stores the message (shared.turn): it returns the minute's new
    count, or no row, and counts nothing, when a limit is reached. :func:`refusal` says which.

    :func:`check_and_count_message` does the same inside a transaction (edits, regenerates).
    """
    return f"""
        INSERT INTO rate_limit_windows (user_id, window_start, messages)
        SELECT :user_id, date_trunc('minute', now()), 1
        WHERE {TOKENS_TODAY} < :tokens_per_day AND {condition}
        ON CONFLICT (user_id, window_start)
        DO UPDATE SET messages = rate_limit_windows.messages + 1
        WHERE rate_limit_windows.messages < :messages_per_minute
        RETURNING messages
    """


def count_params(user_id: str, plan: Plan) -> dict[str, object]:
    """:func:`count_message_sql`'s parameters."""
    return {
        "user_id": user_id,
        "messages_per_minute": plan.messages_per_minute,
        "tokens_per_day": plan.tokens_per_day,
    }


def refusal(plan: Plan, minute_messages: int | None, tokens_today: int) -> RateLimited:
    """Why :func:`count_message_sql` counted nothing, from what the statement saw (its
    :data:`MINUTE_MESSAGES` and :data:`TOKENS_TODAY`): the messages limit when the minute is
    full (or was filled meanwhile by a concurrent send), else the tokens limit."""
    if (minute_messages or 0) < plan.messages_per_minute and tokens_today >= plan.tokens_per_day:
        return _tokens_refusal(plan)
    return _messages_refusal(plan)


def maybe_prune_windows(db: Database, user_id: str) -> None:
    """On roughly one send in :data:`PRUNE_ONE_IN`, drop the user's old minute windows."""
    if random.randrange(PRUNE_ONE_IN) == 0:
        db.write(
            "DELETE FROM rate_limit_windows WHERE user_id = :user_id "
            "AND window_start < now() - interval '1 hour'",
            user_id=user_id,
        )


def _messages_refusal(plan: Plan) -> RateLimited:
    return RateLimited(
        f"Too many messages: the {plan.name} plan allows {plan.messages_per_minute} per minute",
        retry_after=seconds_until_next_minute(),
        code="rate_limited_messages",
    )


def _tokens_refusal(plan: Plan) -> RateLimited:
    return RateLimited(
        f"Daily token limit reached: the {plan.name} plan allows {plan.tokens_per_day} "
        "tokens per day (resets at 00:00 UTC)",
        retry_after=seconds_until_next_utc_day(),
        code="rate_limited_tokens",
    )


def record_usage_sql(condition: str = "TRUE") -> str:
    """Add one answered turn's tokens (``:user_id``, ``:input_tokens``, ``:output_tokens``)
    to the user's usage of the current UTC day, when ``condition`` (SQL) holds: a
    data-modifying ``WITH`` clause of the statement that stores the turn (shared.answers)."""
    return f"""
        INSERT INTO usage_daily (user_id, day, messages, input_tokens, output_tokens)
        SELECT :user_id, (now() AT TIME ZONE 'utc')::date, 1, :input_tokens, :output_tokens
        WHERE {condition}
        ON CONFLICT (user_id, day) DO UPDATE SET
            messages = usage_daily.messages + 1,
            input_tokens = usage_daily.input_tokens + EXCLUDED.input_tokens,
            output_tokens = usage_daily.output_tokens + EXCLUDED.output_tokens
        RETURNING 1
    """


def usage_report(db: Database, user_id: str, plan: Plan) -> UsageReport:
    """``GET /api/usage``: today's usage, the plan's limits, what remains and when it resets.

    One statement reads the current UTC day's totals and the current minute's count together
    with the database's clock, so the report and the limits are judged by the same time.
    """
    row = db.fetch_one(
        """
        SELECT (now() AT TIME ZONE 'utc')::date::text AS day,
               EXTRACT(EPOCH FROM now())::float8 AS now,
               COALESCE(d.messages, 0) AS messages,
               COALESCE(d.input_tokens, 0) AS input_tokens,
               COALESCE(d.output_tokens, 0) AS output_tokens,
               COALESCE(w.messages, 0) AS minute_messages
        FROM (SELECT 1) one
        LEFT JOIN usage_daily d
               ON d.user_id = :user_id AND d.day = (now() AT TIME ZONE 'utc')::date
        LEFT JOIN rate_limit_windows w
               ON w.user_id = :user_id AND w.window_start = date_trunc('minute', now())
        """,
        user_id=user_id,
    )
    assert row is not None
    now = row["now"]
    tokens = int(row["input_tokens"]) + int(row["output_tokens"])
    day_start = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return UsageReport(
        plan=plan.name,
        day=row["day"],
        today=UsageToday(
            messages=row["messages"],
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            total_tokens=tokens,
        ),
        limits=UsageLimits(
            messages_per_minute=plan.messages_per_minute,
            tokens_per_day=plan.tokens_per_day,
        ),
        remaining=UsageRemaining(
            messages_this_minute=max(0, plan.messages_per_minute - row["minute_messages"]),
            tokens_today=max(0, plan.tokens_per_day - tokens),
        ),
        resets_at=UsageResets(
            minute=float(int(now) - int(now) % 60 + 60),
            day=(day_start + timedelta(days=1)).timestamp(),
        ),
    )
