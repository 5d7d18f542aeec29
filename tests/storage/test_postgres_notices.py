"""The LISTEN/NOTIFY notice channel on a real PostgreSQL: every notice arrives, whole and
in order, whatever characters it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from cityos.storage.postgres_events import NoticeChannel


def test_a_burst_of_notices_arrives_whole_and_in_order(
    new_postgres_database: Callable[[], str],
) -> None:
    url = new_postgres_database()
    # Characters a text[] literal or a separator could mangle: quotes, backslashes,
    # braces, commas, newlines, NULL-looking text, non-ASCII, and an empty line.
    notices = [
        f'{n}\n{{"v": "a \\"quoted\\" \\\\ {{b,c}} NULL"}}\n富山\n' if n % 2 else f"{n}\n\n\n"
        for n in range(700)
    ]

    async def run() -> list[str]:
        received: list[str] = []
        channel = NoticeChannel(
            url, "cityos_test_notices", on_notice=received.append, on_gap=lambda _: None
        )
        await channel.start()
        try:
            for notice in notices:
                channel.send(notice)
            for _ in range(500):
                if len(received) >= len(notices):
                    break
                await asyncio.sleep(0.01)
        finally:
            await channel.stop()
        return received

    assert asyncio.run(run()) == notices


def test_a_notice_holding_the_batch_separator_is_refused() -> None:
    channel = NoticeChannel(
        "postgresql://unused", "unused", on_notice=lambda _: None, on_gap=lambda _: None
    )
    with pytest.raises(ValueError, match="U\\+001E"):
        channel.send("a\x1eb")
