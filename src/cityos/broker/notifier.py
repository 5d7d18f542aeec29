"""Notification delivery off the write path: match changes, persist, deliver with retries.

Flow: the ``ObservedStorage`` listener (:meth:`Notifier.on_changes`) only appends the
committed changes to a list and wakes the dispatcher task. The dispatcher matches
them against the subscriptions, renders the notifications and writes them to the
outbox (SQLite) in one transaction. One delivery task per subscription reads its
outbox rows in order and sends them one at a time: HTTP POST (httpx) or MQTT publish
(paho-mqtt, in a worker thread). A failure is recorded in the subscription's status
and retried with exponential back-off; a row leaves the outbox once delivered (or
given up after ``max_attempts``).

Why one task per subscription, sending serially: notifications about one entity
arrive in order, and a slow or dead endpoint holds back only its own subscription.
The outbox is the bounded queue: rows beyond ``queue_limit`` per subscription are
dropped oldest first (logged), so a dead endpoint cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
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
from cityos.core.timeutil import format_datetime, now_utc
from cityos.storage.subscriptions import SqliteSubscriptionStore

log = logging.getLogger(__name__)

CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
_Key = tuple[str, str]


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry and queue limits of the notifier."""

    max_attempts: int = 5
    first_retry_s: float = 0.5
    max_retry_s: float = 30.0
    timeout_s: float = 5.0
    queue_limit: int = 10_000
    batch: int = 64


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


