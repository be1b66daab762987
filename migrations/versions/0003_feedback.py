"""feedback: judgements on (query item, result item) pairs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("query_item_id", sa.Integer(), nullable=False),
        sa.Column("result_item_id", sa.Integer(), nullable=False),
        sa.Column("judgement", sa.Enum("similar", "dissimilar", name="feedbackjudgement", native_enum=False,
                                       length=16), nullable=False),
        sa.Column("source", sa.Enum("merchandiser", "click", "skip", name="feedbacksource", native_enum=False,
                                    length=16), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("created_at", core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["query_item_id"], ["items.id"], name=op.f("fk_feedback_query_item_id_items"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["result_item_id"], ["items.id"], name=op.f("fk_feedback_result_item_id_items"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("query_item_id", "result_item_id", "source",
                            name=op.f("uq_feedback_query_item_id_result_item_id_source")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_result_item_id"), ["result_item_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_result_item_id"))
    op.drop_table("feedback")
