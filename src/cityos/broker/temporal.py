"""NGSI-LD temporal API semantics (ETSI GS CIM 009 v1.8 §4.5.7-4.5.9, §4.5.19, §5.6.11-16,
§5.7.3-4): temporal queries, aggregation and the temporal representations, and the
temporal write operations.

History itself is kept by the storage backend (``TemporalStorage``): every entity write
records its changed instances there. This module reads that history and adds what the
temporal API needs on top:

- ``timerel``: ``before`` is ``t < timeAt``, ``after`` is ``t >= timeAt``, ``between`` is
  ``timeAt <= t < endTimeAt`` (half-open, so consecutive ranges never count an instance
  twice). ``t`` is the ``timeproperty`` (``observedAt`` by default; an instance without
  ``observedAt`` counts at its ``modifiedAt``).
- ``lastN``: the most recent N instances *per attribute* within the range, returned in
  ascending time.
- Deletion markers (``deletedAt``) appear only with ``timeproperty=deletedAt``.
- Aggregation periods start at ``timeAt`` when the query has one (``after``/``between``),
  otherwise at the attribute's first instance; empty periods are left out. ``stddev`` is
  the sample standard deviation (0 for one value). Numeric methods ignore non-numbers;
  ``min``/``max`` also order strings.
- Temporal pagination (§6.3.10): at most ``instance_limit`` instances per attribute are
  returned (``lastN`` larger than the limit is cut to it too). When any attribute is cut,
  the whole response is cut at one instant so that no instance is missing inside the
  range it claims: ascending from the start without ``lastN`` (the range ends at the
  earliest last instance of a cut attribute), descending from the end with ``lastN``
  (the range ends at the latest first instance of a cut attribute). An attribute left
  with nothing stays in the response as empty, so clients see it continues in the next
  range. Aggregated values are never cut: they summarise the whole range.
- Durations: ISO 8601 ``PnYnMnWnDTnHnMnS``; a year is 365 days and a month 30 days, since
  a period must have one length whatever month it starts in.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cityos.broker.entities import (
    ENTITY_RESERVED,
    ExpandTerm,
    check_attribute_iri,
    check_attribute_name,
    check_entity_id,
    looks_like_instance_list,
    parse_entity,
    parse_fragment,
    parse_instance,
)
from cityos.broker.model import VALUE_KEY_BY_KIND, AttributeInstance, StoredEntity, instance_value
from cityos.broker.projection import omits, picks
from cityos.broker.representation import RenderOptions, render_instance
from cityos.broker.service import ContextBroker, EntityQuery
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.core.timeutil import datetime_ms, format_ms, now_iso, parse_datetime
from cityos.storage.base import (
    AggregatedHistory,
    HistoryBucket,
    HistoryRow,
    HistoryScan,
    TemporalStorage,
    instance_time_ms,
)

CompactIri = Callable[[str], str]

TIMERELS = ("before", "after", "between")
TIME_PROPERTIES = ("observedAt", "createdAt", "modifiedAt", "deletedAt")
AGGREGATION_METHODS = (
    "totalCount",
    "distinctCount",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "sumsq",
)
SIMPLIFIED_KEY_BY_KIND = {
    "Property": "values",
    "GeoProperty": "values",
    "Relationship": "objects",
    "LanguageProperty": "languageMaps",
    "JsonProperty": "jsons",
    "VocabProperty": "vocabs",
    "ListProperty": "valueLists",
    "ListRelationship": "objectLists",
}
"""The member of the simplified temporal representation (§4.5.9) per attribute kind."""

_DURATION_RE = re.compile(
    r"^P(?:(?P<y>\d+(?:\.\d+)?)Y)?(?:(?P<mo>\d+(?:\.\d+)?)M)?(?:(?P<w>\d+(?:\.\d+)?)W)?"
    r"(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<mi>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_UNIT_MS = {
    "y": 365 * 86_400_000,
    "mo": 30 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "mi": 60_000,
    "s": 1000,
}


def parse_duration_ms(text: str) -> int:
    """An ISO 8601 duration in milliseconds; ``BadRequestData`` when it is not one."""
    match = _DURATION_RE.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise BadRequestData(f"Not an ISO 8601 duration: {text!r}")
    total = 0.0
    for unit, amount in match.groupdict().items():
        if amount is not None:
            total += float(amount) * _UNIT_MS[unit]
    return round(total)


@dataclass(frozen=True)
class TemporalQuery:
    """The temporal part of a query: which instances of each attribute to return."""

    timerel: str | None = None
    time_at_ms: int | None = None
    end_time_at_ms: int | None = None
    timeproperty: str = "observedAt"
    last_n: int | None = None

    @property
    def start_ms(self) -> int | None:
        """Inclusive start of the range, if any."""
        return self.time_at_ms if self.timerel in ("after", "between") else None

    @property
    def end_ms(self) -> int | None:
        """Exclusive end of the range, if any."""
        if self.timerel == "before":
            return self.time_at_ms
        return self.end_time_at_ms if self.timerel == "between" else None


def parse_temporal_query(
    timerel: str | None,
    time_at: str | None,
    end_time_at: str | None,
    timeproperty: str | None,
    last_n: str | None,
) -> TemporalQuery:
    """Validate the temporal query parameters (§4.11); each problem is ``BadRequestData``."""
    if timerel is None:
        if time_at is not None or end_time_at is not None:
            raise BadRequestData("timeAt and endTimeAt need timerel")
    elif timerel not in TIMERELS:
        raise BadRequestData(f"timerel must be one of {', '.join(TIMERELS)}: {timerel!r}")
    elif not time_at:
        raise BadRequestData(f"timerel={timerel} needs timeAt")
    elif timerel == "between" and not end_time_at:
        raise BadRequestData("timerel=between needs endTimeAt")
    time_at_ms = datetime_ms_param(time_at, "timeAt")
    end_ms = datetime_ms_param(end_time_at, "endTimeAt")
    if (
        timerel == "between"
        and time_at_ms is not None
        and end_ms is not None
        and end_ms <= time_at_ms
    ):
        raise BadRequestData("endTimeAt must be after timeAt")
    prop = timeproperty or "observedAt"
    if prop not in TIME_PROPERTIES:
        raise BadRequestData(f"timeproperty must be one of {', '.join(TIME_PROPERTIES)}")
    n: int | None = None
    if last_n is not None:
        if not last_n.isdigit() or int(last_n) < 1:
            raise BadRequestData(f"lastN must be a positive integer: {last_n!r}")
        n = int(last_n)
    return TemporalQuery(timerel, time_at_ms, end_ms, prop, n)


def datetime_ms_param(text: str | None, name: str) -> int | None:
    """A date-time query parameter as Unix milliseconds (``None`` when absent)."""
    if text is None or text == "":
        return None
    return datetime_ms(parse_datetime(text, field=name).isoformat())


@dataclass(frozen=True)
class Aggregation:
    """``aggrMethods`` and ``aggrPeriodDuration`` (``None`` = one period for the range)."""

    methods: tuple[str, ...]
    period_ms: int | None


def parse_aggregation(methods: str | None, duration: str | None) -> Aggregation:
    """Validate aggregation parameters (§4.5.19); unknown methods or durations are 400."""
    if not methods:
        raise BadRequestData("aggregatedValues needs aggrMethods")
    names = tuple(m.strip() for m in methods.split(","))
    unknown = [m for m in names if m not in AGGREGATION_METHODS]
    if unknown:
        raise BadRequestData(f"Unknown aggregation method(s): {', '.join(unknown)}")
    period = parse_duration_ms(duration) if duration else 0
    return Aggregation(names, period or None)


# -- selecting instances --------------------------------------------------------------


def history_scan(
    query: TemporalQuery, attrs: frozenset[str] | None, *, with_last_n: bool = True
) -> HistoryScan:
    """The storage scan for a query: the time range (and lastN) go to storage for
    observedAt, so a range or "last N" read touches only those rows."""
    if query.timeproperty != "observedAt":
        return HistoryScan(attrs=attrs)
    last_n = query.last_n if with_last_n else None
    return HistoryScan(attrs=attrs, start_ms=query.start_ms, end_ms=query.end_ms, last_n=last_n)


def read_history(
    history: TemporalStorage,
    tenant: str,
    entity_id: str,
    attrs: frozenset[str] | None,
    query: TemporalQuery,
    dataset_ids: frozenset[str] | None,
) -> tuple[list[HistoryRow], list[HistoryRow]]:
    """(rows read, rows selected) for one entity.

    ``lastN`` is pushed down to storage; only when filtering (deletion markers, other
    datasetIds) leaves an attribute short of N while storage had N to give is the range
    read again in full, so the common case reads N rows per attribute.
    """
    rows = history.history(tenant, entity_id, history_scan(query, attrs))
    selected = select_rows(rows, query, dataset_ids)
    if query.last_n is not None and query.timeproperty == "observedAt":
        read = _count_by_attr(rows)
        kept = _count_by_attr(selected)
        if any(n >= query.last_n and kept.get(a, 0) < query.last_n for a, n in read.items()):
            rows = history.history(tenant, entity_id, history_scan(query, attrs, with_last_n=False))
            selected = select_rows(rows, query, dataset_ids)
    return rows, selected


def _count_by_attr(rows: list[HistoryRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.attr_iri] = counts.get(row.attr_iri, 0) + 1
    return counts


def select_rows(
    rows: list[HistoryRow], query: TemporalQuery, dataset_ids: frozenset[str] | None
) -> list[HistoryRow]:
    """Apply what storage did not: deletion markers, datasetId, other time properties, lastN.

    ``lastN`` is applied here rather than in storage because markers and datasetIds are
    filtered first; the storage-level ``last_n`` serves callers that need no filtering.
    """
    deleted_only = query.timeproperty == "deletedAt"
    by_attr: dict[str, list[tuple[int, HistoryRow]]] = {}
    for row in rows:
        if ("deletedAt" in row.instance) != deleted_only:
            continue
        if dataset_ids is not None and row.instance.get("datasetId", "@none") not in dataset_ids:
            continue
        time_ms = row_time_ms(row, query.timeproperty)
        if time_ms is None or not _in_range(time_ms, query):
            continue
        by_attr.setdefault(row.attr_iri, []).append((time_ms, row))
    out: list[HistoryRow] = []
    for timed in by_attr.values():
        timed.sort(key=lambda pair: pair[0])
        if query.last_n is not None:
            timed = timed[-query.last_n :]
        out.extend(row for _, row in timed)
    return out


def row_time_ms(row: HistoryRow, timeproperty: str) -> int | None:
    """The time of a row by ``timeproperty`` (``None`` when the instance lacks it)."""
    if timeproperty == "observedAt":
        return row.time_ms
    value = row.instance.get(timeproperty)
    return datetime_ms(value) if isinstance(value, str) else None


def _in_range(time_ms: int, query: TemporalQuery) -> bool:
    start, end = query.start_ms, query.end_ms
    return (start is None or time_ms >= start) and (end is None or time_ms < end)


def row_time_text(row: HistoryRow, timeproperty: str) -> str:
    """The time of a row as shown in simplified form: the instance's own timestamp text."""
    for key in (timeproperty, "observedAt", "deletedAt", "modifiedAt"):
        value = row.instance.get(key)
        if isinstance(value, str):
            return value
    return format_time(row.time_ms)


