"""image_signatures: near-duplicate signatures of photos, by content hash

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "image_signatures",
        sa.Column("media_key", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("thumbnail", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("media_key", name=op.f("pk_image_signatures")),
    )


def downgrade() -> None:
    op.drop_table("image_signatures")
