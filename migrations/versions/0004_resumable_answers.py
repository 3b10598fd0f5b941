"""Resumable answers: a generation that outlives its request, followed and stopped from anywhere.

* ``messages.stop_requested``: set by ``POST .../stop`` (any instance); the instance that
  generates the answer reads it with each progress write (and is told at once by ``NOTIFY``),
  stops the model and stores the answer incomplete with the reason ``stopped``.
* ``messages.error_code``: how an answer that ended with an ``error`` event ended
  (``model_unavailable``, ``server_restarting``...), so a client that resumes the stream after
  the end is told the same as the client that watched it end. NULL for every other answer.
* ``finish_reason`` may also be ``stopped``: the user stopped the generation.

A resumable answer's text grows in ``messages.content`` while it streams (a single-row
update at most every ~250 ms); ``streaming_until`` still says whether it is live.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


UPGRADE = """
ALTER TABLE messages
    ADD COLUMN stop_requested boolean NOT NULL DEFAULT false,
    ADD COLUMN error_code text,
    DROP CONSTRAINT messages_finish_reason_check,
    ADD CONSTRAINT messages_finish_reason_check CHECK (
        finish_reason IN ('stop', 'max_tokens', 'safety', 'recitation', 'other', 'stopped'));
"""

DOWNGRADE = """
UPDATE messages SET finish_reason = NULL WHERE finish_reason = 'stopped';
ALTER TABLE messages
    DROP CONSTRAINT messages_finish_reason_check,
    ADD CONSTRAINT messages_finish_reason_check CHECK (
        finish_reason IN ('stop', 'max_tokens', 'safety', 'recitation', 'other')),
    DROP COLUMN error_code,
    DROP COLUMN stop_requested;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
