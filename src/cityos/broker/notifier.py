"""Notification delivery off the write path: match changes, persist, deliver with retries.

Flow: the ``ObservedStorage`` listener (:meth:`Notifier.on_changes`) only appends the
committed changes to a list and wakes the dispatcher task. The dispatcher matches
everything that piled up against the subscriptions, renders the notifications and
writes them to the outbox (SQLite) in one transaction, then hands them to the
queue of their endpoint. Each endpoint (notification URI) has its own connection
pool and ``lanes`` sender tasks; a subscription always uses the same lane, which
sends serially, so the notifications of a subscription (hence of an entity) arrive
in order. A slow, hung or dead endpoint occupies only its own lanes and pool.

Delivery is at-least-once. A row leaves the outbox only after the endpoint accepted
it; the deletions, and the subscriptions' delivery status, are written in batches
every ``settle_interval_s`` (one transaction), so a crash may deliver again what was
delivered in the last moments before it. Failures are retried with exponential
back-off: connection errors, timeouts, 408, 429 and 5xx until they succeed (the
endpoint is unreachable, not wrong); any other answer up to ``max_attempts``. The
queue of an endpoint is bounded: past ``queue_limit`` waiting notifications the
oldest waiting one is dropped (logged and deleted from the outbox), so a dead
endpoint cannot fill memory or disk; an endpoint that keeps up never loses one.

With a shared store (several processes on one PostgreSQL) each process notifies the
writes it made itself, renews its lease on its outbox rows, takes over the rows of
processes that died, sends periodic notifications only while it leads, and asks the
store before a throttled notification (see ``storage.postgres_subscriptions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from cityos.broker.changes import EntityChange
from cityos.broker.join import render_joined
from cityos.broker.model import StoredEntity
from cityos.broker.representation import render_entity
from cityos.broker.service import ContextBroker, EntityQuery
from cityos.broker.subscriptions import (
    ChangeSummary,
    Subscription,
    SubscriptionRegistry,
    entity_matches_query,
    match_change,
    render_change,
    summarise_change,
)
from cityos.core.errors import CityosError
from cityos.core.http1 import Http1Connection
from cityos.core.timeutil import format_datetime, now_utc
from cityos.storage.subscriptions import DeliveryReport, OutboxRow, SubscriptionStore

log = logging.getLogger(__name__)

CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
_Key = tuple[str, str]


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry and queue limits of the notifier."""

    max_attempts: int = 5
    """Attempts at a notification the endpoint refuses (4xx other than 408 and 429)."""
    first_retry_s: float = 0.5
    max_retry_s: float = 30.0
    timeout_s: float = 5.0
    queue_limit: int = 10_000
    """Waiting notifications per endpoint before the oldest are dropped."""
    lanes: int = 8
    """Sender tasks (and connections) per endpoint."""
    settle_interval_s: float = 0.2
    """How often deliveries are written back (outbox deletions, delivery status)."""
    dispatch_slice: int = 64
    """Commits matched and persisted per outbox transaction before yielding to senders."""
    coordination_interval_s: float = 2.5
    """Shared stores: how often the lease is renewed, dead processes' rows taken over
    and the leadership of periodic notifications checked (well under the lease)."""


def notification_body(sub: Subscription, data: list[dict[str, Any]]) -> dict[str, Any]:
    """A Notification (5.2.19); with ``accept: application/ld+json`` it carries @context."""
    assert sub.rules is not None and sub.notify_ctx is not None
    body: dict[str, Any] = {
        "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
        "type": "Notification",
        "subscriptionId": sub.id,
        "notifiedAt": format_datetime(now_utc()),
        "data": data,
    }
    if sub.rules.endpoint.accept == "application/ld+json":
        # As in a JSON-LD query response, every entity carries the @context too.
        context = (
            sub.jsonld_context if sub.jsonld_context is not None else sub.notify_ctx.context_value
        )
        body["@context"] = context
        body["data"] = [{**entity, "@context": context} for entity in data]
    return body


@dataclass
class _Queued:
    """One persisted notification waiting for delivery."""

    seq: int
    key: _Key
    payload: bytes


class _Endpoint:
    """The queue, lanes and connection pool of one notification URI."""

    def __init__(self, lanes: int) -> None:
        self.queues: list[deque[_Queued]] = [deque() for _ in range(lanes)]
        self.wake: list[asyncio.Event] = [asyncio.Event() for _ in range(lanes)]
        self.tasks: list[asyncio.Task[None]] = []
        # Connections per lane (by origin): nothing is shared between endpoints, so a
        # hung endpoint holding its connections cannot starve the others of theirs.
        self.connections: list[dict[str, Http1Connection]] = [{} for _ in range(lanes)]

    async def close(self) -> None:
        for connections in self.connections:
            for connection in connections.values():
                await connection.close()

    def waiting(self) -> int:
        return sum(len(q) for q in self.queues)


