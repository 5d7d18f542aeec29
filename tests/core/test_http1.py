"""Http1Connection against a real loopback server answering in each framing HTTP/1.1 allows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from cityos.core.http1 import Http1Connection

Respond = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


def serving(answer: bytes, *, close_after: bool = False) -> Respond:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                writer.write(answer)
                await writer.drain()
                if close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    return handle


async def post_twice(handle: Respond) -> list[int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = Http1Connection.for_url(f"http://127.0.0.1:{port}/n")
    try:
        return [
            await connection.post(f"http://127.0.0.1:{port}/n", b"{}", {}, 2.0) for _ in range(2)
        ]
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("answer", "close_after"),
    [
        (b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
        (b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\nbody until close", True),
        (b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", True),
    ],
    ids=["content-length", "chunked", "read-to-close", "peer-closes-idle-connection"],
)
def test_response_framings_keep_the_connection_usable(answer: bytes, close_after: bool) -> None:
    assert asyncio.run(post_twice(serving(answer, close_after=close_after))) == [201, 201]


def test_no_answer_times_out() -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = Http1Connection.for_url(f"http://127.0.0.1:{port}/n")
        try:
            with pytest.raises(TimeoutError):
                await connection.post(f"http://127.0.0.1:{port}/n", b"{}", {}, 0.2)
        finally:
            await connection.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