def format_time(time_ms: int) -> str:
    """ISO 8601 UTC, with milliseconds only when there are some."""
    text = format_ms(time_ms)
    return text.replace(".000Z", "Z")


# -- representations --------------------------------------------------------------------


@dataclass(frozen=True)
class TemporalFormat:
    """How to render: ``normalized``, ``temporalValues`` or ``aggregatedValues``."""

    name: str = "normalized"
    aggregation: Aggregation | None = None


def render_temporal_entity(
    entity_id: str,
    types: list[str],
    rows: list[HistoryRow],
    compact: CompactIri,
    options: RenderOptions,
    fmt: TemporalFormat,
    query: TemporalQuery,
    emptied: tuple[str, ...] = (),
    aggregated: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One entity's temporal representation (§4.5.7 normalized, §4.5.9 simplified,
    §4.5.19 aggregated); attributes with no selected instance are left out, except the
    ``emptied`` ones (cut by temporal pagination), which are shown empty. ``aggregated``
    items (aggregated by storage) are shown as they are."""
    out: dict[str, Any] = {}
    if _kept("id", options):
        out["id"] = entity_id
    if _kept("type", options):
        compacted = [compact(t) for t in types]
        out["type"] = compacted[0] if len(compacted) == 1 else compacted
    grouped: dict[str, list[HistoryRow]] = {}
    for row in rows:
        if _kept(row.attr_iri, options):
            grouped.setdefault(row.attr_iri, []).append(row)
    for attr_iri, attr_rows in grouped.items():
        name = compact(attr_iri)
        if fmt.name == "temporalValues":
            out[name] = _one_or_many(_simplified(attr_rows, compact, query))
        elif fmt.name == "aggregatedValues":
            assert fmt.aggregation is not None
            out[name] = _one_or_many(_aggregated(attr_rows, fmt.aggregation, query))
        else:
            out[name] = [_normalized(row, compact, options) for row in attr_rows]
    for attr_iri, item in (aggregated or {}).items():
        if _kept(attr_iri, options):
            out[compact(attr_iri)] = item
    for attr_iri in emptied:
        if _kept(attr_iri, options) and attr_iri not in grouped:
            out[compact(attr_iri)] = (
                {"type": "Property", "values": []} if fmt.name == "temporalValues" else []
            )
    return out


def _kept(member: str, options: RenderOptions) -> bool:
    return picks(options.pick, member) and not omits(options.omit, member)


def _one_or_many(items: list[dict[str, Any]]) -> Any:  # Any: JSON value
    return items[0] if len(items) == 1 else items


def _normalized(row: HistoryRow, compact: CompactIri, options: RenderOptions) -> dict[str, Any]:
    rendered: dict[str, Any] = render_instance(row.instance, compact, options)
    rendered["instanceId"] = row.instance_id
    if "deletedAt" in row.instance:
        rendered["deletedAt"] = row.instance["deletedAt"]
    return rendered


def _by_dataset(rows: list[HistoryRow]) -> list[list[HistoryRow]]:
    groups: dict[str | None, list[HistoryRow]] = {}
    for row in rows:
        groups.setdefault(row.instance.get("datasetId"), []).append(row)
    return list(groups.values())


def _simplified(
    rows: list[HistoryRow], compact: CompactIri, query: TemporalQuery
) -> list[dict[str, Any]]:
    out = []
    for group in _by_dataset(rows):
        kind = group[-1].instance.get("type", "Property")
        item: dict[str, Any] = {
            "type": kind,
            SIMPLIFIED_KEY_BY_KIND.get(kind, "values"): [
                [_simple_value(row.instance, compact), row_time_text(row, query.timeproperty)]
                for row in group
            ],
        }
        if "datasetId" in group[0].instance:
            item["datasetId"] = group[0].instance["datasetId"]
        out.append(item)
    return out


def _simple_value(instance: AttributeInstance, compact: CompactIri) -> Any:  # Any: JSON value
    kind = instance.get("type", "Property")
    value = instance.get(VALUE_KEY_BY_KIND.get(kind, "value"), instance.get("value"))
    if kind == "VocabProperty":
        vocab = [compact(v) for v in value] if isinstance(value, list) else compact(str(value))
        return {"vocab": vocab}
    if kind in ("JsonProperty", "LanguageProperty", "ListProperty", "ListRelationship"):
        return {VALUE_KEY_BY_KIND[kind]: value}
    return value


def _aggregated(
    rows: list[HistoryRow], aggregation: Aggregation, query: TemporalQuery
) -> list[dict[str, Any]]:
    out = []
    for group in _by_dataset(rows):
        times = [row_time_ms(row, query.timeproperty) or row.time_ms for row in group]
        origin = query.start_ms if query.start_ms is not None else min(times)
        last = query.end_ms if query.end_ms is not None else max(times) + 1
        period = aggregation.period_ms or max(last - origin, 1)
        buckets: dict[int, list[Any]] = {}
        for time_ms, row in zip(times, group, strict=True):
            buckets.setdefault((time_ms - origin) // period, []).append(
                instance_value(row.instance)
            )
        item: dict[str, Any] = {"type": group[-1].instance.get("type", "Property")}
        indexes = sorted(buckets)
        # Period bounds are formatted once per period, not once per method.
        bounds = {
            index: (
                format_time(origin + index * period),
                format_time(origin + (index + 1) * period),
            )
            for index in indexes
        }
        for method in aggregation.methods:
            series = []
            for index in indexes:
                result = aggregate(method, buckets[index])
                if result is not None:
                    series.append([result, *bounds[index]])
            item[method] = series
        if "datasetId" in group[0].instance:
            item["datasetId"] = group[0].instance["datasetId"]
        out.append(item)
    return out


def aggregated_item(summary: AggregatedHistory, methods: tuple[str, ...]) -> dict[str, Any]:
    """The aggregated representation of one attribute from storage's period summaries;
    the same results as :func:`aggregate` on the values (``stddev`` from sums: sample
    standard deviation, 0 for one value)."""
    item: dict[str, Any] = {"type": "Property"}
    bounds = [
        (
            format_time(summary.origin_ms + b.index * summary.period_ms),
            format_time(summary.origin_ms + (b.index + 1) * summary.period_ms),
        )
        for b in summary.buckets
    ]
    for method in methods:
        item[method] = [
            [_bucket_result(method, bucket), *bound]
            for bucket, bound in zip(summary.buckets, bounds, strict=True)
        ]
    return item


def _bucket_result(method: str, bucket: HistoryBucket) -> float | int:
    if method == "totalCount":
        return bucket.count
    if method == "distinctCount":
        assert bucket.distinct is not None
        return bucket.distinct
    if method == "sum":
        return bucket.total
    if method == "avg":
        return bucket.total / bucket.count
    if method == "min":
        return bucket.minimum
    if method == "max":
        return bucket.maximum
    if method == "sumsq":
        return bucket.total_sq
    if bucket.count < 2:
        return 0.0
    variance = (bucket.total_sq - bucket.total * bucket.total / bucket.count) / (bucket.count - 1)
    return math.sqrt(max(variance, 0.0))


def aggregate(method: str, values: list[Any]) -> Any:  # Any: JSON value
    """One aggregation method over the values of a period; ``None`` when it does not apply."""
    if method == "totalCount":
        return len(values)
    if method == "distinctCount":
        # Numbers count by value (1 and 1.0 are one value), as storage counts them.
        return len(
            {
                float(v)
                if isinstance(v, int | float) and not isinstance(v, bool)
                else orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
                for v in values
            }
        )
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if method in ("min", "max"):
        if numbers:
            return min(numbers) if method == "min" else max(numbers)
        texts = [v for v in values if isinstance(v, str)]
        if texts:
            return min(texts) if method == "min" else max(texts)
        return None
    if not numbers:
        return None
    if method == "sum":
        return math.fsum(numbers)
    if method == "avg":
        return math.fsum(numbers) / len(numbers)
    if method == "sumsq":
        return math.fsum(n * n for n in numbers)
    if method == "stddev":
        return statistics.stdev(numbers) if len(numbers) > 1 else 0.0
    raise BadRequestData(f"Unknown aggregation method: {method!r}")


# -- operations -------------------------------------------------------------------------


@dataclass
class TemporalEntityData:
    """An entity's selected history: its type IRIs and rows, and the attributes that
    temporal pagination emptied (rendered as empty, not left out)."""

    entity_id: str
    types: list[str]
    rows: list[HistoryRow]
    emptied: tuple[str, ...] = ()
    aggregated: dict[str, dict[str, Any]] | None = None
    """Aggregated items per attribute IRI, when storage aggregated (then ``rows`` is
    empty)."""


@dataclass(frozen=True)
class TemporalRange:
    """The time range a cut response covers (§6.3.10): ``start_ms`` is where the reading
    started (the later end with ``lastN``), ``end_ms`` where it was cut; ``size`` is
    ``lastN`` (``None`` when unknown)."""

    start_ms: int
    end_ms: int
    size: int | None

    def content_range(self) -> str:
        """The ``Content-Range`` header value: ``date-time <start>-<end>/<size or *>``."""
        size = "*" if self.size is None else str(self.size)
        return f"date-time {format_time(self.start_ms)}-{format_time(self.end_ms)}/{size}"


@dataclass
class TemporalPage:
    """One page of a temporal query: the entities, the total when counted, and the
    time range when temporal pagination cut the instances."""

    entities: list[TemporalEntityData]
    total: int | None = None
    cut: TemporalRange | None = None


def paginate(
    entities: list[TemporalEntityData], query: TemporalQuery, limit: int
) -> TemporalRange | None:
    """Cut the entities' rows to at most ``limit`` per attribute, at one common instant
    (see the module notes); ``None`` when nothing had to be cut (rows left untouched).

    Expects the rows of each attribute in ascending time, as ``select_rows`` gives them.
    """
    descending = query.last_n is not None
    groups: list[tuple[TemporalEntityData, str, list[tuple[int, HistoryRow]]]] = []
    bounds: list[int] = []
    for data in entities:
        by_attr: dict[str, list[tuple[int, HistoryRow]]] = {}
        for row in data.rows:
            time_ms = row_time_ms(row, query.timeproperty)
            by_attr.setdefault(row.attr_iri, []).append((time_ms or row.time_ms, row))
        for attr_iri, timed in by_attr.items():
            if len(timed) > limit:
                timed = timed[-limit:] if descending else timed[:limit]
                bounds.append(timed[0][0] if descending else timed[-1][0])
            groups.append((data, attr_iri, timed))
    if not bounds:
        return None
    bound = max(bounds) if descending else min(bounds)
    kept_times: list[int] = []
    for data in entities:
        data.rows = []
    emptied: dict[int, list[str]] = {}
    for data, attr_iri, timed in groups:
        kept = [(t, r) for t, r in timed if (t >= bound if descending else t <= bound)]
        if not kept:
            emptied.setdefault(id(data), []).append(attr_iri)
        data.rows.extend(row for _, row in kept)
        kept_times.extend(t for t, _ in kept)
    for data in entities:
        data.emptied = tuple(emptied.get(id(data), ()))
    if descending:
        start = query.end_ms if query.end_ms is not None else max(kept_times)
        return TemporalRange(start, bound, query.last_n)
    start = query.start_ms if query.start_ms is not None else min(kept_times)
    return TemporalRange(start, bound, None)


class TemporalBroker:
    """The temporal API's operations over a ``ContextBroker`` and its history backend.

    Writes of current state go through ``broker.storage`` (so change listeners see
    them and the backend records their history); history-only edits go to ``history``.
    """

    def __init__(
        self, broker: ContextBroker, history: TemporalStorage, *, instance_limit: int = 10
    ) -> None:
        self.broker = broker
        self.history = history
        self.instance_limit = instance_limit

    # -- provision --

    def create_or_append(self, tenant: str, payload: object, expand: ExpandTerm) -> bool:
        """Create a temporal entity (§5.6.11) or add its instances to an existing one;
        ``True`` when it was created. The latest instance of each attribute and datasetId
        becomes the entity's current value; every instance joins the history."""
        if not isinstance(payload, dict):
            raise BadRequestData("A temporal entity must be a JSON object")
        now = now_iso()
        head = {k: v for k, v in payload.items() if k in ("id", "@id", "type", "@type", "scope")}
        new = parse_entity(head, expand, now)
        attrs = _parse_temporal_attributes(payload, expand, now, new["id"])
        storage = self.broker.storage
        with storage.transaction():
            current = storage.get(tenant, new["id"])
            if current is None:
                extra = _merge_latest(new, attrs)
                storage.insert(tenant, new)
            else:
                for type_iri in new["type"]:
                    if type_iri not in current["type"]:
                        current["type"].append(type_iri)
                extra = _merge_latest(current, attrs)
                current["modifiedAt"] = now
                storage.update(tenant, current)
            self.history.append_history(tenant, new["id"], (current or new)["type"], extra)
        return current is None

    def append_attributes(
        self, tenant: str, entity_id: str, payload: object, expand: ExpandTerm
    ) -> None:
        """Add attribute instances to an existing temporal entity (§5.6.12)."""
        check_entity_id(entity_id)
        if not isinstance(payload, dict):
            raise BadRequestData("The body must be a JSON object")
        now = now_iso()
        attrs = _parse_temporal_attributes(payload, expand, now, entity_id)
        storage = self.broker.storage
        with storage.transaction():
            current = storage.get(tenant, entity_id)
            if current is None:
                types = self.history.temporal_types(tenant, entity_id)
                if types is None:
                    raise ResourceNotFound(f"Temporal entity {entity_id} not found")
                rows = [(iri, i) for iri, instances in attrs.items() for i in instances]
                self.history.append_history(tenant, entity_id, types, rows)
                return
            extra = _merge_latest(current, attrs)
            current["modifiedAt"] = now
            storage.update(tenant, current)
            self.history.append_history(tenant, entity_id, current["type"], extra)

    def delete_entity(self, tenant: str, entity_id: str) -> None:
        """Delete the temporal representation (§5.6.16): the history and the entity."""
        check_entity_id(entity_id)
        self.broker.check_tenant(tenant)
        with self.broker.storage.transaction():
            existed = self.broker.storage.delete(tenant, entity_id)
            removed = self.history.delete_history(tenant, entity_id)
        if not existed and not removed:
            raise ResourceNotFound(f"Temporal entity {entity_id} not found")

    def delete_attribute(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str,
        *,
        dataset_id: str | None,
        delete_all: bool,
    ) -> None:
        """Delete an attribute's history (§5.6.14): the default instance's, one
        datasetId's, or all; the attribute also leaves the current entity."""
        check_entity_id(entity_id)
        self.broker.check_tenant(tenant)
        storage = self.broker.storage
        with storage.transaction():
            current = storage.get(tenant, entity_id)
            changed = False
            if current is not None and attr_iri in current["attrs"]:
                kept = [
                    i
                    for i in current["attrs"][attr_iri]
                    if not delete_all and i.get("datasetId") != dataset_id
                ]
                changed = len(kept) != len(current["attrs"][attr_iri])
                if kept:
                    current["attrs"][attr_iri] = kept
                else:
                    del current["attrs"][attr_iri]
                if changed:
                    current["modifiedAt"] = now_iso()
                    storage.update(tenant, current)
            removed = self.history.delete_history(
                tenant, entity_id, attr_iri, dataset_id=dataset_id, all_datasets=delete_all
            )
            if not removed and not changed:
                raise ResourceNotFound(f"Attribute {attr_iri} of {entity_id} has no history")

    def modify_instance(
        self,
        tenant: str,
        entity_id: str,
        attr_name: str,
        instance_id: str,
        fragment: object,
        expand: ExpandTerm,
    ) -> None:
        """Merge a fragment into one history instance (§5.6.15)."""
        check_entity_id(entity_id)
        iri = expand(attr_name)
        check_attribute_iri(attr_name, iri)
        if not isinstance(fragment, dict):
            raise BadRequestData("The body must be a JSON object")
        inner = fragment.get(attr_name, fragment)
        items = inner if isinstance(inner, list) else [inner]
        if len(items) != 1 or not isinstance(items[0], dict):
            raise BadRequestData("Give exactly one attribute instance")
        now = now_iso()
        patch = parse_fragment(attr_name, items[0], expand, now, entity_id=entity_id)
        patch.pop("instanceId", None)
        self.broker.check_tenant(tenant)
        rows = self.history.history(tenant, entity_id, HistoryScan(attrs=frozenset({iri})))
        target = next((r for r in rows if r.instance_id == instance_id), None)
        if target is None:
            raise ResourceNotFound(f"No instance {instance_id} of {attr_name} in {entity_id}")
        merged = {**target.instance, **{k: v for k, v in patch.items() if k != "createdAt"}}
        merged["modifiedAt"] = now
        self.history.replace_history_instance(tenant, entity_id, iri, instance_id, merged)

    def delete_instance(self, tenant: str, entity_id: str, attr_iri: str, instance_id: str) -> None:
        """Delete one history instance (§5.6.15)."""
        check_entity_id(entity_id)
        self.broker.check_tenant(tenant)
        if not self.history.delete_history_instance(tenant, entity_id, attr_iri, instance_id):
            raise ResourceNotFound(f"No instance {instance_id} of {attr_iri} in {entity_id}")

    # -- consumption --

    def retrieve(
        self,
        tenant: str,
        entity_id: str,
        attrs: frozenset[str] | None,
        query: TemporalQuery,
        dataset_ids: frozenset[str] | None,
        *,
        aggregation: Aggregation | None = None,
    ) -> tuple[TemporalEntityData, TemporalRange | None]:
        """One entity's selected history (§5.7.3) and, when temporal pagination cut it,
        the range returned; 404 when the entity has no history, or none of ``attrs``.
        With ``aggregation`` nothing is cut, and storage aggregates when it can."""
        check_entity_id(entity_id)
        self.broker.check_tenant(tenant)
        types = self.history.temporal_types(tenant, entity_id)
        if types is None:
            raise ResourceNotFound(f"Temporal entity {entity_id} not found")
        if aggregation is not None:
            items = self._aggregate_in_storage(
                tenant, entity_id, attrs, query, dataset_ids, aggregation
            )
            if items is not None:
                return TemporalEntityData(entity_id, types, [], aggregated=items), None
        rows, selected = read_history(self.history, tenant, entity_id, attrs, query, dataset_ids)
        if attrs is not None and not rows:
            raise ResourceNotFound(f"Entity {entity_id} has no history of the attributes asked")
        data = TemporalEntityData(entity_id, types, selected)
        cut = paginate([data], query, self.instance_limit) if aggregation is None else None
        return data, cut

    def query(
        self,
        tenant: str,
        entity_query: EntityQuery,
        query: TemporalQuery,
        dataset_ids: frozenset[str] | None,
        *,
        aggregation: Aggregation | None = None,
    ) -> TemporalPage:
        """Entities matching ``entity_query`` (on their current state) that have an
        instance selected by ``query``, with that history (§5.7.4): one page of them, the
        total when counted, and the range when temporal pagination cut the instances
        (never with ``aggregation``).

        Entities without a selected instance are no match, so they are dropped *before*
        ``offset``/``limit`` apply: a page is short only at the end of the results.
        """
        found: list[TemporalEntityData] = []
        total = 0
        wanted = entity_query.offset + entity_query.limit
        for entity in self.broker.matching_entities(tenant, entity_query):
            data = None
            if aggregation is not None:
                items = self._aggregate_in_storage(
                    tenant, entity["id"], entity_query.attrs, query, dataset_ids, aggregation
                )
                if items is not None:
                    data = TemporalEntityData(entity["id"], entity["type"], [], aggregated=items)
            if data is None:
                _, selected = read_history(
                    self.history, tenant, entity["id"], entity_query.attrs, query, dataset_ids
                )
                if not selected:
                    continue
                data = TemporalEntityData(entity["id"], entity["type"], selected)
            if entity_query.offset <= total < wanted:
                found.append(data)
            total += 1
            if total >= wanted and not entity_query.count:
                break
        cut = paginate(found, query, self.instance_limit) if aggregation is None else None
        return TemporalPage(found, total if entity_query.count else None, cut)

    def _aggregate_in_storage(
        self,
        tenant: str,
        entity_id: str,
        attrs: frozenset[str] | None,
        query: TemporalQuery,
        dataset_ids: frozenset[str] | None,
        aggregation: Aggregation,
    ) -> dict[str, dict[str, Any]] | None:
        """Aggregated items per attribute computed by storage, or ``None`` when the query
        needs the general path: other time properties, ``lastN``, datasetIds, attributes
        not named (their list would need a read), or rows that are not plain numbers."""
        if (
            query.timeproperty != "observedAt"
            or query.last_n is not None
            or dataset_ids is not None
            or attrs is None
        ):
            return None
        items: dict[str, dict[str, Any]] = {}
        for attr_iri in sorted(attrs):
            summary = self.history.aggregate_history(
                tenant,
                entity_id,
                attr_iri,
                query.start_ms,
                query.end_ms,
                aggregation.period_ms,
                distinct="distinctCount" in aggregation.methods,
            )
            if summary is None:
                return None
            items[attr_iri] = aggregated_item(summary, aggregation.methods)
        return items

    # -- retention --

    def expire(self, retention_ms: dict[str, int], now_ms: int) -> int:
        """Delete history older than each type's retention; return how many rows."""
        return sum(
            self.history.expire_history(type_iri, now_ms - keep_ms)
            for type_iri, keep_ms in retention_ms.items()
        )


