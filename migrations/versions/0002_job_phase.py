"""jobs.phase: which step a multi-step job (reindex) is in

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phase", sa.Enum("", "embedding", "building", "verifying", "publishing",
                                                       name="jobphase", native_enum=False, create_constraint=False,
                                                       length=16),
                                      nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("phase")
