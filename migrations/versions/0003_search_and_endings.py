"""Conversation controls: full-text search, honest endings, turns in progress.

* ``chats.title_search`` and ``messages.content_search``: generated ``tsvector`` columns
  (Postgres keeps them current on every insert and update) with GIN indexes, for
  ``GET /api/chats?q=``. The ``simple`` configuration lower-cases and splits words without
  stemming or stop words, so it treats every language alike: a German or Polish chat is
  found by its own words, where the ``english`` configuration would stem them wrongly.
* ``messages.finish_reason``: why the model stopped (``stop``, ``max_tokens``, ``safety``,
  ``recitation``, ``other``); NULL for questions, and for answers that ended otherwise
  (model failure, client gone) or were stored before this revision.
* ``messages.streaming_until``: set on an answer placeholder while its turn streams (a
  lease, so a crashed instance cannot leave a chat busy for ever), cleared when it is
  stored. Regenerate and edit refuse a chat with a live lease (409 ``chat_busy``).
* ``chats.rewrites``: how many times regenerate or edit removed messages from the chat. A
  summary built from messages read before a rewrite is not stored after it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


UPGRADE = """
ALTER TABLE chats
    ADD COLUMN title_search tsvector
        GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, title)) STORED;
CREATE INDEX chats_title_search ON chats USING gin (title_search);

ALTER TABLE messages
    ADD COLUMN content_search tsvector
        GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, content)) STORED;
CREATE INDEX messages_content_search ON messages USING gin (content_search);

ALTER TABLE chats ADD COLUMN rewrites integer NOT NULL DEFAULT 0;

ALTER TABLE messages
    ADD COLUMN finish_reason text
        CHECK (finish_reason IN ('stop', 'max_tokens', 'safety', 'recitation', 'other')),
    ADD COLUMN streaming_until timestamptz;
"""

DOWNGRADE = """
ALTER TABLE messages DROP COLUMN streaming_until, DROP COLUMN finish_reason;
DROP INDEX messages_content_search;
ALTER TABLE messages DROP COLUMN content_search;
DROP INDEX chats_title_search;
ALTER TABLE chats DROP COLUMN title_search, DROP COLUMN rewrites;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
