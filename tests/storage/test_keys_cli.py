"""``cityos keys create|list|revoke`` against a PostgreSQL database."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from typer.testing import CliRunner

from cityos.cli import app
from cityos.storage import postgres
from cityos.storage.state_stores import open_key_store


def test_keys_commands_work_against_postgres(new_postgres_database: Callable[[], str]) -> None:
    url = new_postgres_database()
    with psycopg.connect(url, autocommit=True) as conn:
        postgres.upgrade_schema(conn)
    runner = CliRunner()
    created = runner.invoke(
        app, ["keys", "create", "--org", "toyama-city", "--role", "operator", "--database", url]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    keys = open_key_store(url)
    try:
        principal = keys.verify(key)
    finally:
        keys.close()
    assert principal is not None and principal.role == "operator"
    listed = runner.invoke(app, ["keys", "list", "--database", url], terminal_width=200)
    assert principal.key_id is not None and principal.key_id in listed.output
    revoked = runner.invoke(app, ["keys", "revoke", principal.key_id, "--database", url])
    assert revoked.exit_code == 0, revoked.output
    keys = open_key_store(url)
    try:
        assert keys.verify(key) is None
    finally:
        keys.close()


def test_keys_command_on_an_unprepared_database_says_what_to_run(
    new_postgres_database: Callable[[], str],
) -> None:
    url = new_postgres_database()
    result = CliRunner().invoke(app, ["keys", "list", "--database", url])
    assert result.exit_code == 2
    assert "cityos db upgrade" in " ".join(result.output.split())
