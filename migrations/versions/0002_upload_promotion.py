"""Uploads are checked and promoted at first use: their permanent name, or why they were refused.

The browser PUTs a file to ``incoming/<user>/<upload id>/<name>`` (``object_name``, what the
client knows and references); a bucket lifecycle rule empties ``incoming/`` after a day. The
first reference checks the object (size, type, magic numbers) and either copies it to
``uploads/<user>/<upload id>/<name>`` (``permanent_name``, what messages store and Gemini
reads) or deletes it and records the refusal (state ``rejected``, with the error's code and
detail so that a later reference is refused the same way). Rows from before this revision
keep ``permanent_name`` NULL: their object already lives under ``uploads/``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE uploads
    ADD COLUMN permanent_name  text,
    ADD COLUMN rejected_code   text,
    ADD COLUMN rejected_detail text,
    ADD CONSTRAINT uploads_permanent_name UNIQUE (bucket, permanent_name),
    DROP CONSTRAINT uploads_state_check,
    ADD CONSTRAINT uploads_state_check CHECK (state IN ('pending', 'uploaded', 'rejected')),
    ADD CONSTRAINT uploads_rejection CHECK ((state = 'rejected') = (rejected_code IS NOT NULL));
"""

DOWNGRADE = """
DELETE FROM uploads WHERE state = 'rejected';
UPDATE uploads SET object_name = permanent_name WHERE permanent_name IS NOT NULL;
ALTER TABLE uploads
    DROP CONSTRAINT uploads_rejection,
    DROP CONSTRAINT uploads_state_check,
    ADD CONSTRAINT uploads_state_check CHECK (state IN ('pending', 'uploaded')),
    DROP CONSTRAINT uploads_permanent_name,
    DROP COLUMN rejected_detail,
    DROP COLUMN rejected_code,
    DROP COLUMN permanent_name;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
