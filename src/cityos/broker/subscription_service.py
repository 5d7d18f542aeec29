"""Subscription operations (create, retrieve, query, update, delete), independent of HTTP.

Routes resolve the @context values (an ``await``) and pass compiled contexts in;
the operations are synchronous. Each change is saved to the store before it is
visible to the notifier, so a subscription survives a restart once acknowledged.

With a shared store (several processes on one PostgreSQL), :meth:`SubscriptionService.follow`
applies the changes other processes make to this process's registry as the store
announces them, and compares everything every ``resync_s`` in case an announcement
was missed; retrieved subscriptions carry the delivery status of all processes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from cityos.broker.context import CompiledContext
from cityos.broker.notifier import Notifier
from cityos.broker.subscriptions import (
    DeliveryStatus,
    Subscription,
    SubscriptionRegistry,
    check_context_uri,
    check_subscription_id,
    clean_document,
    compile_rules,
    recompact_document,
)
from cityos.core.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.core.timeutil import now_iso, now_utc
from cityos.storage.subscriptions import DeliveryReport, SubscriptionStore

log = logging.getLogger(__name__)

ResolveContext = Callable[[Any], Awaitable[CompiledContext]]
_MANDATORY = ("notification",)


class SubscriptionService:
    """NGSI-LD subscription operations over a store, a registry and the notifier."""

    def __init__(
        self, store: SubscriptionStore, registry: SubscriptionRegistry, notifier: Notifier
    ) -> None:
        self.store = store
        self.registry = registry
        self.notifier = notifier

    async def load(self, resolve: ResolveContext) -> int:
        """Load every stored subscription (at start-up); return how many were loaded.

        A subscription whose @context can no longer be resolved is kept in the store
        and skipped, so that it comes back once the context is available.
        """
        loaded = 0
        for tenant, record in self.store.load_all():
            sub = await _compiled(tenant, record, resolve)
            if sub is None:
                continue
            self.registry.put(sub)
            loaded += 1
        return loaded

    async def follow(self, resolve: ResolveContext, resync_s: float) -> None:
        """Shared stores: keep the registry equal to the store until cancelled.

        Each announced change is applied at once; whenever the feed (re)opens, since
        changes made before are not in it, and every ``resync_s``, everything is compared."""
        tasks = {asyncio.create_task(self._resync_every(resolve, resync_s))}
        try:
            while True:
                listening = asyncio.Event()
                waiter = asyncio.create_task(self._resync_when(listening, resolve))
                tasks.add(waiter)
                try:
                    async for tenant, sub_id in self.store.changes(listening.set):
                        await self.apply_stored(tenant, sub_id, resolve)
                except Exception:
                    log.warning(
                        "Lost the feed of subscription changes; reconnecting", exc_info=True
                    )
                if not listening.is_set():
                    waiter.cancel()
                await asyncio.sleep(1.0)
                tasks = {task for task in tasks if not task.done()}
        finally:
            for task in tasks:
                task.cancel()

    async def _resync_when(self, event: asyncio.Event, resolve: ResolveContext) -> None:
        await event.wait()
        try:
            await self.resync(resolve)
        except Exception:
            log.exception("Comparing subscriptions with the store failed")

    async def _resync_every(self, resolve: ResolveContext, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.resync(resolve)
            except Exception:
                log.exception("Comparing subscriptions with the store failed")

    async def apply_stored(self, tenant: str, sub_id: str, resolve: ResolveContext) -> None:
        """Make the registry's copy of one subscription equal to the store's."""
        record = await asyncio.to_thread(self.store.load, tenant, sub_id)
        if record is None:
            if self.registry.remove(tenant, sub_id) is not None:
                self.notifier.unwatch(tenant, sub_id)
            return
        sub = await _compiled(tenant, record, resolve)
        if sub is not None:
            self.registry.put(sub)
            self.notifier.watch(sub)

    async def resync(self, resolve: ResolveContext) -> None:
        """Apply every difference between the store and the registry (added, changed by
        ``modifiedAt``, deleted subscriptions)."""
        # Subscriptions this process creates while the store is read are not in what
        # it returns, yet must stay; only those known before the read can be gone.
        known_before = [(sub.tenant, sub.id) for sub in self.registry.all()]
        stored = await asyncio.to_thread(self.store.load_all)
        seen: set[tuple[str, str]] = set()
        for tenant, record in stored:
            key = (tenant, record["id"])
            seen.add(key)
            known = self.registry.get(*key)
            if known is not None and known.modified_at >= record.get("modifiedAt", ""):
                continue
            sub = await _compiled(tenant, record, resolve)
            if sub is not None:
                self.registry.put(sub)
                self.notifier.watch(sub)
        for key in known_before:
            if key not in seen and self.registry.remove(*key) is not None:
                self.notifier.unwatch(*key)

    def create(
        self,
        tenant: str,
        data: dict[str, Any],
        ctx: CompiledContext,
        notify_ctx: CompiledContext,
        jsonld_context: str | None,
        notify_context: Any = None,
    ) -> str:
        """Validate and store a new subscription; return its id (generated if absent)."""
        if not data:
            raise BadRequestData("The subscription is empty")
        sub_id = data.get("id")
        if sub_id is None:
            sub_id = f"urn:ngsi-ld:Subscription:{uuid.uuid4()}"
        check_subscription_id(sub_id)
        if data.get("type") != "Subscription":
            raise BadRequestData("A subscription's type must be 'Subscription'")
        document = clean_document(data)
        rules = compile_rules(document, ctx, now_utc())
        if self.registry.get(tenant, sub_id) is not None:
            raise AlreadyExists(f"Subscription {sub_id} already exists")
        now = now_iso()
        sub = Subscription(
            tenant=tenant,
            id=sub_id,
            document=document,
            context_value=ctx.context_value,
            jsonld_context=jsonld_context,
            created_at=now,
            modified_at=now,
            rules=rules,
            ctx=ctx,
            notify_ctx=notify_ctx,
            notify_context=notify_context,
        )
        if not self.store.save(sub.tenant, sub.id, sub.to_record(), new=True):
            # Created meanwhile by another process, not yet announced here.
            raise AlreadyExists(f"Subscription {sub_id} already exists")
        self.registry.put(sub)
        self.notifier.watch(sub)
        return sub_id

    def retrieve(self, tenant: str, sub_id: str) -> Subscription:
        """The subscription with its current delivery status; ``ResourceNotFound`` if it
        does not exist."""
        return self._with_status(tenant, [self._get(tenant, sub_id)])[0]

    def query(self, tenant: str) -> list[Subscription]:
        """Every subscription of the tenant, oldest first, with its delivery status."""
        return self._with_status(tenant, self.registry.all(tenant))

    def _get(self, tenant: str, sub_id: str) -> Subscription:
        check_subscription_id(sub_id)
        sub = self.registry.get(tenant, sub_id)
        if sub is None:
            raise ResourceNotFound(f"Subscription {sub_id} does not exist")
        return sub

    def _with_status(self, tenant: str, subs: list[Subscription]) -> list[Subscription]:
        """Shared stores: copies of ``subs`` whose status is the stored one (every
        process's settled deliveries) plus this process's unsettled attempts. One
        process's own copies are up to date already."""
        if not self.store.shared or not subs:
            return subs
        stored = self.store.delivery_status(tenant, [sub.id for sub in subs])
        current = []
        for sub in subs:
            status = DeliveryStatus.from_record(stored.get(sub.id) or {})
            pending = self.notifier.pending_report(tenant, sub.id)
            if pending is not None:
                status = _add_report(status, pending)
            current.append(replace(sub, delivery=status))
        return current

    def update(
        self,
        tenant: str,
        sub_id: str,
        fragment: dict[str, Any],
        ctx: CompiledContext,
        notify_ctx: CompiledContext | None,
    ) -> None:
        """Merge a fragment into a subscription (5.8.2): given members replace the old
        ones, ``null`` removes one (400 for a mandatory member). The stored document is
        rewritten in the fragment's @context. ``notify_ctx`` is the new ``jsonldContext``."""
        sub = self._get(tenant, sub_id)
        if not fragment:
            raise BadRequestData("The update fragment is empty")
        if "id" in fragment and fragment["id"] != sub_id:
            raise BadRequestData("The id of a subscription cannot change")
        if "type" in fragment and fragment["type"] != "Subscription":
            raise BadRequestData("A subscription's type must be 'Subscription'")
        document = dict(recompact_document(sub.document, sub.ctx, ctx))
        for key, value in clean_document(fragment).items():
            if key in ("id", "type"):
                continue
            if value is None:
                if key in _MANDATORY:
                    raise BadRequestData(f"{key} is mandatory and cannot be removed")
                document.pop(key, None)
            else:
                document[key] = value
        if _has_null(document.get("notification")):
            raise BadRequestData("notification members cannot be null")
        rules = compile_rules(document, ctx, now_utc())
        if "jsonldContext" in fragment and fragment["jsonldContext"] is not None:
            sub.jsonld_context = check_context_uri(fragment["jsonldContext"])
            sub.notify_context = sub.jsonld_context
        if notify_ctx is not None:
            sub.notify_ctx = notify_ctx
        elif sub.notify_context is None:
            sub.notify_ctx = ctx
        sub.document = document
        sub.context_value = ctx.context_value
        sub.ctx = ctx
        sub.rules = rules
        sub.modified_at = now_iso()
        sub.last_notified = None
        self._save(sub)
        self.registry.put(sub)
        self.notifier.watch(sub)

    def delete(self, tenant: str, sub_id: str) -> None:
        """Delete a subscription and its undelivered notifications."""
        self._get(tenant, sub_id)
        self.registry.remove(tenant, sub_id)
        self.notifier.unwatch(tenant, sub_id)
        self.store.delete(tenant, sub_id)

    def _save(self, sub: Subscription) -> None:
        self.store.save(sub.tenant, sub.id, sub.to_record())


async def _compiled(
    tenant: str, record: dict[str, Any], resolve: ResolveContext
) -> Subscription | None:
    """A stored record made ready for matching; ``None`` when its @context cannot be
    resolved (now)."""
    sub = Subscription.from_record(tenant, record)
    try:
        sub.ctx = await resolve(sub.context_value)
        notify = sub.notify_context
        sub.notify_ctx = await resolve(notify) if notify is not None else sub.ctx
        sub.rules = compile_rules(sub.document, sub.ctx, _epoch())
    except Exception:
        log.warning("Subscription %s skipped: its @context cannot be resolved", sub.id)
        return None
    return sub


def _add_report(status: DeliveryStatus, report: DeliveryReport) -> DeliveryStatus:
    """``status`` with the attempts of a newer ``report`` counted in."""
    newer = (report.last_notification or "") >= (status.last_notification or "")
    return DeliveryStatus(
        times_sent=status.times_sent + report.sent,
        times_failed=status.times_failed + report.failed,
        last_notification=_latest(report.last_notification, status.last_notification),
        last_success=_latest(report.last_success, status.last_success),
        last_failure=_latest(report.last_failure, status.last_failure),
        status=report.status if newer and report.status else status.status,
    )


def _latest(first: str | None, second: str | None) -> str | None:
    """The later of two fixed-width ISO times (either may be missing)."""
    return max(first or "", second or "") or None


def _has_null(value: object) -> bool:
    if isinstance(value, dict):
        return any(v is None or _has_null(v) for v in value.values())
    return False


def _epoch() -> Any:
    """A moment before any ``expiresAt``: stored subscriptions may have expired since."""
    from datetime import UTC, datetime

    return datetime(1970, 1, 1, tzinfo=UTC)
