"""What every subcommand needs: settings, and lazily an engine and a session factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import make_engine, make_session_factory


@dataclass
class CliContext:
    settings: Settings
    _cache: dict[str, object] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls) -> CliContext:
        return cls(Settings.from_env())

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)
