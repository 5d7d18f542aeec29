"""The intake: where transports hand in messages, and the loop that batches them.

Transports (the MQTT network thread, HTTP request handlers on the event loop) call
:meth:`Intake.submit` with a message and a completion callback. One task on the event
loop takes whatever is waiting (at most ``batch_size`` messages: natural batching, so
a quiet system answers at once and a busy one writes large batches), runs the
pipeline's one transaction over it, and only then calls each message's callback with
its outcome: that is where MQTT sends its PUBACK and HTTP its 2xx. Storage is called on
the event-loop thread like every other storage call in cityos.

When storage fails (database down, disk full) nothing was committed: the batch is kept,
retried after a pause, and no message is acknowledged until it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cityos.ingest.model import IngestError, RawMessage
from cityos.ingest.pipeline import Outcome, Pipeline

log = logging.getLogger(__name__)

Completion = Callable[[Outcome], None]
"""Called on the event-loop thread once the message's outcome is committed."""


@dataclass(frozen=True, slots=True)
class Submission:
    """A message waiting for the next batch. ``refused``: the transport already refused
    it (kept as a dead letter only); ``announced_size``: the size the sender announced
    when the body was not read whole."""

    raw: RawMessage
    done: Completion
    refused: IngestError | None = None
    announced_size: int | None = None


class Intake:
    """Batches submitted messages through a :class:`Pipeline` (see the module doc)."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        batch_size: int = 500,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.retry_delay_s = retry_delay_s
        self._waiting: deque[Submission] = deque()
        self._signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    # -- producers (any thread) -------------------------------------------------------

    def submit(self, submission: Submission) -> None:
        """Queue a message for the next batch; safe from any thread."""
        self._waiting.append(submission)
        with self._lock:
            if self._signalled or self._loop is None:
                return
            self._signalled = True
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            assert self._wake is not None
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._set_wake)

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def process_now(self, submission: Submission) -> Outcome:
        """Submit from the event loop and wait for the committed outcome (HTTP)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        self.submit(Submission(submission.raw, done, submission.refused, submission.announced_size))
        return await future

    @property
    def backlog(self) -> int:
        """Messages waiting for a batch."""
        return len(self._waiting)

    # -- the batch loop (event-loop thread) ------------------------------------------

    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="cityos-ingest-intake")
        if self._waiting:
            self._wake.set()

    async def stop(self) -> None:
        """Process what is waiting, then stop the loop."""
        if self._task is None:
            return
        await self.drain()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._loop = None

    async def drain(self) -> None:
        """Return once nothing is waiting (tests, shutdown)."""
        while self._waiting and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                self._signalled = False
            while self._waiting:
                batch = self._take()
                await self._process(batch)
                # Let requests and other tasks in between batches.
                await asyncio.sleep(0)

    def _take(self) -> list[Submission]:
        batch: list[Submission] = []
        waiting = self._waiting
        while waiting and len(batch) < self.batch_size:
            batch.append(waiting.popleft())
        return batch

    async def _process(self, batch: list[Submission]) -> None:
        while True:
            try:
                outcomes = self.pipeline.process(
                    [item.raw for item in batch],
                    refused=[item.refused for item in batch],
                    announced_sizes=[item.announced_size for item in batch],
                )
            except Exception:
                log.exception(
                    "Storing a batch of %d messages failed; retrying in %.1f s "
                    "(nothing was acknowledged)",
                    len(batch),
                    self.retry_delay_s,
                )
                await asyncio.sleep(self.retry_delay_s)
                continue
            break
        for item, outcome in zip(batch, outcomes, strict=True):
            try:
                item.done(outcome)
            except Exception:
                log.exception("Acknowledging a message failed")