class Notifier:
    """Matches entity changes to subscriptions and delivers the notifications."""

    def __init__(
        self,
        store: SqliteSubscriptionStore,
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
        self._dispatcher: asyncio.Task[None] | None = None
        self._workers: dict[_Key, asyncio.Task[None]] = {}
        self._worker_wake: dict[_Key, asyncio.Event] = {}
        self._periodic: dict[_Key, asyncio.Task[None]] = {}
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the dispatcher and a delivery task per known subscription."""
        self._wake = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=self.policy.timeout_s)
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="notifier-dispatch")
        for sub in self.registry.all():
            self.watch(sub)

    async def stop(self) -> None:
        """Cancel every task; undelivered notifications stay in the outbox."""
        tasks = [
            t for t in (self._dispatcher, *self._workers.values(), *self._periodic.values()) if t
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()
        self._periodic.clear()
        if self._http is not None:
            await self._http.aclose()

    def watch(self, sub: Subscription) -> None:
        """(Re)start the tasks of a subscription after it was created or changed."""
        key = (sub.tenant, sub.id)
        if self._wake is None:
            return
        if key not in self._workers or self._workers[key].done():
            self._worker_wake[key] = asyncio.Event()
            self._workers[key] = asyncio.create_task(self._deliver_loop(key))
        self._worker_wake[key].set()
        periodic = self._periodic.pop(key, None)
        if periodic is not None:
            periodic.cancel()
        assert sub.rules is not None
        if sub.rules.time_interval_s is not None:
            self._periodic[key] = asyncio.create_task(
                self._periodic_loop(key, sub.rules.time_interval_s)
            )

    def unwatch(self, tenant: str, sub_id: str) -> None:
        """Stop the tasks of a deleted subscription."""
        key = (tenant, sub_id)
        for tasks in (self._workers, self._periodic):
            task = tasks.pop(key, None)
            if task is not None:
                task.cancel()
        self._worker_wake.pop(key, None)

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
            for changes in batches:
                try:
                    self.dispatch(changes)
                except Exception:
                    log.exception(
                        "Matching %d change(s) against subscriptions failed", len(changes)
                    )

    def dispatch(self, changes: list[EntityChange]) -> None:
        """Match one commit's changes, persist the notifications, wake their senders."""
        now = now_utc()
        per_sub: dict[_Key, list[list[dict[str, Any]]]] = {}
        seen: dict[_Key, set[str]] = {}
        for change in changes:
            entity = change.after if change.after is not None else change.before
            assert entity is not None
            candidates = self.registry.candidates(change.tenant, entity.get("type", []))
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
                    # The same entity twice in one commit: a notification of its own,
                    # so that its states arrive in order.
                    groups.append([])
                    ids.clear()
                ids.add(change.entity_id)
                groups[-1].extend(data)
        self._enqueue(per_sub)

    def _enqueue(self, per_sub: dict[_Key, list[list[dict[str, Any]]]]) -> None:
        rows: list[tuple[str, str, bytes]] = []
        woken: list[_Key] = []
        mono = time.monotonic()
        for key, groups in per_sub.items():
            sub = self.registry.get(*key)
            if sub is None or sub.rules is None:
                continue
            for data in groups:
                if not data:
                    continue
                throttling = sub.rules.throttling_s
                if (
                    throttling is not None
                    and sub.last_notified is not None
                    and mono - sub.last_notified < throttling
                ):
                    continue
                sub.last_notified = mono
                rows.append((key[0], key[1], orjson.dumps(notification_body(sub, data))))
                woken.append(key)
        if not rows:
            return
        self.store.enqueue(rows)
        for key in dict.fromkeys(woken):
            if self.store.pending_count(*key) > self.policy.queue_limit:
                dropped = self.store.drop_oldest(*key, self.policy.queue_limit)
                log.warning("Subscription %s: outbox full, dropped %d oldest", key[1], dropped)
            event = self._worker_wake.get(key)
            if event is not None:
                event.set()

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
        self._enqueue({(sub.tenant, sub.id): [data]})

    # ------------------------------------------------------------------- delivery

    async def _deliver_loop(self, key: _Key) -> None:
        event = self._worker_wake[key]
        policy = self.policy
        while True:
            event.clear()
            if self.registry.get(*key) is None:
                return
            rows = self.store.pending(key[0], key[1], policy.batch)
            if not rows:
                await event.wait()
                continue
            for seq, payload in rows:
                attempt = 0
                while True:
                    sub = self.registry.get(*key)
                    if sub is None:
                        return
                    if await self._send(sub, payload):
                        break
                    attempt += 1
                    if attempt >= policy.max_attempts:
                        log.warning(
                            "Subscription %s: giving up a notification after %d attempts",
                            sub.id,
                            attempt,
                        )
                        break
                    await asyncio.sleep(
                        min(policy.max_retry_s, policy.first_retry_s * 2 ** (attempt - 1))
                    )
                self.store.remove(seq)

    async def _send(self, sub: Subscription, payload: bytes) -> bool:
        """Send one notification; record the outcome in the subscription's status."""
        rules = sub.rules
        assert rules is not None
        endpoint = rules.endpoint
        sent_at = format_datetime(now_utc())
        try:
            if endpoint.scheme in ("mqtt", "mqtts"):
                await self._publish_mqtt(sub, payload)
            else:
                await self._post_http(sub, payload)
            ok = True
        except Exception as exc:
            log.info("Notification of %s to %s failed: %s", sub.id, endpoint.uri, exc)
            ok = False
        delivery = sub.delivery
        delivery.times_sent += 1
        delivery.last_notification = sent_at
        if ok:
            delivery.last_success = sent_at
            delivery.status = "ok"
        else:
            delivery.times_failed += 1
            delivery.last_failure = sent_at
            delivery.status = "failed"
        if self.registry.get(sub.tenant, sub.id) is sub:
            self.store.save(sub.tenant, sub.id, sub.to_record())
        return ok

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

    async def _post_http(self, sub: Subscription, payload: bytes) -> None:
        assert sub.rules is not None and self._http is not None
        endpoint = sub.rules.endpoint
        response = await self._http.post(
            endpoint.uri,
            content=payload,
            headers=self._headers(sub),
            timeout=endpoint.timeout_s or self.policy.timeout_s,
        )
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"HTTP {response.status_code}")

    async def _publish_mqtt(self, sub: Subscription, payload: bytes) -> None:
        assert sub.rules is not None
        endpoint = sub.rules.endpoint
        message = orjson.dumps({"metadata": self._headers(sub), "body": orjson.loads(payload)})
        info = dict(endpoint.notifier_info)
        qos = int(info.get("MQTT-QoS", "0"))
        version = info.get("MQTT-Version", "mqtt3.1.1")
        timeout_s = endpoint.timeout_s or self.policy.timeout_s
        await asyncio.to_thread(publish_mqtt, endpoint.uri, message, qos, version, timeout_s)


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
