"""NGSI-LD subscriptions (ETSI GS CIM 009 v1.8, 5.2.12 and 5.8): model, validation, matching.

No HTTP and no I/O here. A subscription is kept as the document the client sent
(terms as written, without ``@context``) plus the @context it was written with, so
that it can be shown back exactly and re-compiled after a restart. Compiling it with
its resolved context gives :class:`SubscriptionRules`, the expanded form used to
match entity changes and render notification data.

Triggers (``notificationTrigger``, 5.2.12): ``entityCreated``, ``entityUpdated``,
``entityDeleted``, ``attributeCreated``, ``attributeUpdated``, ``attributeDeleted``;
the default is ``attributeCreated`` + ``attributeUpdated``, under which the creation
of an entity counts as the creation of each of its attributes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from cityos.broker.changes import EntityChange
from cityos.broker.context import CompiledContext
from cityos.broker.entities import check_entity_id
from cityos.broker.geoquery import GeoQuery, parse_geo_query
from cityos.broker.join import FetchEntities, JoinRequest, render_joined
from cityos.broker.model import (
    VALUE_KEY_BY_KIND,
    AttributeInstance,
    StoredEntity,
    instance_value,
)
from cityos.broker.projection import (
    CORE_MEMBERS,
    Projection,
    check_pick_and_omit,
    parse_projection,
)
from cityos.broker.query_language import (
    QExpression,
    ScopeExpression,
    TypeExpression,
    parse_q,
    parse_scope_q,
    parse_type_selector,
)
from cityos.broker.representation import Format, RenderOptions, render_entity
from cityos.broker.service import EntitySelector
from cityos.core.errors import BadRequestData, InvalidRequest
from cityos.core.timeutil import format_datetime, parse_datetime

TRIGGERS = (
    "entityCreated",
    "entityUpdated",
    "entityDeleted",
    "attributeCreated",
    "attributeUpdated",
    "attributeDeleted",
)
DEFAULT_TRIGGERS = ("attributeCreated", "attributeUpdated")
NGSI_LD_NULL = "urn:ngsi-ld:null"
FORMATS: dict[str, Format] = {
    "normalized": "normalized",
    "keyValues": "keyValues",
    "simplified": "keyValues",
    "concise": "concise",
}
ACCEPTS = ("application/json", "application/ld+json")
HTTP_SCHEMES = ("http", "https")
MQTT_SCHEMES = ("mqtt", "mqtts")

_SUBSCRIPTION_MEMBERS = frozenset(
    {
        "id",
        "type",
        "subscriptionName",
        "description",
        "entities",
        "watchedAttributes",
        "notificationTrigger",
        "timeInterval",
        "q",
        "geoQ",
        "csf",
        "isActive",
        "notification",
        "expiresAt",
        "throttling",
        "temporalQ",
        "scopeQ",
        "lang",
        "jsonldContext",
        "datasetId",
        "status",
        "createdAt",
        "modifiedAt",
    }
)
_NOTIFICATION_MEMBERS = frozenset(
    {
        "attributes",
        "sysAttrs",
        "pick",
        "omit",
        "format",
        "endpoint",
        "showChanges",
        "join",
        "joinLevel",
        "status",
        "timesSent",
        "timesFailed",
        "lastNotification",
        "lastFailure",
        "lastSuccess",
    }
)
_READ_ONLY = ("status", "createdAt", "modifiedAt")
_READ_ONLY_NOTIFICATION = (
    "status",
    "timesSent",
    "timesFailed",
    "lastNotification",
    "lastFailure",
    "lastSuccess",
)
_PREVIOUS_KEY = {
    "value": "previousValue",
    "object": "previousObject",
    "languageMap": "previousLanguageMap",
    "json": "previousJson",
    "vocab": "previousVocab",
    "valueList": "previousValueList",
    "objectList": "previousObjectList",
}


# --------------------------------------------------------------------------- state


@dataclass
class DeliveryStatus:
    """The notification status members of 5.2.14 (``status`` is ``ok`` or ``failed``)."""

    times_sent: int = 0
    times_failed: int = 0
    last_notification: str | None = None
    last_success: str | None = None
    last_failure: str | None = None
    status: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON form kept in storage."""
        return {
            "timesSent": self.times_sent,
            "timesFailed": self.times_failed,
            "lastNotification": self.last_notification,
            "lastSuccess": self.last_success,
            "lastFailure": self.last_failure,
            "status": self.status,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DeliveryStatus:
        """Inverse of :meth:`to_record`."""
        return cls(
            times_sent=int(record.get("timesSent") or 0),
            times_failed=int(record.get("timesFailed") or 0),
            last_notification=record.get("lastNotification"),
            last_success=record.get("lastSuccess"),
            last_failure=record.get("lastFailure"),
            status=record.get("status"),
        )


@dataclass(frozen=True)
class Endpoint:
    """Where and how notifications go (5.2.15)."""

    uri: str
    accept: str = "application/json"
    timeout_s: float | None = None
    receiver_info: tuple[tuple[str, str], ...] = ()
    notifier_info: tuple[tuple[str, str], ...] = ()

    @property
    def scheme(self) -> str:
        """``http``, ``https``, ``mqtt`` or ``mqtts``."""
        return urlsplit(self.uri).scheme.lower()


@dataclass(frozen=True)
class SubscriptionRules:
    """The compiled, expanded form of a subscription document (all names are IRIs)."""

    selectors: tuple[EntitySelector, ...]
    type_iris: frozenset[str] | None
    """Entity type IRIs any matching entity must have one of (``None``: any type)."""
    watched: frozenset[str] | None
    triggers: frozenset[str]
    q: QExpression | None
    geo: GeoQuery | None
    geo_attr: str | None
    scope_q: ScopeExpression | None
    time_interval_s: float | None
    throttling_s: float | None
    expires_at: datetime | None
    is_active: bool
    dataset_ids: frozenset[str] | None
    endpoint: Endpoint
    render: RenderOptions
    show_changes: bool
    join: JoinRequest | None


@dataclass
class Subscription:
    """One stored subscription: the client's document, its context and its status."""

    tenant: str
    id: str
    document: dict[str, Any]
    context_value: Any
    """The ``@context`` the subscription was written with (``None``: the core context)."""
    jsonld_context: str | None
    """The subscription's ``jsonldContext``: given by the client or ImplicitlyCreated."""
    created_at: str
    modified_at: str
    delivery: DeliveryStatus = field(default_factory=DeliveryStatus)
    rules: SubscriptionRules | None = None
    ctx: CompiledContext | None = None
    """The context attribute names in the document are written with."""
    notify_ctx: CompiledContext | None = None
    """The context notifications are compacted with (``jsonldContext`` if given)."""
    notify_context: Any = None
    """The @context value notifications use when not ``context_value`` (a jsonldContext URL)."""
    last_notified: float | None = None
    """Monotonic time of the last notification generated (for throttling)."""

    def to_record(self) -> dict[str, Any]:
        """The JSON form kept by the subscription store."""
        return {
            "id": self.id,
            "document": self.document,
            "context": self.context_value,
            "jsonldContext": self.jsonld_context,
            "notifyContext": self.notify_context,
            "createdAt": self.created_at,
            "modifiedAt": self.modified_at,
            "delivery": self.delivery.to_record(),
        }

    @classmethod
    def from_record(cls, tenant: str, record: Mapping[str, Any]) -> Subscription:
        """Inverse of :meth:`to_record` (``rules`` must be compiled afterwards)."""
        return cls(
            tenant=tenant,
            id=record["id"],
            document=record["document"],
            context_value=record.get("context"),
            jsonld_context=record.get("jsonldContext"),
            created_at=record["createdAt"],
            modified_at=record["modifiedAt"],
            delivery=DeliveryStatus.from_record(record.get("delivery") or {}),
            notify_context=record.get("notifyContext"),
        )

    def state(self, now: datetime) -> str:
        """``active``, ``paused`` (isActive false) or ``expired`` (expiresAt passed)."""
        rules = self.rules
        if rules is None:
            return "active"
        if rules.expires_at is not None and rules.expires_at <= now:
            return "expired"
        return "active" if rules.is_active else "paused"

    def render(self, ctx: CompiledContext, now: datetime, *, sys_attrs: bool) -> dict[str, Any]:
        """The subscription as returned to a client, names compacted with ``ctx``."""
        doc = recompact_document(self.document, self.ctx, ctx)
        out: dict[str, Any] = {"id": self.id, "type": "Subscription"}
        out.update({k: v for k, v in doc.items() if k not in ("id", "type")})
        out["status"] = self.state(now)
        if self.jsonld_context is not None:
            out["jsonldContext"] = self.jsonld_context
        if "notificationTrigger" not in out:
            out["notificationTrigger"] = list(DEFAULT_TRIGGERS)
        notification = dict(out.get("notification") or {})
        delivery = self.delivery
        if delivery.times_sent:
            notification["timesSent"] = delivery.times_sent
        if delivery.times_failed:
            notification["timesFailed"] = delivery.times_failed
        for key, value in (
            ("lastNotification", delivery.last_notification),
            ("lastSuccess", delivery.last_success),
            ("lastFailure", delivery.last_failure),
            ("status", delivery.status),
        ):
            if value is not None:
                notification[key] = value
        out["notification"] = notification
        if sys_attrs:
            out["createdAt"] = self.created_at
            out["modifiedAt"] = self.modified_at
        return out


def recompact_document(
    document: dict[str, Any], source: CompiledContext | None, target: CompiledContext
) -> dict[str, Any]:
    """The document with attribute names and simple types rewritten from ``source`` terms
    to ``target`` terms (a client reading with another @context sees its own names)."""
    if source is None or source is target:
        return document

    def convert(term: Any) -> Any:  # Any: a JSON value that should be a term
        return target.compact(source.expand(term)) if isinstance(term, str) else term

    doc = dict(document)
    if isinstance(doc.get("entities"), list):
        entities = []
        for item in doc["entities"]:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                kind = item["type"]
                if re.fullmatch(r"[^,;|()]+", kind):
                    item = {**item, "type": convert(kind)}
            entities.append(item)
        doc["entities"] = entities
    if isinstance(doc.get("watchedAttributes"), list):
        doc["watchedAttributes"] = [convert(a) for a in doc["watchedAttributes"]]
    notification = doc.get("notification")
    if isinstance(notification, dict) and isinstance(notification.get("attributes"), list):
        doc["notification"] = {
            **notification,
            "attributes": [convert(a) for a in notification["attributes"]],
        }
    return doc


# ---------------------------------------------------------------------- validation


def check_subscription_id(value: object) -> str:
    """A subscription id must be a URI (``BadRequestData`` otherwise)."""
    try:
        return check_entity_id(value)
    except BadRequestData:
        raise BadRequestData(f"Subscription id must be a URI: {value!r}") from None


def clean_document(data: dict[str, Any]) -> dict[str, Any]:
    """The client-writable members of a subscription document (read-only ones dropped)."""
    doc = {k: v for k, v in data.items() if k not in _READ_ONLY and k != "@context"}
    notification = doc.get("notification")
    if isinstance(notification, dict):
        doc["notification"] = {
            k: v for k, v in notification.items() if k not in _READ_ONLY_NOTIFICATION
        }
    return doc


def compile_rules(doc: Mapping[str, Any], ctx: CompiledContext, now: datetime) -> SubscriptionRules:
    """Validate a subscription document and compile it with its context.

    Raises ``BadRequestData`` naming the first problem: unknown members, neither
    ``entities`` nor ``watchedAttributes`` nor ``timeInterval``, a bad entity selector,
    ``q``, ``geoQ`` or ``scopeQ``, a bad endpoint, ``throttling`` together with
    ``timeInterval``, a negative number, ``expiresAt`` in the past (given ``now``).
    """
    unknown = sorted(set(doc) - _SUBSCRIPTION_MEMBERS)
    if unknown:
        raise BadRequestData(f"Unknown subscription member(s): {', '.join(unknown)}")
    if doc.get("type", "Subscription") != "Subscription":
        raise BadRequestData("A subscription's type must be 'Subscription'")
    entities = doc.get("entities")
    watched_names = doc.get("watchedAttributes")
    interval = _optional_number(doc, "timeInterval")
    throttling = _optional_number(doc, "throttling")
    if entities is None and watched_names is None and interval is None:
        raise BadRequestData("A subscription needs entities or watchedAttributes")
    if interval is not None and throttling is not None:
        raise BadRequestData("throttling and timeInterval cannot be combined")
    if interval is not None and watched_names is not None:
        raise BadRequestData("watchedAttributes and timeInterval cannot be combined")
    selectors, type_iris = _selectors(entities, ctx)
    watched = _attribute_list(watched_names, "watchedAttributes", ctx)
    if watched is not None and not watched:
        raise BadRequestData("watchedAttributes must not be empty")
    triggers = _triggers(doc.get("notificationTrigger"))
    q = _text_member(doc, "q")
    scope_q = _text_member(doc, "scopeQ")
    geo, geo_attr = _geo_query(doc.get("geoQ"), ctx)
    expires_at = None
    if "expiresAt" in doc:
        expires_at = parse_datetime(doc["expiresAt"], field="expiresAt")
        if expires_at <= now:
            raise BadRequestData("expiresAt must be in the future")
    is_active = doc.get("isActive", True)
    if not isinstance(is_active, bool):
        raise BadRequestData("isActive must be true or false")
    for name in ("subscriptionName", "description", "lang"):
        if name in doc and not isinstance(doc[name], str):
            raise BadRequestData(f"{name} must be a string")
    if "jsonldContext" in doc:
        check_context_uri(doc["jsonldContext"])
    dataset_ids = _dataset_ids(doc.get("datasetId"))
    notification = doc.get("notification")
    if not isinstance(notification, dict):
        raise BadRequestData("A subscription needs a notification object")
    endpoint, render, show_changes, join = _notification(notification, ctx, dataset_ids)
    render = RenderOptions(
        format=render.format,
        sys_attrs=render.sys_attrs,
        attrs=render.attrs,
        pick=render.pick,
        omit=render.omit,
        lang=doc.get("lang"),
        dataset_ids=dataset_ids,
    )
    if q is not None and "%" in q:
        # Clients write q as they would in a URL (percent-encoded); brokers decode it.
        q = unquote(q)
    try:
        q_expr = parse_q(q).expand(ctx.expand) if q is not None else None
        scope_expr = parse_scope_q(scope_q) if scope_q is not None else None
    except InvalidRequest as exc:
        # In a subscription the query is data of the body, not a request parameter.
        raise BadRequestData(exc.detail) from None
    return SubscriptionRules(
        selectors=selectors,
        type_iris=type_iris,
        watched=watched,
        triggers=triggers,
        q=q_expr,
        geo=geo,
        geo_attr=geo_attr,
        scope_q=scope_expr,
        time_interval_s=interval,
        throttling_s=throttling,
        expires_at=expires_at,
        is_active=is_active,
        dataset_ids=dataset_ids,
        endpoint=endpoint,
        render=render,
        show_changes=show_changes,
        join=join,
    )


def check_context_uri(value: object) -> str:
    """``jsonldContext`` must be an absolute URI (``BadRequestData`` otherwise)."""
    if not isinstance(value, str):
        raise BadRequestData("jsonldContext must be a URI")
    parts = urlsplit(value)
    if not parts.scheme or not (parts.netloc or parts.path):
        raise BadRequestData(f"jsonldContext must be an absolute URI: {value!r}")
    return value


def _optional_number(doc: Mapping[str, Any], name: str) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequestData(f"{name} must be a number of seconds greater than 0")
    return float(value)


def _text_member(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequestData(f"{name} must be a non-empty string")
    return value


def _selectors(
    entities: object, ctx: CompiledContext
) -> tuple[tuple[EntitySelector, ...], frozenset[str] | None]:
    if entities is None:
        return (), None
    if not isinstance(entities, list) or not entities:
        raise BadRequestData("entities must be a non-empty array of EntitySelector objects")
    selectors = []
    type_iris: set[str] | None = set()
    for item in entities:
        if not isinstance(item, dict):
            raise BadRequestData("Each item of entities must be an object")
        extra = set(item) - {"id", "idPattern", "type"}
        if extra:
            raise BadRequestData(f"Unknown EntitySelector member(s): {', '.join(sorted(extra))}")
        if "type" not in item:
            raise BadRequestData("Each EntitySelector needs a type")
        kind = item["type"]
        if not isinstance(kind, str) or not kind:
            raise BadRequestData("EntitySelector type must be a non-empty string")
        try:
            types: TypeExpression = parse_type_selector(kind).expand(ctx.expand)
        except InvalidRequest as exc:
            raise BadRequestData(exc.detail) from None
        ids = None
        if "id" in item:
            ids = frozenset({check_entity_id(item["id"])})
        pattern = None
        if "idPattern" in item:
            if not isinstance(item["idPattern"], str):
                raise BadRequestData("idPattern must be a string")
            try:
                pattern = re.compile(item["idPattern"])
            except re.error as exc:
                raise BadRequestData(f"Invalid idPattern: {exc}") from None
        selectors.append(EntitySelector(ids=ids, id_pattern=pattern, types=types))
        if type_iris is not None:
            if types.is_simple_union():
                type_iris |= types.type_names()
            else:
                type_iris = None
    return tuple(selectors), frozenset(type_iris) if type_iris is not None else None


def _attribute_list(value: object, name: str, ctx: CompiledContext) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise BadRequestData(f"{name} must be an array of attribute names")
    core = [a for a in value if a in CORE_MEMBERS]
    if core:
        raise BadRequestData(f"{name} names attributes, not {', '.join(core)}")
    return frozenset(ctx.expand(a) for a in value)


def _triggers(value: object) -> frozenset[str]:
    if value is None:
        return frozenset(DEFAULT_TRIGGERS)
    if not isinstance(value, list) or not value:
        raise BadRequestData("notificationTrigger must be a non-empty array")
    unknown = [t for t in value if t not in TRIGGERS]
    if unknown:
        raise BadRequestData(f"Unknown notificationTrigger value(s): {unknown}")
    return frozenset(value)


def _geo_query(value: object, ctx: CompiledContext) -> tuple[GeoQuery | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise BadRequestData("geoQ must be an object")
    coordinates = value.get("coordinates")
    geo = parse_geo_query(
        value.get("georel"),
        value.get("geometry"),
        coordinates if coordinates is not None else None,
        value.get("geoproperty"),
    )
    if geo is None:
        raise BadRequestData("geoQ needs georel, geometry and coordinates")
    return geo, ctx.expand(geo.geoproperty)


def _dataset_ids(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
        raise BadRequestData("datasetId must be an array of URIs")
    for dataset_id in value:
        if dataset_id != "@none":
            check_entity_id(dataset_id)
    return frozenset(value)


def _notification(
    value: dict[str, Any], ctx: CompiledContext, dataset_ids: frozenset[str] | None
) -> tuple[Endpoint, RenderOptions, bool, JoinRequest | None]:
    unknown = sorted(set(value) - _NOTIFICATION_MEMBERS)
    if unknown:
        raise BadRequestData(f"Unknown notification member(s): {', '.join(unknown)}")
    endpoint = parse_endpoint(value.get("endpoint"))
    format_name = value.get("format", "normalized")
    if format_name not in FORMATS:
        raise BadRequestData(f"Unknown notification format: {format_name!r}")
    attrs = _attribute_list(value.get("attributes"), "notification.attributes", ctx)
    pick = _projection_member(value, "pick", ctx)
    omit = _projection_member(value, "omit", ctx)
    if (pick is not None or omit is not None) and "attributes" in value:
        raise BadRequestData("pick and omit cannot be combined with attributes")
    check_pick_and_omit(pick, omit)
    for name in ("sysAttrs", "showChanges"):
        if name in value and not isinstance(value[name], bool):
            raise BadRequestData(f"notification.{name} must be true or false")
    join = None
    mode = value.get("join")
    level = value.get("joinLevel", 1)
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise BadRequestData("notification.joinLevel must be an integer >= 1")
    if mode is not None and mode != "@none":
        if mode not in ("inline", "flat"):
            raise BadRequestData("notification.join must be inline, flat or @none")
        join = JoinRequest(mode="inline" if mode == "inline" else "flat", level=level)
    options = RenderOptions(
        format=FORMATS[format_name],
        sys_attrs=bool(value.get("sysAttrs", False)),
        attrs=attrs,
        pick=pick,
        omit=omit,
        dataset_ids=dataset_ids,
    )
    return endpoint, options, bool(value.get("showChanges", False)), join


def _projection_member(
    value: Mapping[str, Any], name: str, ctx: CompiledContext
) -> Projection | None:
    member = value.get(name)
    if member is None:
        return None
    if isinstance(member, list) and all(isinstance(m, str) for m in member):
        member = ",".join(member)
    if not isinstance(member, str):
        raise BadRequestData(f"notification.{name} must be a string or an array of strings")
    return parse_projection(member, parameter=name).expand(ctx.expand)


def parse_endpoint(value: object) -> Endpoint:
    """Validate an Endpoint (5.2.15): an http(s) or mqtt(s) ``uri``, ``accept``,
    ``receiverInfo`` / ``notifierInfo`` key-value lists."""
    if not isinstance(value, dict):
        raise BadRequestData("notification.endpoint must be an object")
    uri = value.get("uri")
    if not isinstance(uri, str):
        raise BadRequestData("notification.endpoint.uri must be a URI")
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        raise BadRequestData(f"Invalid endpoint port in {uri!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES + MQTT_SCHEMES or not parts.hostname:
        raise BadRequestData(
            f"notification.endpoint.uri must be an http(s) or mqtt(s) URL: {uri!r}"
        )
    if scheme in MQTT_SCHEMES and not parts.path.strip("/"):
        raise BadRequestData("An MQTT endpoint needs a topic: mqtt://host[:port]/topic")
    del port
    accept = value.get("accept", "application/json")
    if accept not in ACCEPTS:
        raise BadRequestData(f"notification.endpoint.accept must be one of {', '.join(ACCEPTS)}")
    timeout = value.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise BadRequestData("notification.endpoint.timeout must be a number > 0")
    return Endpoint(
        uri=uri,
        accept=accept,
        timeout_s=float(timeout) / 1000.0 if timeout is not None else None,
        receiver_info=_key_values(value.get("receiverInfo"), "receiverInfo"),
        notifier_info=_key_values(value.get("notifierInfo"), "notifierInfo"),
    )


def _key_values(value: object, name: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequestData(f"{name} must be an array of key-value pairs")
    pairs = []
    for item in value:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("key"), str)
            or not isinstance(item.get("value"), str)
            or not item["key"]
        ):
            raise BadRequestData(f"Each {name} item must be {{'key': str, 'value': str}}")
        pairs.append((item["key"], item["value"]))
    return tuple(pairs)


# ------------------------------------------------------------------------ matching


@dataclass(frozen=True)
class ChangeSummary:
    """What one entity change did, per attribute IRI and datasetId (``@none``: default)."""

    created: frozenset[tuple[str, str]]
    updated: frozenset[tuple[str, str]]
    deleted: frozenset[tuple[str, str]]
    entity_changed: bool
    """True when anything else changed (type, scope) or any instance did."""


def _instances(entity: StoredEntity | None) -> dict[tuple[str, str], AttributeInstance]:
    if entity is None:
        return {}
    return {
        (iri, inst.get("datasetId", "@none")): inst
        for iri, instances in entity.get("attrs", {}).items()
        for inst in instances
    }


def summarise_change(change: EntityChange) -> ChangeSummary:
    """Compare the entity before and after a write, instance by instance."""
    before = _instances(change.before)
    after = _instances(change.after)
    created = frozenset(k for k in after if k not in before)
    deleted = frozenset(k for k in before if k not in after)
    updated = frozenset(k for k, inst in after.items() if k in before and before[k] != inst)
    other = (
        change.before is None
        or change.after is None
        or change.before.get("type") != change.after.get("type")
        or change.before.get("scope") != change.after.get("scope")
    )
    return ChangeSummary(created, updated, deleted, bool(other or created or updated or deleted))


@dataclass(frozen=True)
class Match:
    """A subscription fired by a change: why, and which instances were deleted."""

    reason: str
    deleted: frozenset[tuple[str, str]]


def match_change(
    rules: SubscriptionRules, change: EntityChange, summary: ChangeSummary
) -> Match | None:
    """The trigger a change fires for these rules, or ``None``.

    The entity (``after``, or ``before`` for a deletion) must match a selector and
    ``q``, ``geoQ``, ``scopeQ``; the changed attributes must meet ``watchedAttributes``
    and one of the subscription's triggers.
    """
    entity = change.after if change.after is not None else change.before
    assert entity is not None
    if not _passes_entity_filters(rules, entity):
        return None

    def relevant(keys: frozenset[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        return frozenset(
            (iri, ds)
            for iri, ds in keys
            if (rules.watched is None or iri in rules.watched)
            and (rules.dataset_ids is None or ds in rules.dataset_ids)
        )

    triggers = rules.triggers
    if change.before is None:
        if "entityCreated" in triggers:
            return Match("entityCreated", frozenset())
        if "attributeCreated" in triggers and (rules.watched is None or relevant(summary.created)):
            return Match("attributeCreated", frozenset())
        return None
    if change.after is None:
        if "entityDeleted" in triggers:
            return Match("entityDeleted", frozenset())
        deleted = relevant(summary.deleted)
        if "attributeDeleted" in triggers and deleted:
            return Match("attributeDeleted", deleted)
        return None
    created, updated, deleted = (
        relevant(summary.created),
        relevant(summary.updated),
        relevant(summary.deleted),
    )
    if "attributeUpdated" in triggers and updated:
        return Match("attributeUpdated", deleted if "attributeDeleted" in triggers else frozenset())
    if "attributeCreated" in triggers and created:
        return Match("attributeCreated", deleted if "attributeDeleted" in triggers else frozenset())
    if "attributeDeleted" in triggers and deleted:
        return Match("attributeDeleted", deleted)
    if "entityUpdated" in triggers and (
        created or updated or deleted or (rules.watched is None and summary.entity_changed)
    ):
        return Match("entityUpdated", frozenset())
    return None


# ----------------------------------------------------------------------- rendering


def _nulled(instance: AttributeInstance, deleted_at: str) -> AttributeInstance:
    kind = instance.get("type", "Property")
    key = VALUE_KEY_BY_KIND.get(kind, "value")
    value: Any = {"@none": NGSI_LD_NULL} if kind == "LanguageProperty" else NGSI_LD_NULL
    out: AttributeInstance = {"type": kind, key: value}
    for meta in ("datasetId", "createdAt", "modifiedAt"):
        if meta in instance:
            out[meta] = instance[meta]
    out["deletedAt"] = deleted_at
    return out


def render_change(
    sub: Subscription,
    change: EntityChange,
    match: Match,
    now: datetime,
    fetch: FetchEntities,
) -> list[dict[str, Any]]:
    """The notification data for one matched change (the entity, plus linked ones on
    ``join=flat``), compacted with the subscription's notification context.

    Deleted attributes appear with the value ``urn:ngsi-ld:null`` (and ``deletedAt``
    with sysAttrs); a deleted entity is ``{id, type, deletedAt}`` plus, with
    ``showChanges`` or an ``attributeDeleted`` trigger, its attributes so nulled.
    ``showChanges`` adds ``previousValue`` (``previousObject``, ...) to what changed.
    """
    rules = sub.rules
    assert rules is not None and sub.notify_ctx is not None
    ctx = sub.notify_ctx
    deleted_at = format_datetime(now)
    previous = _instances(change.before)
    extras: dict[tuple[str, str], dict[str, Any]] = {}
    if change.after is None:
        before = change.before
        assert before is not None
        view: StoredEntity = {k: v for k, v in before.items() if k != "attrs"}
        shown = set(previous) if rules.show_changes else set(match.deleted)
        if match.reason == "attributeDeleted":
            shown |= set(match.deleted)
        attrs: dict[str, list[AttributeInstance]] = {}
        for iri, instances in before.get("attrs", {}).items():
            kept = [
                _nulled(i, deleted_at)
                for i in instances
                if (iri, i.get("datasetId", "@none")) in shown
            ]
            if kept:
                attrs[iri] = kept
        view["attrs"] = attrs
        changed_keys: set[tuple[str, str]] = shown
    else:
        view = dict(change.after)
        attrs = {iri: list(instances) for iri, instances in change.after.get("attrs", {}).items()}
        for iri, ds in sorted(match.deleted):
            attrs.setdefault(iri, []).append(_nulled(previous[(iri, ds)], deleted_at))
        view["attrs"] = attrs
        changed_keys = set(match.deleted) | {
            k
            for k in _instances(change.after)
            if k in previous and previous[k] != _instances(change.after)[k]
        }
    if rules.show_changes and change.before is not None:
        for key in changed_keys:
            if key in previous:
                old = previous[key]
                value_key = VALUE_KEY_BY_KIND.get(old.get("type", "Property"), "value")
                old_value = old.get(value_key)
                if old.get("type") == "VocabProperty":
                    old_value = _compact_vocab(old_value, ctx)
                extras.setdefault(key, {})[_PREVIOUS_KEY[value_key]] = old_value
    options = rules.render
    if rules.join is not None:
        rendered_list = render_joined([view], ctx.compact, options, rules.join, fetch)
    else:
        rendered_list = [render_entity(view, ctx.compact, options)]
    if not rendered_list:
        return []
    main = rendered_list[0]
    if options.sys_attrs and options.format == "keyValues":
        # The attributes' system members have no place in keyValues; the entity's do.
        for member in ("createdAt", "modifiedAt"):
            if member in view:
                main[member] = view[member]
    if change.after is None:
        main["deletedAt"] = deleted_at
    if options.format != "keyValues":
        _add_extras(main, view, extras, ctx, options, deleted_at)
    return rendered_list


def _compact_vocab(value: Any, ctx: CompiledContext) -> Any:  # Any: JSON value
    if isinstance(value, list):
        return [ctx.compact(v) for v in value if isinstance(v, str)]
    return ctx.compact(value) if isinstance(value, str) else value


def _add_extras(
    rendered: dict[str, Any],
    view: StoredEntity,
    extras: Mapping[tuple[str, str], dict[str, Any]],
    ctx: CompiledContext,
    options: RenderOptions,
    deleted_at: str,
) -> None:
    """Put previous values (and, without sysAttrs, no deletedAt) into rendered instances."""
    for iri, instances in view.get("attrs", {}).items():
        name = ctx.compact(iri)
        out = rendered.get(name)
        if out is None:
            continue
        if options.dataset_ids is not None:
            instances = [i for i in instances if i.get("datasetId", "@none") in options.dataset_ids]
        outs = out if isinstance(out, list) else [out]
        for instance, rendered_instance in zip(instances, outs, strict=False):
            if not isinstance(rendered_instance, dict):
                continue
            key = (iri, instance.get("datasetId", "@none"))
            rendered_instance.update(extras.get(key, {}))
            if "deletedAt" in instance and options.sys_attrs:
                rendered_instance["deletedAt"] = deleted_at


def entity_matches_query(rules: SubscriptionRules, entity: StoredEntity) -> bool:
    """For periodic (``timeInterval``) notifications: does the entity match right now?"""
    if rules.watched is not None and rules.watched.isdisjoint(entity.get("attrs", {})):
        return False
    return _passes_entity_filters(rules, entity)


def _passes_entity_filters(rules: SubscriptionRules, entity: StoredEntity) -> bool:
    """The entity meets the subscription's selectors, ``q``, ``scopeQ`` and ``geoQ``."""
    if rules.selectors and not any(s.matches(entity) for s in rules.selectors):
        return False
    if rules.q is not None and not rules.q.matches(entity):
        return False
    if rules.scope_q is not None and not rules.scope_q.matches(entity.get("scope", [])):
        return False
    if rules.geo is not None:
        assert rules.geo_attr is not None
        instances = entity.get("attrs", {}).get(rules.geo_attr, [])
        if not any(rules.geo.matches(instance_value(i)) for i in instances):
            return False
    return True


# ------------------------------------------------------------------------ registry


class SubscriptionRegistry:
    """Subscriptions in memory, indexed per tenant for quick lookup of a change's candidates.

    A subscription whose every selector names entity ids is indexed by those ids (a
    change to another entity never looks at it); otherwise by the entity type IRIs
    it lists. Subscriptions whose entity types cannot be listed (type expressions
    with ``;``) or that have no ``entities`` are candidates for every change of their
    tenant.
    """

    def __init__(self) -> None:
        self._by_id: dict[tuple[str, str], Subscription] = {}
        self._by_entity: dict[str, dict[str, dict[str, Subscription]]] = {}
        self._by_type: dict[str, dict[str, dict[str, Subscription]]] = {}
        self._any_type: dict[str, dict[str, Subscription]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, tenant: str, sub_id: str) -> Subscription | None:
        """The subscription, or ``None``."""
        return self._by_id.get((tenant, sub_id))

    def all(self, tenant: str | None = None) -> list[Subscription]:
        """Subscriptions of one tenant (or all), in creation order."""
        return [s for (t, _), s in self._by_id.items() if tenant is None or t == tenant]

    def put(self, sub: Subscription) -> None:
        """Add or replace (re-indexing) a compiled subscription."""
        self.remove(sub.tenant, sub.id)
        rules = sub.rules
        assert rules is not None
        self._by_id[(sub.tenant, sub.id)] = sub
        entity_ids = _selected_ids(rules.selectors)
        if entity_ids is not None:
            index = self._by_entity.setdefault(sub.tenant, {})
            for entity_id in entity_ids:
                index.setdefault(entity_id, {})[sub.id] = sub
        elif rules.type_iris is None:
            self._any_type.setdefault(sub.tenant, {})[sub.id] = sub
        else:
            index = self._by_type.setdefault(sub.tenant, {})
            for iri in rules.type_iris:
                index.setdefault(iri, {})[sub.id] = sub

    def remove(self, tenant: str, sub_id: str) -> Subscription | None:
        """Remove and return the subscription (``None`` if absent)."""
        sub = self._by_id.pop((tenant, sub_id), None)
        if sub is None:
            return None
        self._any_type.get(tenant, {}).pop(sub_id, None)
        assert sub.rules is not None
        for index, keys in (
            (self._by_entity.get(tenant, {}), _selected_ids(sub.rules.selectors) or ()),
            (self._by_type.get(tenant, {}), sub.rules.type_iris or ()),
        ):
            for key in keys:
                subs = index.get(key)
                if subs is not None:
                    subs.pop(sub_id, None)
                    if not subs:
                        del index[key]
        return sub

    def candidates(
        self, tenant: str, types: Iterable[str], entity_id: str | None = None
    ) -> list[Subscription]:
        """Subscriptions that may match an entity of these types and this id (a superset).

        Without ``entity_id``, subscriptions indexed by entity id are left out."""
        found: dict[str, Subscription] = dict(self._any_type.get(tenant, {}))
        index = self._by_type.get(tenant)
        if index:
            for iri in types:
                found.update(index.get(iri, {}))
        if entity_id is not None:
            found.update(self._by_entity.get(tenant, {}).get(entity_id, {}))
        return list(found.values())


def _selected_ids(selectors: tuple[EntitySelector, ...]) -> frozenset[str] | None:
    """The entity ids the selectors are limited to, or ``None`` when any selector is not."""
    if not selectors or any(s.ids is None for s in selectors):
        return None
    return frozenset().union(*(s.ids for s in selectors if s.ids is not None))
