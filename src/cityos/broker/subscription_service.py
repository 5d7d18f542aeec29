"""Subscription operations (create, retrieve, query, update, delete), independent of HTTP.

Routes resolve the @context values (an ``await``) and pass compiled contexts in;
everything here is synchronous. Each change is saved to the store before it is
visible to the notifier, so a subscription survives a restart once acknowledged.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from cityos.broker.context import CompiledContext
from cityos.broker.notifier import Notifier
from cityos.broker.subscriptions import (
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
from cityos.storage.subscriptions import SqliteSubscriptionStore

ResolveContext = Callable[[Any], Awaitable[CompiledContext]]
_MANDATORY = ("notification",)


class SubscriptionService:
    """NGSI-LD subscription operations over a store, a registry and the notifier."""

    def __init__(
        self, store: SqliteSubscriptionStore, registry: SubscriptionRegistry, notifier: Notifier
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
            sub = Subscription.from_record(tenant, record)
            try:
                sub.ctx = await resolve(sub.context_value)
                notify = sub.notify_context
                sub.notify_ctx = await resolve(notify) if notify is not None else sub.ctx
                sub.rules = compile_rules(sub.document, sub.ctx, _epoch())
            except Exception:
                continue
            self.registry.put(sub)
            loaded += 1
        return loaded

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
        self._save(sub)
        self.registry.put(sub)
        self.notifier.watch(sub)
        return sub_id

    def retrieve(self, tenant: str, sub_id: str) -> Subscription:
        """The subscription; ``ResourceNotFound`` if it does not exist."""
        check_subscription_id(sub_id)
        sub = self.registry.get(tenant, sub_id)
        if sub is None:
            raise ResourceNotFound(f"Subscription {sub_id} does not exist")
        return sub

    def query(self, tenant: str) -> list[Subscription]:
        """Every subscription of the tenant, oldest first."""
        return self.registry.all(tenant)

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
        sub = self.retrieve(tenant, sub_id)
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
        self.retrieve(tenant, sub_id)
        self.registry.remove(tenant, sub_id)
        self.notifier.unwatch(tenant, sub_id)
        self.store.delete(tenant, sub_id)

    def _save(self, sub: Subscription) -> None:
        self.store.save(sub.tenant, sub.id, sub.to_record())


def _has_null(value: object) -> bool:
    if isinstance(value, dict):
        return any(v is None or _has_null(v) for v in value.values())
    return False


def _epoch() -> Any:
    """A moment before any ``expiresAt``: stored subscriptions may have expired since."""
    from datetime import UTC, datetime

    return datetime(1970, 1, 1, tzinfo=UTC)
