"""``cityos db copy``: a whole installation from SQLite to PostgreSQL and back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityos.cli import app
from cityos.settings import Settings
from cityos.storage.transfer import TransferError, copy_installation
from tests.storage.installations import dump, fill, sqlite_url


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite installation with every kind of data (see ``fill``); do not write to it."""
    folder = tmp_path_factory.mktemp("copy-source")
    fill(Settings(data_dir=folder, auth="off"))
    return sqlite_url(folder)


def test_sqlite_to_postgres_to_sqlite_gives_equal_data(
    filled: str, new_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    original = dump(filled)
    assert original["history rows"] and original["outbox"] and original["keys"]
    assert original["subscriptions"][0][1]["delivery"]["timesFailed"] > 0
    database = new_postgres_database()
    copy_installation(filled, database)
    assert dump(database) == original
    back = sqlite_url(tmp_path / "back")
    copy_installation(database, back)
    assert dump(back) == original


def test_copy_command_shows_per_table_counts(filled: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["db", "copy", "--from", filled, "--to", sqlite_url(tmp_path)], terminal_width=120
    )
    assert result.exit_code == 0, result.output
    original = dump(filled)
    counts = {
        "entities": sum(len(e) for e in original["entities"].values()),
        "history": len(original["history rows"]),
        "subscriptions": 1,
        "outbox": len(original["outbox"]),
    }
    for kind, count in counts.items():
        assert any(kind in line and f" {count} " in line for line in result.output.splitlines()), (
            kind,
            result.output,
        )


def test_non_empty_target_is_refused_without_force(filled: str, tmp_path: Path) -> None:
    target = sqlite_url(tmp_path)
    copy_installation(filled, target)
    result = CliRunner().invoke(app, ["db", "copy", "--from", filled, "--to", target])
    assert result.exit_code == 2
    assert "--force" in " ".join(result.output.split())


def test_forced_copy_replaces_the_target(filled: str, tmp_path: Path) -> None:
    target = sqlite_url(tmp_path)
    other = tmp_path / "other"
    fill(Settings(data_dir=other, auth="off"))
    copy_installation(sqlite_url(other), target)
    copy_installation(filled, target, force=True)
    assert dump(target) == dump(filled)


def test_forced_copy_replaces_a_postgres_target(
    filled: str, new_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    database = new_postgres_database()
    copy_installation(filled, database)
    copy_installation(filled, database, force=True)
    assert dump(database) == dump(filled)


def test_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="No SQLite database"):
        copy_installation(sqlite_url(tmp_path / "none"), sqlite_url(tmp_path / "target"))
