"""indexes on items.updated_at and item_images.updated_at (the searcher's live-set probes)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 19:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # max(updated_at) and a count of the last seconds' changes run on every similar-by-id
    # request served from the metadata table: index probes, not scans
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_items_updated_at"), ["updated_at"], unique=False)
    with op.batch_alter_table("item_images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_item_images_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("item_images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_item_images_updated_at"))
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_items_updated_at"))
