"""Migrations build the schema on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError

from core.db import Base, Item, ItemStatus, make_session_factory, session_scope


def test_upgrade_creates_every_table(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_autogenerate_finds_no_difference(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_json_timestamps_and_unique_external_id(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    with session_scope(sessions) as s:
        s.add(Item(external_id="sku-1", title="Röck — ドレス", attributes={"color": "red", "size": [1, 2]}))
    with session_scope(sessions) as s:
        item = s.scalars(select(Item)).one()
        assert item.attributes == {"color": "red", "size": [1, 2]}
        assert item.title == "Röck — ドレス"
        assert item.status is ItemStatus.ACTIVE
        assert item.created_at.tzinfo is not None
        assert abs(item.created_at - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1)
        found = s.scalars(select(Item).where(Item.attributes["color"].as_string() == "red")).all()
        assert [i.external_id for i in found] == ["sku-1"]
    with pytest.raises(IntegrityError):
        with session_scope(sessions) as s:
            s.add(Item(external_id="sku-1", title="dup"))
