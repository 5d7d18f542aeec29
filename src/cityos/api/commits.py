"""Responses wait for the commits of their writes (group commit, see
``cityos.storage.group_commit``).

The middleware lets the writes of each request be committed in groups, and holds the
response's status line back until every one of them is durable. When one failed, the
client gets that error instead (a ProblemDetails, as if the route had raised it): a
write is never acknowledged before its commit, and never acknowledged if it failed.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.api.problems import problem_response
from cityos.core.errors import CityosError
from cityos.storage.group_commit import acknowledged_after_commit

log = logging.getLogger(__name__)


class AcknowledgeAfterCommit:
    """ASGI middleware: the response of a request is sent once its writes are committed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def send_after_commit(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the body of the response an error replaced
            if message["type"] == "http.response.start" and pending:
                error = await _first_failure(pending)
                pending.clear()
                if error is not None:
                    replaced = True
                    await _problem_of(error, scope)(scope, receive, send)
                    return
            await send(message)

        with acknowledged_after_commit() as pending:
            await self.app(scope, receive, send_after_commit)


async def _first_failure(commits: list[Future[object]]) -> BaseException | None:
    """Wait for every commit; the first error among them, if any."""
    failure: BaseException | None = None
    for commit in commits:
        try:
            await asyncio.wrap_future(commit)
        except Exception as error:
            failure = failure or error
    return failure


def _problem_of(error: BaseException, scope: Scope) -> ASGIApp:
    if isinstance(error, CityosError):
        return problem_response(error)
    log.error("A write of %s %s failed at commit", scope["method"], scope["path"], exc_info=error)
    return problem_response(CityosError("The server hit an unexpected error; it has been logged."))
