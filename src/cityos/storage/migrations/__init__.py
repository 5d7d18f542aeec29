"""Versioned schema migrations, one SQL file per version and database dialect.

Files are named ``NNNN_description.sql`` under ``postgres/`` and ``sqlite/``; versions
start at 1 and have no gaps. A migration is never edited once released: a change is a
new file. Each backend applies the pending files in order, each in one transaction,
and records the version it reached (see ``upgrade_schema`` in the backend modules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

Dialect = Literal["postgres", "sqlite"]

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One schema step: ``sql`` brings a database from ``version - 1`` to ``version``."""

    version: int
    name: str
    sql: str


class SchemaOutOfDateError(RuntimeError):
    """The database schema is older than this cityos needs and was not to be upgraded."""


def load_migrations(dialect: Dialect) -> list[Migration]:
    """Every migration of ``dialect`` in version order; raise if the files are misnumbered."""
    folder = resources.files(__name__).joinpath(dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations must be numbered 1, 2, ... without gaps")
    return found


def latest_version(dialect: Dialect) -> int:
    """The schema version this cityos expects for ``dialect``."""
    return len(load_migrations(dialect))