def _parse_temporal_attributes(
    payload: dict[str, Any], expand: ExpandTerm, now: str, entity_id: str
) -> dict[str, list[AttributeInstance]]:
    """Every attribute of a temporal payload as a list of instances (any number per
    datasetId, unlike an entity payload)."""
    attrs: dict[str, list[AttributeInstance]] = {}
    for name, raw in payload.items():
        if name in ENTITY_RESERVED:
            continue
        check_attribute_name(name)
        items = raw if looks_like_instance_list(raw) else [raw]
        if not isinstance(items, list):
            raise BadRequestData(f"Attribute {name} must be an instance or a list of instances")
        instances = []
        for item in items:
            if isinstance(item, dict):
                item = {k: v for k, v in item.items() if k != "instanceId"}
            instances.append(parse_instance(name, item, expand, now, entity_id=entity_id))
        attrs[expand(name)] = instances
    return attrs


def _merge_latest(
    entity: StoredEntity, attrs: dict[str, list[AttributeInstance]]
) -> list[tuple[str, AttributeInstance]]:
    """Make the latest new instance per (attribute, datasetId) current when it is not older
    than the current one; return the other instances, which go to history directly."""
    extra: list[tuple[str, AttributeInstance]] = []
    for iri, instances in attrs.items():
        groups: dict[str | None, list[AttributeInstance]] = {}
        for instance in instances:
            groups.setdefault(instance.get("datasetId"), []).append(instance)
        existing: list[AttributeInstance] = entity["attrs"].setdefault(iri, [])
        for dataset_id, group in groups.items():
            group.sort(key=instance_time_ms)
            latest = group[-1]
            older = group[:-1]
            current = next((i for i in existing if i.get("datasetId") == dataset_id), None)
            if current is None:
                existing.append(latest)
            elif instance_time_ms(latest) >= instance_time_ms(current):
                latest["createdAt"] = current.get("createdAt", latest.get("createdAt"))
                existing[existing.index(current)] = latest
            else:
                older = group
            extra.extend((iri, instance) for instance in older)
    return extra


def retention_from_settings(retention: dict[str, str], expand: ExpandTerm) -> dict[str, int]:
    """Per-type retention settings (type name -> ISO 8601 duration) as type IRI -> ms."""
    return {expand(type_name): parse_duration_ms(text) for type_name, text in retention.items()}
