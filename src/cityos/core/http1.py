"""A minimal HTTP/1.1 client for sending notifications: one keep-alive connection, POST only.

Why not httpx here: notifications are the broker's hottest outgoing path (one POST
per matched change), and httpx spends several times the CPU of the request itself
per call (h11 parsing, anyio, a failed ``import trio`` probe on every request).
This client does only what notification delivery needs: ``http`` and ``https``
origins, a request with a body, a response read by ``Content-Length``, chunked
encoding or connection close, and keep-alive. No proxies, no redirects (a 3xx is
an answer like any other), no compression.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the peer broke the protocol."""


class Http1Connection:
    """A keep-alive connection to one origin, used by one task at a time.

    Every failure closes the connection; the next request opens a new one.
    """

    def __init__(self, scheme: str, host: str, port: int) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def for_url(cls, url: str) -> Http1Connection:
        """A (not yet opened) connection to the origin of ``url``."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Not an http(s) URL: {url!r}")
        return cls(scheme, parts.hostname, parts.port or (443 if scheme == "https" else 80))

    async def close(self) -> None:
        """Close the connection (if open)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        """POST ``body`` to ``url`` (on this connection's origin); return the status code.

        Raises ``HttpError`` (or ``OSError``, ``TimeoutError``) when no complete
        response arrives within ``timeout_s``; the connection is closed then.
        """
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = 443 if self.scheme == "https" else 80
        host = self.host if self.port == default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not self.host.startswith("["):
            host = f"[{self.host}]" if self.port == default_port else f"[{self.host}]:{self.port}"
        lines = [f"POST {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            async with asyncio.timeout(timeout_s):
                return await self._exchange(head + body)
        except BaseException:
            await self.close()
            raise

    async def _exchange(self, request: bytes) -> int:
        reused = self._writer is not None
        try:
            return await self._round_trip(request)
        except (ConnectionError, asyncio.IncompleteReadError, HttpError):
            if not reused:
                raise
        # The peer may have closed an idle keep-alive connection just before we wrote:
        # one fresh attempt. (A notification delivered twice is allowed, one lost is not.)
        await self.close()
        return await self._round_trip(request)

    async def _round_trip(self, request: bytes) -> int:
        if self._writer is None:
            context = ssl.create_default_context() if self.scheme == "https" else None
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=context
            )
        reader, writer = self._reader, self._writer
        assert reader is not None
        writer.write(request)
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        try:
            version, code = status_line.split(b" ", 2)[:2]
            status = int(code)
        except ValueError:
            raise HttpError(f"Bad status line {status_line!r}") from None
        length: int | None = None
        chunked = False
        close = version == b"HTTP/1.0"
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close" or (close and value != b"keep-alive")
        if status in (204, 304) or 100 <= status < 200:
            pass
        elif chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                await reader.readexactly(size + 2)
        elif length is not None:
            await reader.readexactly(length)
        else:
            await reader.read()
            close = True
        if close:
            await self.close()
        return status
