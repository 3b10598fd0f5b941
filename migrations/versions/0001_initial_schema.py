"""Initial schema: users, webhook ids, chats, messages, summaries, uploads, usage.

Ownership cascades: deleting a user removes their chats, uploads and usage; deleting a chat
removes its messages, summaries and media links. Objects in the bucket are not rows: they are
queued in ``storage_deletions`` in the same transaction that removes their rows, and a worker
deletes them off the request path (retrying until done).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


UPGRADE = """
CREATE TABLE users (
    id               text PRIMARY KEY,             -- Clerk's user id, the token's sub
    email            text,
    first_name       text,
    last_name        text,
    image_url        text,
    -- Clerk's own updated_at (ms) of the newest webhook applied: an older event never wins.
    clerk_updated_at bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Svix delivers at least once: each svix-id is recorded in the transaction that applies it.
CREATE TABLE webhook_events (
    svix_id      text PRIMARY KEY,
    event_type   text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_processed_at ON webhook_events (processed_at);

CREATE TABLE chats (
    id            uuid PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title         text NOT NULL DEFAULT 'New Chat',
    -- who chose the title: a generated title never replaces one the user set.
    title_source  text NOT NULL DEFAULT 'default'
                  CHECK (title_source IN ('default', 'user', 'generated')),
    -- the next message's position; incremented under the row lock, so concurrent sends
    -- to one chat get distinct, gap-free positions in arrival order.
    message_count integer NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()   -- last activity
);
-- GET /api/chats: a user's chats, most recently active first, keyset-paged.
CREATE INDEX chats_user_activity ON chats (user_id, updated_at DESC, id DESC);

CREATE TABLE messages (
    id          uuid PRIMARY KEY,
    chat_id     uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position >= 0),
    role        text NOT NULL CHECK (role IN ('user', 'assistant')),
    content     text NOT NULL DEFAULT '',            -- the message's text
    -- every part in order: {"type": "text", "text": ...} or
    -- {"type": "image"|"video"|..., "upload_id": ..., "mime_type": ..., "gcs_uri": ...}
    parts       jsonb NOT NULL DEFAULT '[]'::jsonb,
    token_count integer NOT NULL DEFAULT 0 CHECK (token_count >= 0),
    -- 'reported' when Gemini's usage gave the count, 'estimated' when counted locally
    token_source text NOT NULL DEFAULT 'estimated'
                 CHECK (token_source IN ('estimated', 'reported')),
    status      text NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'incomplete')),
    model       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- also the index of every window and history read: (chat_id, position DESC) scans
    CONSTRAINT messages_chat_position UNIQUE (chat_id, position)
);

CREATE TABLE summaries (
    id                      uuid PRIMARY KEY,
    chat_id                 uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    version                 integer NOT NULL CHECK (version >= 1),
    -- the summary folds in every message with position <= this one
    covers_through_position integer NOT NULL CHECK (covers_through_position >= 0),
    content                 text NOT NULL,
    token_count             integer NOT NULL DEFAULT 0,
    model                   text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT summaries_chat_version UNIQUE (chat_id, version),
    -- at-least-once task delivery: one summary per cut, however often it is delivered
    CONSTRAINT summaries_chat_cut UNIQUE (chat_id, covers_through_position)
);

CREATE TABLE uploads (
    id            uuid PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    bucket        text NOT NULL,
    object_name   text NOT NULL,
    content_type  text NOT NULL,
    declared_size bigint CHECK (declared_size IS NULL OR declared_size >= 0),
    size          bigint,                            -- as found in the bucket
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'uploaded')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    uploaded_at   timestamptz,
    CONSTRAINT uploads_object UNIQUE (bucket, object_name)
);
CREATE INDEX uploads_user ON uploads (user_id, created_at DESC);

-- which chats reference which uploads: deleting a chat deletes the objects no other chat uses
CREATE TABLE chat_uploads (
    chat_id   uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    upload_id uuid NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    PRIMARY KEY (chat_id, upload_id)
);
CREATE INDEX chat_uploads_upload ON chat_uploads (upload_id);

-- bucket work queued in the transaction that removed the rows, done off the request path
CREATE TABLE storage_deletions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket      text NOT NULL,
    object_name text,
    prefix      text,
    attempts    integer NOT NULL DEFAULT 0,
    not_before  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((object_name IS NULL) <> (prefix IS NULL))
);
CREATE INDEX storage_deletions_due ON storage_deletions (not_before);

-- per-user usage by UTC day: the tokens-per-day limit and the usage report
CREATE TABLE usage_daily (
    user_id       text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day           date NOT NULL,
    messages      integer NOT NULL DEFAULT 0,
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);

-- per-user message counts by minute: the messages-per-minute limit, across all instances
CREATE TABLE rate_limit_windows (
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    messages     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, window_start)
);
"""

DOWNGRADE = """
DROP TABLE rate_limit_windows;
DROP TABLE usage_daily;
DROP TABLE storage_deletions;
DROP TABLE chat_uploads;
DROP TABLE uploads;
DROP TABLE summaries;
DROP TABLE messages;
DROP TABLE chats;
DROP TABLE webhook_events;
DROP TABLE users;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