class Notifier:
    """Matches entity changes to subscriptions and delivers the notifications."""

    def __init__(
        self,
        store: SubscriptionStore,
        registry: SubscriptionRegistry,
        broker: ContextBroker,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.broker = broker
        self.policy = policy or DeliveryPolicy()
        self._changes: list[list[EntityChange]] = []
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._endpoints: dict[str, _Endpoint] = {}
        self._periodic: dict[_Key, asyncio.Task[None]] = {}
        self._settled: list[int] = []
        self._reports: dict[_Key, DeliveryReport] = {}
        self._leading = not store.shared
        self._dropped: dict[str, int] = {}
        self.dropped_total = 0
        """Notifications dropped from full queues since start (all endpoints)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the dispatcher, requeue the persisted outbox, start periodic tasks."""
        self._wake = asyncio.Event()
        self._take_over(self.store.take_over_outbox())
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="notifier-dispatch"),
            asyncio.create_task(self._settle_loop(), name="notifier-settle"),
        ]
        if self.store.shared:
            self._leading = self.store.lead_periodic()
            self._tasks.append(
                asyncio.create_task(self._coordinate_loop(), name="notifier-coordinate")
            )
        for sub in self.registry.all():
            self.watch(sub)

    def _take_over(self, rows: list[OutboxRow]) -> None:
        """Queue outbox rows this process now owns (those of unknown subscriptions go)."""
        for row in rows:
            sub = self.registry.get(row.tenant, row.subscription_id)
            if sub is None:
                self._settled.append(row.seq)
            else:
                self._queue(sub, _Queued(row.seq, (row.tenant, row.subscription_id), row.payload))

    async def _coordinate_loop(self) -> None:
        """Shared stores: keep the lease, take over orphaned rows, follow the leadership.

        The store calls run on a worker thread: a slow database must not stall the
        event loop (deliveries and requests) for their duration."""
        while True:
            await asyncio.sleep(self.policy.coordination_interval_s)
            try:
                if not await asyncio.to_thread(self.store.renew_lease):
                    log.warning("The notifier's lease had run out; dropping rows taken over")
                    await self._drop_lost_rows()
                self._take_over(await asyncio.to_thread(self.store.take_over_outbox))
                self._leading = await asyncio.to_thread(self.store.lead_periodic)
            except Exception:
                log.exception("Coordinating notification delivery with other processes failed")

    async def _drop_lost_rows(self) -> None:
        """Remove from the queues the rows another process took over from this one."""
        waiting = [
            item.seq
            for endpoint in self._endpoints.values()
            for queue in endpoint.queues
            for item in queue
        ]
        owned = await asyncio.to_thread(self.store.owned, waiting)
        for endpoint in self._endpoints.values():
            for queue in endpoint.queues:
                kept = [item for item in queue if item.seq in owned]
                queue.clear()
                queue.extend(kept)

    async def stop(self) -> None:
        """Cancel every task and save what was delivered; the rest stays in the outbox."""
        tasks = [*self._tasks, *self._periodic.values()]
        for endpoint in self._endpoints.values():
            tasks.extend(endpoint.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._periodic.clear()
        self.settle()
        for endpoint in self._endpoints.values():
            await endpoint.close()
        self._endpoints.clear()
        try:
            # Another process may deliver what is left at once, not after the lease.
            self.store.release()
        except Exception:
            log.exception("Releasing the outbox lease failed; it runs out by itself")

    def watch(self, sub: Subscription) -> None:
        """(Re)start the periodic task of a subscription after it was created or changed."""
        key = (sub.tenant, sub.id)
        if self._wake is None:
            return
        periodic = self._periodic.pop(key, None)
        if periodic is not None:
            periodic.cancel()
        assert sub.rules is not None
        if sub.rules.time_interval_s is not None:
            self._periodic[key] = asyncio.create_task(
                self._periodic_loop(key, sub.rules.time_interval_s)
            )

    def unwatch(self, tenant: str, sub_id: str) -> None:
        """Stop the periodic task of a deleted subscription; its queued notifications
        are skipped when their turn comes."""
        task = self._periodic.pop((tenant, sub_id), None)
        if task is not None:
            task.cancel()
        self._reports.pop((tenant, sub_id), None)

    def pending_report(self, tenant: str, sub_id: str) -> DeliveryReport | None:
        """Delivery attempts made for the subscription and not yet written to the store."""
        return self._reports.get((tenant, sub_id))

    def settle(self) -> None:
        """Write the pending outbox deletions and delivery statuses (one transaction)."""
        for uri, count in self._dropped.items():
            log.warning(
                "Endpoint %s: queue full, dropped the %d oldest notification(s)", uri, count
            )
            self.dropped_total += count
        self._dropped.clear()
        seqs, self._settled = self._settled, []
        reports, self._reports = self._reports, {}
        current = []
        for key, report in reports.items():
            sub = self.registry.get(*key)
            if sub is None:
                continue
            if not self.store.shared:
                report.record = sub.to_record()
            current.append(report)
        try:
            self.store.settle(seqs, current)
        except Exception:
            log.exception("Saving notification outcomes failed; retrying later")
            self._settled.extend(seqs)
            for key, report in reports.items():
                newer = self._reports.get(key)
                self._reports[key] = report if newer is None else _combine(report, newer)

    async def _settle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.settle_interval_s)
            self.settle()

    # ------------------------------------------------------------------- matching

    def on_changes(self, changes: list[EntityChange]) -> None:
        """``ObservedStorage`` listener: queue the changes; nothing else on the write path."""
        if not len(self.registry) or self._wake is None:
            return
        self._changes.append(changes)
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batches, self._changes = self._changes, []
            # In slices, yielding in between: after a stall the backlog would otherwise
            # keep the senders (and the writers' requests) waiting until all of it is done.
            for start in range(0, len(batches), self.policy.dispatch_slice):
                matched: list[dict[_Key, list[list[dict[str, Any]]]]] = []
                for changes in batches[start : start + self.policy.dispatch_slice]:
                    try:
                        matched.append(self.match(changes))
                    except Exception:
                        log.exception(
                            "Matching %d change(s) against subscriptions failed", len(changes)
                        )
                try:
                    self._enqueue(matched)
                except Exception:
                    log.exception("Queueing notifications failed")
                await asyncio.sleep(0)

    def match(self, changes: list[EntityChange]) -> dict[_Key, list[list[dict[str, Any]]]]:
        """The notification data one commit's changes give each subscription: a list of
        notifications (each a list of entities), a new one whenever an entity repeats so
        that its states arrive in order."""
        now = now_utc()
        per_sub: dict[_Key, list[list[dict[str, Any]]]] = {}
        seen: dict[_Key, set[str]] = {}
        for change in changes:
            entity = change.after if change.after is not None else change.before
            assert entity is not None
            candidates = self.registry.candidates(
                change.tenant, entity.get("type", []), change.entity_id
            )
            if not candidates:
                continue
            summary: ChangeSummary | None = None
            for sub in candidates:
                rules = sub.rules
                if rules is None or rules.time_interval_s is not None:
                    continue
                if sub.state(now) != "active":
                    continue
                summary = summary or summarise_change(change)
                match = match_change(rules, change, summary)
                if match is None:
                    continue
                data = render_change(sub, change, match, now, self._fetch(change.tenant))
                if not data:
                    continue
                key = (sub.tenant, sub.id)
                groups = per_sub.setdefault(key, [[]])
                ids = seen.setdefault(key, set())
                if change.entity_id in ids:
                    groups.append([])
                    ids.clear()
                ids.add(change.entity_id)
                groups[-1].extend(data)
        return per_sub

    def _enqueue(self, matched: list[dict[_Key, list[list[dict[str, Any]]]]]) -> None:
        """Persist the notifications in one transaction, then queue them for delivery."""
        pending: list[tuple[Subscription, _Key, list[dict[str, Any]]]] = []
        throttled: dict[_Key, tuple[Subscription, float | None, float]] = {}
        mono = time.monotonic()
        for per_sub in matched:
            for key, groups in per_sub.items():
                sub = self.registry.get(*key)
                if sub is None or sub.rules is None:
                    continue
                throttling = sub.rules.throttling_s
                for data in groups:
                    if not data:
                        continue
                    if throttling is not None:
                        if sub.last_notified is not None and mono - sub.last_notified < throttling:
                            continue
                        throttled.setdefault(key, (sub, sub.last_notified, throttling))
                        sub.last_notified = mono
                    pending.append((sub, key, data))
        if throttled and self.store.shared:
            allowed = self.store.claim_throttle(
                [(*key, period) for key, (_, _, period) in throttled.items()]
            )
            for key, (sub, before, _) in throttled.items():
                if key not in allowed:
                    # Another process notified within the period; its time is not ours.
                    sub.last_notified = before
            pending = [p for p in pending if p[1] not in throttled or p[1] in allowed]
        if not pending:
            return
        payloads = [orjson.dumps(notification_body(sub, data)) for sub, _, data in pending]
        seqs = self.store.enqueue(
            [
                (key[0], key[1], payload)
                for (_, key, _), payload in zip(pending, payloads, strict=True)
            ]
        )
        for (sub, key, _), seq, payload in zip(pending, seqs, payloads, strict=True):
            self._queue(sub, _Queued(seq, key, payload))

    def _queue(self, sub: Subscription, item: _Queued) -> None:
        """Put a persisted notification on its endpoint's lane, dropping the oldest
        waiting one of that lane when the endpoint's queue is full."""
        assert sub.rules is not None
        uri = sub.rules.endpoint.uri
        endpoint = self._endpoints.get(uri)
        if endpoint is None:
            endpoint = self._endpoints[uri] = self._open_endpoint()
        lane = hash(item.key) % len(endpoint.queues)
        queue = endpoint.queues[lane]
        if endpoint.waiting() >= self.policy.queue_limit and queue:
            self._settled.append(queue.popleft().seq)
            # Counted, and logged by settle(): a dead endpoint drops one per change.
            self._dropped[uri] = self._dropped.get(uri, 0) + 1
        queue.append(item)
        endpoint.wake[lane].set()

    def _open_endpoint(self) -> _Endpoint:
        policy = self.policy
        endpoint = _Endpoint(policy.lanes)
        endpoint.tasks = [
            asyncio.create_task(self._deliver_loop(endpoint, lane)) for lane in range(policy.lanes)
        ]
        return endpoint

    def _fetch(self, tenant: str) -> Any:
        def fetch(ids: set[str]) -> dict[str, StoredEntity]:
            return self.broker.storage.get_many(tenant, sorted(ids))

        return fetch

    async def _periodic_loop(self, key: _Key, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            sub = self.registry.get(*key)
            if sub is None:
                return
            if not self._leading:
                continue
            try:
                self._notify_periodically(sub)
            except Exception:
                log.exception("Periodic notification of %s failed", sub.id)

    def _notify_periodically(self, sub: Subscription) -> None:
        rules = sub.rules
        assert rules is not None and sub.notify_ctx is not None
        if sub.state(now_utc()) != "active":
            return
        query = EntityQuery(
            selectors=rules.selectors,
            q=rules.q,
            scope_q=rules.scope_q,
            geo=rules.geo,
            geo_attr=rules.geo_attr,
            limit=self.broker.max_limit,
        )
        try:
            entities = self.broker.query_entities(sub.tenant, query).entities
        except CityosError:
            return
        entities = [e for e in entities if entity_matches_query(rules, e)]
        if not entities:
            return
        compact = sub.notify_ctx.compact
        if rules.join is not None:
            data = render_joined(
                entities, compact, rules.render, rules.join, self._fetch(sub.tenant)
            )
        else:
            data = [render_entity(e, compact, rules.render) for e in entities]
        self._enqueue([{(sub.tenant, sub.id): [data]}])

    # ------------------------------------------------------------------- delivery

    async def _deliver_loop(self, endpoint: _Endpoint, lane: int) -> None:
        queue, event = endpoint.queues[lane], endpoint.wake[lane]
        policy = self.policy
        while True:
            if not queue:
                event.clear()
                await event.wait()
                continue
            item = queue.popleft()
            attempt = 0
            while True:
                sub = self.registry.get(*item.key)
                if sub is None:
                    break
                failure = await self._send(sub, endpoint.connections[lane], item.payload)
                if failure is None:
                    break
                attempt += 1
                if not failure and attempt >= policy.max_attempts:
                    log.warning(
                        "Subscription %s: giving up a notification after %d attempts",
                        sub.id,
                        attempt,
                    )
                    break
                await asyncio.sleep(
                    min(policy.max_retry_s, policy.first_retry_s * 2 ** min(attempt - 1, 30))
                )
            self._settled.append(item.seq)

    async def _send(
        self, sub: Subscription, connections: dict[str, Http1Connection], payload: bytes
    ) -> bool | None:
        """Send one notification and record the outcome in the subscription's status.

        ``None``: delivered; ``True``: a transient failure (worth retrying until it
        works); ``False``: the endpoint refused it.
        """
        rules = sub.rules
        assert rules is not None
        target = rules.endpoint
        sent_at = format_datetime(now_utc())
        failure: bool | None = None
        try:
            if target.scheme in ("mqtt", "mqtts"):
                await self._publish_mqtt(sub, payload)
            else:
                status = await self._post_http(sub, connections, payload)
                if not 200 <= status < 300:
                    failure = status in (408, 429) or status >= 500
                    log.info("Notification of %s to %s: HTTP %d", sub.id, target.uri, status)
        except Exception as exc:
            log.info("Notification of %s to %s failed: %r", sub.id, target.uri, exc)
            failure = True
        delivery = sub.delivery
        delivery.times_sent += 1
        delivery.last_notification = sent_at
        if failure is None:
            delivery.last_success = sent_at
            delivery.status = "ok"
        else:
            delivery.times_failed += 1
            delivery.last_failure = sent_at
            delivery.status = "failed"
        key = (sub.tenant, sub.id)
        report = self._reports.get(key)
        if report is None:
            report = self._reports[key] = DeliveryReport(sub.tenant, sub.id)
        report.add_attempt(sent_at, ok=failure is None)
        return failure

    def _headers(self, sub: Subscription) -> dict[str, str]:
        assert sub.rules is not None and sub.notify_ctx is not None
        endpoint = sub.rules.endpoint
        headers: dict[str, str] = {}
        if endpoint.accept == "application/ld+json":
            headers["Content-Type"] = "application/ld+json"
        else:
            headers["Content-Type"] = "application/json"
            url = sub.jsonld_context or sub.notify_ctx.link_url
            headers["Link"] = f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
        if sub.tenant:
            headers["NGSILD-Tenant"] = sub.tenant
        for key, value in endpoint.receiver_info:
            headers[key] = value
        return headers

    async def _post_http(
        self, sub: Subscription, connections: dict[str, Http1Connection], payload: bytes
    ) -> int:
        assert sub.rules is not None
        endpoint = sub.rules.endpoint
        connection = Http1Connection.for_url(endpoint.uri)
        origin = f"{connection.scheme}://{connection.host}:{connection.port}"
        connection = connections.setdefault(origin, connection)
        return await connection.post(
            endpoint.uri,
            payload,
            self._headers(sub),
            endpoint.timeout_s or self.policy.timeout_s,
        )

    async def _publish_mqtt(self, sub: Subscription, payload: bytes) -> None:
        assert sub.rules is not None
        endpoint = sub.rules.endpoint
        message = orjson.dumps({"metadata": self._headers(sub), "body": orjson.loads(payload)})
        info = dict(endpoint.notifier_info)
        qos = int(info.get("MQTT-QoS", "0"))
        version = info.get("MQTT-Version", "mqtt3.1.1")
        timeout_s = endpoint.timeout_s or self.policy.timeout_s
        await asyncio.to_thread(publish_mqtt, endpoint.uri, message, qos, version, timeout_s)


def _combine(older: DeliveryReport, newer: DeliveryReport) -> DeliveryReport:
    """One report of two consecutive ones of the same subscription (a settle that failed
    and the attempts made since)."""
    return DeliveryReport(
        newer.tenant,
        newer.subscription_id,
        sent=older.sent + newer.sent,
        failed=older.failed + newer.failed,
        last_notification=newer.last_notification or older.last_notification,
        last_success=newer.last_success or older.last_success,
        last_failure=newer.last_failure or older.last_failure,
        status=newer.status or older.status,
    )


def publish_mqtt(uri: str, message: bytes, qos: int, version: str, timeout_s: float) -> None:
    """Publish one message to the broker and topic named by ``mqtt(s)://[user[:pw]@]host[:port]/topic``.

    Blocking (run it in a thread); raises on connection failure or when the broker
    does not acknowledge within ``timeout_s``.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parts = urlsplit(uri)
    secure = parts.scheme.lower() == "mqtts"
    protocol = mqtt.MQTTv5 if version in ("mqtt5.0", "mqtt5") else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    if parts.username:
        client.username_pw_set(unquote(parts.username), unquote(parts.password or "") or None)
    if secure:
        client.tls_set()
    client.connect(parts.hostname or "localhost", parts.port or (8883 if secure else 1883), 30)
    client.loop_start()
    try:
        result = client.publish(parts.path.lstrip("/"), message, qos=qos)
        result.wait_for_publish(timeout_s)
        if not result.is_published():
            raise TimeoutError("MQTT broker did not acknowledge the notification")
    finally:
        client.disconnect()
        client.loop_stop()
