"""The NGSI-LD query language (``q``), scope query (``scopeQ``) and type selection (``type``).

Public interface:

- ``parse_q(text: str) -> QExpression`` raises ``InvalidRequest`` on bad syntax.
- ``QExpression.expand(expand_term) -> QExpression`` with attribute names expanded
  to IRIs by ``expand_term: Callable[[str], str]``.
- ``QExpression.matches(entity: StoredEntity) -> bool`` evaluates on the stored form
  (see ``cityos.broker.model``).
- ``parse_scope_q(text) -> ScopeExpression`` with ``.matches(scopes: list[str]) -> bool``.
- ``parse_type_selector(text) -> TypeExpression`` (``A,B`` or ``A|B`` = either,
  ``A;B`` = both, parentheses) with ``.expand(expand_term)``,
  ``.matches(types: list[str]) -> bool``, ``.type_names() -> set[str]`` and
  ``.is_simple_union() -> bool``.

Every expression is an immutable tree of frozen dataclasses; ``render()`` (also
``str()``) gives back query text that parses to an equal tree (for trees that have not
been expanded: expanded IRIs are rendered verbatim and are not valid ``AttrName`` s).

Grammar (ETSI GS CIM 009 clause 4.9, with the extensions listed below)::

    Query     = OrExpr
    OrExpr    = AndExpr *("|" AndExpr)
    AndExpr   = Primary *(";" Primary)         ; AND binds tighter than OR (4.9)
    Primary   = "(" OrExpr ")" / Term
    Term      = Path / "!" Path / Path Op Value
    Path      = AttrName *("." AttrName) ["." MetaProperty] *("[" Key *("." Key) "]")
    Op        = "==" / "!=" / ">" / ">=" / "<" / "<=" / "~=" / "!~="

No whitespace is allowed outside quoted strings (the spec grammar has none). URL
decoding is the HTTP layer's job.

Decisions on points the spec leaves open or where peers differ:

- ``!attr`` (attribute does not exist) is accepted although 4.9 (v1.8/v1.9) only
  defines existence; Orion-LD accepts it too.
- Compound keys: the spec writes ``attr[a.b]``; ``attr[a][b]`` is accepted as the same
  path. ``[*]`` selects every member (any language of a LanguageProperty).
- Meta-property tails (``observedAt``, ``modifiedAt``, ``createdAt``, ``unitCode``,
  ``datasetId``) may end a dotted path after at least one attribute name; they are
  not expanded and cannot be followed by sub-attributes or keys.
- ``~=`` / ``!~=``: 4.9 says the target value "shall be in the L(R)", i.e. the
  *whole* string must belong to the language of the pattern, so we use
  ``re.fullmatch`` (clients wanting "contains" write ``.*x.*``). Orion-LD, Scorpio
  and Stellio use search semantics; we follow the normative text. Patterns are
  Python ``re`` syntax (a superset of the POSIX ERE the spec cites for the common
  cases). A pattern is either a JSON string (``name~="(?i)park.*"``) or unquoted;
  an unquoted pattern ends at the first ``;``, ``|`` or unbalanced ``)`` outside
  its own groups and character classes, so top-level alternation needs quotes or
  a group. Non-string targets never match either operator (4.9).
- ``!=``: the target element must exist (4.9 "A matching entity shall contain the
  target element"); a value of another data type counts as *unequal*, so
  ``x!=5`` matches ``x: "five"`` (4.9 "If the data type of the target value and
  the data type of the Query Term value are different, then they shall be
  considered unequal"). All other operators are false on a type mismatch.
- Relationship / ListRelationship targets only take ``==`` and ``!=`` (4.9); their
  meta-properties (``rel.observedAt``) take any operator.
- Multiple instances (datasetIds) match if ANY instance matches; an array target
  matches ``==``/ordering/``~=`` if any element does, ``!=``/``!~=`` if no element
  does (4.9, "is included in the target value").
- Strings compare by code point, not by the Unicode Collation Algorithm (a SHOULD).
- Unquoted values: ``true``/``false``, JSON numbers, ``DateTime`` (a time zone is
  required, as everywhere on the platform), ``Date``, ``Time`` (``Z`` optional,
  compared as a time of day), URIs ``scheme:rest`` (``rest`` without ``;|(),"``
  and whitespace; quote a URI that contains them) and bare vocabulary terms
  (``gender==Male``, clause 4.9 example 12). URIs and terms are only allowed with
  ``==`` / ``!=`` and compare as plain strings against the stored value.
  VocabProperty values are stored expanded; expanding a query term value
  (``expandValues``) is the broker's job before evaluation, this module compares
  the value as given.
"""

from __future__ import annotations

import enum
import json
import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any, TypeVar

from cityos.broker.model import AttributeInstance, StoredEntity
from cityos.core.errors import InvalidRequest

__all__ = [
    "META_PROPERTIES",
    "AttrPath",
    "QAnd",
    "QComparison",
    "QExists",
    "QExpression",
    "QNotExists",
    "QOperand",
    "QOperator",
    "QOr",
    "QPattern",
    "QRange",
    "QValue",
    "QValueKind",
    "QValueList",
    "ScopeAnd",
    "ScopeExpression",
    "ScopeOr",
    "ScopePattern",
    "TypeAnd",
    "TypeExpression",
    "TypeName",
    "TypeOr",
    "parse_q",
    "parse_scope_q",
    "parse_type_selector",
]

ExpandTerm = Callable[[str], str]

META_PROPERTIES = frozenset({"observedAt", "modifiedAt", "createdAt", "unitCode", "datasetId"})
"""Names that, ending a dotted path, address a meta-property of the instance."""

MAX_NESTING = 32
"""Deepest parenthesis nesting accepted; deeper input is rejected instead of recursing."""

_RELATIONSHIP_KINDS = frozenset({"Relationship", "ListRelationship"})


# --------------------------------------------------------------------------- values


class QValueKind(enum.Enum):
    """The data type of a query value; it decides which stored values it compares with."""

    NUMBER = "number"
    STRING = "string"
    BOOLEAN = "boolean"
    DATETIME = "datetime"
    DATE = "date"
    TIME = "time"
    URI = "uri"  # also bare vocabulary terms; compares like STRING


Scalar = int | float | bool | str | datetime | date | time
"""A parsed query value: datetimes are aware and in UTC, times are naive times of day."""


@dataclass(frozen=True, slots=True)
class QValue:
    """One literal of a query term."""

    kind: QValueKind
    value: Scalar

    def render(self) -> str:
        """Query text for this literal (parses back to an equal ``QValue``)."""
        v = self.value
        if self.kind is QValueKind.STRING:
            return json.dumps(v, ensure_ascii=False)
        if self.kind is QValueKind.BOOLEAN:
            return "true" if v else "false"
        if self.kind is QValueKind.DATETIME:
            assert isinstance(v, datetime)
            return v.isoformat().replace("+00:00", "Z")
        if isinstance(v, date | time):
            return v.isoformat()
        return str(v)  # numbers (repr of a float is valid JSON), URIs and terms


@dataclass(frozen=True, slots=True)
class QRange:
    """``low..high``, both ends included; only with ``==`` and ``!=``."""

    low: QValue
    high: QValue

    def render(self) -> str:
        """Query text of the range."""
        return f"{self.low.render()}..{self.high.render()}"


@dataclass(frozen=True, slots=True)
class QValueList:
    """``a,b,c`` (two or more values); ``==`` means any of them, ``!=`` none of them."""

    values: tuple[QValue, ...]

    def render(self) -> str:
        """Query text of the list."""
        return ",".join(v.render() for v in self.values)


@dataclass(frozen=True, slots=True)
class QPattern:
    """A regular expression for ``~=`` / ``!~=``; compiled once, at construction."""

    source: str
    compiled: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.source)
        except (re.error, OverflowError, RecursionError) as exc:
            raise InvalidRequest(
                f"regular expression {self.source!r} does not compile ({exc})"
            ) from None
        object.__setattr__(self, "compiled", compiled)

    def render(self) -> str:
        """Always quoted, so that any pattern survives a round trip."""
        return json.dumps(self.source, ensure_ascii=False)


QOperand = QValue | QRange | QValueList | QPattern


class QOperator(enum.Enum):
    """Comparison operators; the value is the query syntax."""

    EQ = "=="
    NE = "!="
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="
    MATCH = "~="
    NOT_MATCH = "!~="


# ----------------------------------------------------------------- stored-value coercion
# Each coercion maps a stored JSON leaf to the comparison domain of one query value
# kind, or to None when the leaf has another data type (then it never compares).


def _as_number(leaf: object) -> int | float | None:
    # type() rather than isinstance(): bool is an int subclass and must not compare.
    if type(leaf) is int or type(leaf) is float:
        return leaf
    return None


def _as_string(leaf: object) -> str | None:
    return leaf if isinstance(leaf, str) else None


def _as_boolean(leaf: object) -> bool | None:
    return leaf if isinstance(leaf, bool) else None


@lru_cache(maxsize=8192)
def _parse_datetime(text: str) -> datetime | None:
    """A stored or queried ``DateTime`` string as an aware UTC datetime, else ``None``.

    Cached because the same stored timestamps are compared over and over.
    """
    if not _DATETIME_RE.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


@lru_cache(maxsize=4096)
def _parse_date(text: str) -> date | None:
    if not _DATE_RE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _parse_time(text: str) -> time | None:
    if not _TIME_RE.fullmatch(text):
        return None
    try:
        return time.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        return None


def _as_datetime(leaf: object) -> datetime | None:
    return _parse_datetime(leaf) if isinstance(leaf, str) else None


def _as_date(leaf: object) -> date | None:
    return _parse_date(leaf) if isinstance(leaf, str) else None


def _as_time(leaf: object) -> time | None:
    return _parse_time(leaf) if isinstance(leaf, str) else None


Coerce = Callable[[object], object]

_COERCE: dict[QValueKind, Coerce] = {
    QValueKind.NUMBER: _as_number,
    QValueKind.STRING: _as_string,
    QValueKind.URI: _as_string,
    QValueKind.BOOLEAN: _as_boolean,
    QValueKind.DATETIME: _as_datetime,
    QValueKind.DATE: _as_date,
    QValueKind.TIME: _as_time,
}

# Any: the operands are only ever two values of one comparison domain (checked by the
# coercion before the call), which the type system cannot express.
_ORDERING: dict[QOperator, Callable[[Any, Any], bool]] = {
    QOperator.GT: operator.gt,
    QOperator.GE: operator.ge,
    QOperator.LT: operator.lt,
    QOperator.LE: operator.le,
}


def _leaves(target: object) -> Sequence[object]:
    """The scalars a target value offers for comparison: array elements, unwrapped.

    ``{"@type": ..., "@value": v}`` (typed literal, e.g. a DateTime) compares as ``v``.
    Returns the stored list itself when nothing needs unwrapping (the common case),
    since this runs once per instance per term per entity.
    """
    if type(target) is list:
        if any(type(item) is dict and "@value" in item for item in target):
            return [item["@value"] if _is_typed(item) else item for item in target]
        return target
    if type(target) is dict and "@value" in target:
        return (target["@value"],)
    return (target,)


def _is_typed(item: object) -> bool:
    return type(item) is dict and "@value" in item


# ------------------------------------------------------------------------ attribute paths


@dataclass(frozen=True, slots=True)
class AttrPath:
    """``names[0]`` is the attribute, ``names[1:]`` sub-attributes (all expandable);
    ``meta`` an optional meta-property tail; ``keys`` the compound trail in ``[...]``."""

    names: tuple[str, ...]
    meta: str | None = None
    keys: tuple[str, ...] = ()

    def render(self) -> str:
        """Query text of the path (``[a.b]`` form for compound keys)."""
        text = ".".join(self.names)
        if self.meta is not None:
            text += "." + self.meta
        if self.keys:
            text += "[" + ".".join(self.keys) + "]"
        return text

    def expand(self, expand_term: ExpandTerm) -> AttrPath:
        """Attribute and sub-attribute names expanded; meta-property and keys kept."""
        return AttrPath(tuple(expand_term(n) for n in self.names), self.meta, self.keys)

    def instances(self, entity: StoredEntity) -> list[AttributeInstance]:
        """The instances of the element the names address (empty when absent)."""
        found = entity.get("attrs", {}).get(self.names[0])
        if not found:
            return []
        instances: list[AttributeInstance] = found if isinstance(found, list) else [found]
        for sub in self.names[1:]:
            nested: list[AttributeInstance] = []
            for inst in instances:
                child = inst.get(sub)
                if isinstance(child, dict):
                    nested.append(child)
                elif isinstance(child, list):
                    nested.extend(c for c in child if isinstance(c, dict))
            if not nested:
                return []
            instances = nested
        return instances

    def targets(self, entity: StoredEntity) -> Iterator[tuple[object, bool]]:
        """``(target value, is relationship)`` for each instance that has the target.

        A path that does not resolve on an instance (missing meta-property, compound
        key not found) means that instance has no target element (4.9).
        """
        for inst in self.instances(entity):
            if self.meta is not None:
                if self.meta in inst:
                    yield inst[self.meta], False
                continue
            kind = inst.get("type", "Property")
            if kind == "LanguageProperty":
                found = _language_target(inst.get("languageMap"), self.keys)
            else:
                # Unknown kinds are read like a Property (the model's default).
                get_value = _KIND_VALUE.get(kind, _KIND_VALUE["Property"])
                found = _walk_keys(get_value(inst), self.keys)
            if found is not _MISSING:
                yield found, kind in _RELATIONSHIP_KINDS


_MISSING = object()


def _value_getter(key: str) -> Callable[[AttributeInstance], object]:
    def get(inst: AttributeInstance) -> object:
        return inst.get(key, _MISSING)

    return get


_KIND_VALUE: dict[str, Callable[[AttributeInstance], object]] = {
    "Property": _value_getter("value"),
    "GeoProperty": _value_getter("value"),
    "Relationship": _value_getter("object"),
    "JsonProperty": _value_getter("json"),
    "VocabProperty": _value_getter("vocab"),
    "ListProperty": _value_getter("valueList"),
    "ListRelationship": _value_getter("objectList"),
}


def _walk_keys(value: object, keys: tuple[str, ...]) -> object:
    """Follow compound keys into JSON objects; ``*`` collects every member value."""
    if value is _MISSING or not keys:
        return value
    current: list[object] = [value]
    spread = False
    for key in keys:
        following: list[object] = []
        for item in current:
            if not isinstance(item, dict):
                continue
            if key == "*":
                spread = True
                for member in item.values():
                    if isinstance(member, list):
                        following.extend(member)
                    else:
                        following.append(member)
            elif key in item:
                following.append(item[key])
        if not following:
            return _MISSING
        current = following
    return current if spread else current[0]


def _language_target(language_map: object, keys: tuple[str, ...]) -> object:
    """All languages' values as one target (none or ``[*]``), or one language's value."""
    if not isinstance(language_map, dict):
        return _MISSING
    if not keys or keys == ("*",):
        collected: list[object] = []
        for text in language_map.values():
            if isinstance(text, list):
                collected.extend(text)
            else:
                collected.append(text)
        return collected
    if len(keys) == 1 and keys[0] in language_map:
        return language_map[keys[0]]
    return _MISSING


# ----------------------------------------------------------------------------- q AST


class QExpression(ABC):
    """A parsed ``q`` expression (immutable; evaluate with :meth:`matches`)."""

    __slots__ = ()

    @abstractmethod
    def matches(self, entity: StoredEntity) -> bool:
        """True when the stored (expanded) entity satisfies the expression."""

    @abstractmethod
    def expand(self, expand_term: ExpandTerm) -> QExpression:
        """A copy with every attribute/sub-attribute name replaced by ``expand_term(name)``."""

    @abstractmethod
    def render(self) -> str:
        """Query text that parses back to an equal expression."""

    def __str__(self) -> str:
        return self.render()


@dataclass(frozen=True, slots=True)
class QExists(QExpression):
    """``attr``: the target element exists (on any instance)."""

    path: AttrPath

    def matches(self, entity: StoredEntity) -> bool:
        """True when some instance has the target element."""
        return next(self.path.targets(entity), None) is not None

    def expand(self, expand_term: ExpandTerm) -> QExists:
        """See :meth:`QExpression.expand`."""
        return QExists(self.path.expand(expand_term))

    def render(self) -> str:
        """See :meth:`QExpression.render`."""
        return self.path.render()


@dataclass(frozen=True, slots=True)
class QNotExists(QExpression):
    """``!attr``: no instance has the target element."""

    path: AttrPath

    def matches(self, entity: StoredEntity) -> bool:
        """True when no instance has the target element."""
        return next(self.path.targets(entity), None) is None

    def expand(self, expand_term: ExpandTerm) -> QNotExists:
        """See :meth:`QExpression.expand`."""
        return QNotExists(self.path.expand(expand_term))

    def render(self) -> str:
        """See :meth:`QExpression.render`."""
        return "!" + self.path.render()


@dataclass(frozen=True, slots=True)
class QComparison(QExpression):
    """``path op operand``; the per-leaf test is compiled once at construction."""

    path: AttrPath
    op: QOperator
    operand: QOperand
    _leaf_test: Callable[[object], bool] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_leaf_test", _compile_leaf_test(self.op, self.operand))

    def matches(self, entity: StoredEntity) -> bool:
        """Any instance whose target satisfies the term (see the module docstring)."""
        test = self._leaf_test
        op = self.op
        for target, is_relationship in self.path.targets(entity):
            if op is QOperator.NE:
                for leaf in _leaves(target):
                    if test(leaf):
                        break
                else:
                    return True
            elif op is QOperator.NOT_MATCH:
                if is_relationship:
                    continue  # 4.9: only == and != apply to (List)Relationship targets
                strings = [leaf for leaf in _leaves(target) if isinstance(leaf, str)]
                if strings and not any(test(s) for s in strings):
                    return True
            elif op is QOperator.EQ or not is_relationship:  # same 4.9 rule
                for leaf in _leaves(target):
                    if test(leaf):
                        return True
        return False

    def expand(self, expand_term: ExpandTerm) -> QComparison:
        """See :meth:`QExpression.expand`."""
        return QComparison(self.path.expand(expand_term), self.op, self.operand)

    def render(self) -> str:
        """See :meth:`QExpression.render`."""
        return f"{self.path.render()}{self.op.value}{self.operand.render()}"


def _compile_leaf_test(op: QOperator, operand: QOperand) -> Callable[[object], bool]:
    """A predicate on one stored scalar: "equals / in range / compares / matches".

    ``!=`` and ``!~=`` use the same test as ``==`` and ``~=``; the caller negates
    over the whole target, since "none of the elements equals" is not "some does not".
    """
    if isinstance(operand, QPattern):
        pattern = operand.compiled

        def matches_pattern(leaf: object) -> bool:
            return isinstance(leaf, str) and pattern.fullmatch(leaf) is not None

        return matches_pattern
    if isinstance(operand, QRange):
        coerce = _COERCE[operand.low.kind]
        low, high = operand.low.value, operand.high.value

        def in_range(leaf: object) -> bool:
            c = coerce(leaf)
            return c is not None and low <= c <= high  # type: ignore[operator]

        return in_range
    if op in _ORDERING:
        assert isinstance(operand, QValue)
        coerce = _COERCE[operand.kind]
        compare = _ORDERING[op]
        reference = operand.value

        def ordered(leaf: object) -> bool:
            c = coerce(leaf)
            return c is not None and compare(c, reference)

        return ordered
    values = operand.values if isinstance(operand, QValueList) else (operand,)
    # Group the accepted values by coercion so a leaf is converted once per data type.
    by_coercion: dict[Coerce, set[object]] = {}
    for v in values:
        by_coercion.setdefault(_COERCE[v.kind], set()).add(v.value)
    groups = tuple((c, frozenset(s)) for c, s in by_coercion.items())

    def equal(leaf: object) -> bool:
        for coerce_leaf, accepted in groups:
            c = coerce_leaf(leaf)
            if c is not None and c in accepted:
                return True
        return False

    return equal


@dataclass(frozen=True, slots=True)
class QAnd(QExpression):
    """All terms hold (``;``)."""

    terms: tuple[QExpression, ...]

    def matches(self, entity: StoredEntity) -> bool:
        """True when every term matches."""
        return all(t.matches(entity) for t in self.terms)

    def expand(self, expand_term: ExpandTerm) -> QAnd:
        """See :meth:`QExpression.expand`."""
        return QAnd(tuple(t.expand(expand_term) for t in self.terms))

    def render(self) -> str:
        """Children that are themselves AND/OR groups are parenthesised."""
        return ";".join(
            f"({t.render()})" if isinstance(t, QAnd | QOr) else t.render() for t in self.terms
        )


@dataclass(frozen=True, slots=True)
class QOr(QExpression):
    """Any term holds (``|``)."""

    terms: tuple[QExpression, ...]

    def matches(self, entity: StoredEntity) -> bool:
        """True when some term matches."""
        return any(t.matches(entity) for t in self.terms)

    def expand(self, expand_term: ExpandTerm) -> QOr:
        """See :meth:`QExpression.expand`."""
        return QOr(tuple(t.expand(expand_term) for t in self.terms))

    def render(self) -> str:
        """AND children need no parentheses (AND binds tighter); OR children do."""
        return "|".join(f"({t.render()})" if isinstance(t, QOr) else t.render() for t in self.terms)


# --------------------------------------------------------------------------- lexing

_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})", re.ASCII
)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_TIME_RE = re.compile(r"\d{2}:\d{2}:\d{2}(?:\.\d+)?Z?", re.ASCII)
_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s;|(),\"\\]*")
_NAME_RE = re.compile(r"[^\W\d_]\w*")  # AttrName: unicodeLetter *(unicodeNumber / letter / _)
_KEY_RE = re.compile(r"[\w@\-]+|\*")
_QUERY_OPERATORS = ("!~=", "==", "!=", ">=", "<=", "~=", ">", "<")
_COMPARABLE = frozenset(
    {QValueKind.NUMBER, QValueKind.STRING, QValueKind.DATETIME, QValueKind.DATE, QValueKind.TIME}
)


class _Cursor:
    """Text plus position, with errors that name the language and the offset."""

    __slots__ = ("language", "pos", "text")

    def __init__(self, language: str, text: str) -> None:
        self.language = language
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def startswith(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def match(self, pattern: re.Pattern[str]) -> str | None:
        found = pattern.match(self.text, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group()

    def error(self, problem: str, pos: int | None = None) -> InvalidRequest:
        at = self.pos if pos is None else pos
        where = (
            f"at position {at} ({self.text[at : at + 20]!r})"
            if at < len(self.text)
            else "at the end"
        )
        return InvalidRequest(f"Invalid {self.language}: {problem} {where} in {self.text!r}")


N = TypeVar("N")


def _parse_boolean(
    cur: _Cursor,
    parse_term: Callable[[_Cursor], N],
    make_and: Callable[[tuple[N, ...]], N],
    make_or: Callable[[tuple[N, ...]], N],
    or_chars: str,
) -> N:
    """Shared AND/OR/parentheses layer: ``;`` binds tighter than the OR separators.

    A parenthesised group is returned as its own node (not merged into the parent), so
    ``(a;b);c`` stays ``And(And(a, b), c)`` and rendering round-trips exactly.
    """

    def or_expr(depth: int) -> N:
        terms = [and_expr(depth)]
        while cur.peek() != "" and cur.peek() in or_chars:
            cur.pos += 1
            terms.append(and_expr(depth))
        return terms[0] if len(terms) == 1 else make_or(tuple(terms))

    def and_expr(depth: int) -> N:
        terms = [primary(depth)]
        while cur.peek() == ";":
            cur.pos += 1
            terms.append(primary(depth))
        return terms[0] if len(terms) == 1 else make_and(tuple(terms))

    def primary(depth: int) -> N:
        if cur.peek() == "(":
            if depth >= MAX_NESTING:
                raise cur.error(f"parentheses nested deeper than {MAX_NESTING}")
            opened = cur.pos
            cur.pos += 1
            inner = or_expr(depth + 1)
            if cur.peek() != ")":
                raise cur.error(f"missing ')' for '(' at position {opened}")
            cur.pos += 1
            return inner
        if cur.at_end() or cur.peek() in or_chars or cur.peek() in ";)":
            raise cur.error("expected a term")
        return parse_term(cur)

    if cur.at_end():
        raise cur.error("empty expression")
    result = or_expr(0)
    if not cur.at_end():
        if cur.peek() == ")":
            raise cur.error("unbalanced ')'")
        raise cur.error("unexpected character")
    return result


def _end_of_term(cur: _Cursor) -> bool:
    return cur.at_end() or cur.peek() in ";|)"


def _parse_path(cur: _Cursor) -> AttrPath:
    start = cur.pos
    first = cur.match(_NAME_RE)
    if first is None:
        raise cur.error("expected an attribute name")
    names = [first]
    meta: str | None = None
    while cur.peek() == ".":
        cur.pos += 1
        name = cur.match(_NAME_RE)
        if name is None:
            raise cur.error("expected a sub-attribute or meta-property name after '.'")
        if name in META_PROPERTIES:
            meta = name
            break
        names.append(name)
    keys: list[str] = []
    while cur.peek() == "[":
        if meta is not None:
            raise cur.error("a meta-property cannot be followed by '['")
        cur.pos += 1
        while True:
            key = cur.match(_KEY_RE)
            if key is None:
                raise cur.error("expected a compound key inside '[...]'")
            keys.append(key)
            if cur.peek() != ".":
                break
            cur.pos += 1
        if cur.peek() != "]":
            raise cur.error("expected ']'")
        cur.pos += 1
    if cur.peek() == ".":
        what = "a meta-property" if meta is not None else "a compound key"
        raise cur.error(f"'.' cannot follow {what} in attribute path starting at {start}")
    return AttrPath(tuple(names), meta, tuple(keys))


def _parse_quoted(cur: _Cursor) -> str:
    start = cur.pos
    i = start + 1
    text = cur.text
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            try:
                decoded = json.loads(text[start : i + 1])
            except ValueError as exc:
                raise cur.error(f"invalid string literal ({exc})", start) from None
            cur.pos = i + 1
            assert isinstance(decoded, str)
            return decoded
        i += 1
    raise cur.error("unterminated string", start)


def _parse_value(cur: _Cursor) -> QValue:
    start = cur.pos
    if cur.peek() == '"':
        return QValue(QValueKind.STRING, _parse_quoted(cur))
    token = cur.match(_DATETIME_RE)
    if token is not None:
        moment = _parse_datetime(token)
        if moment is None:
            raise cur.error("invalid date-time", start)
        return QValue(QValueKind.DATETIME, moment)
    token = cur.match(_DATE_RE)
    if token is not None:
        if cur.peek() == "T":
            raise cur.error("a date-time needs a time zone (e.g. 'Z')", start)
        day = _parse_date(token)
        if day is None:
            raise cur.error("invalid date", start)
        return QValue(QValueKind.DATE, day)
    token = cur.match(_TIME_RE)
    if token is not None:
        moment_of_day = _parse_time(token)
        if moment_of_day is None:
            raise cur.error("invalid time", start)
        return QValue(QValueKind.TIME, moment_of_day)
    token = cur.match(_NUMBER_RE)
    if token is not None:
        return QValue(QValueKind.NUMBER, _number(cur, token, start))
    token = cur.match(_URI_RE)
    if token is not None:
        return QValue(QValueKind.URI, token)
    token = cur.match(_NAME_RE)
    if token is not None:
        if token in ("true", "false"):
            return QValue(QValueKind.BOOLEAN, token == "true")
        return QValue(QValueKind.URI, token)
    raise cur.error("expected a value" if _end_of_term(cur) else "invalid value")


def _number(cur: _Cursor, token: str, start: int) -> int | float:
    try:
        if any(c in token for c in ".eE"):
            number = float(token)
            if number in (float("inf"), float("-inf")):
                raise cur.error("number out of range", start)
            return number
        return int(token)
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        raise cur.error("number out of range", start) from None


def _parse_pattern(cur: _Cursor) -> QPattern:
    if cur.peek() == '"':
        start = cur.pos
        return _compile_pattern(cur, _parse_quoted(cur), start)
    start = i = cur.pos
    text = cur.text
    depth = 0
    in_class = False
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                break
            depth -= 1
        elif c in ";|" and depth == 0:
            break
        i += 1
    i = min(i, len(text))
    if i == start:
        raise cur.error("expected a regular expression")
    cur.pos = i
    return _compile_pattern(cur, text[start:i], start)


def _compile_pattern(cur: _Cursor, source: str, start: int) -> QPattern:
    try:
        return QPattern(source)
    except InvalidRequest as exc:
        raise cur.error(exc.detail, start) from None


def _parse_operand(cur: _Cursor, op: QOperator) -> QOperand:
    if op in (QOperator.MATCH, QOperator.NOT_MATCH):
        return _parse_pattern(cur)
    value_start = cur.pos
    first = _parse_value(cur)
    if op not in (QOperator.EQ, QOperator.NE):
        if first.kind not in _COMPARABLE:
            raise cur.error(f"{first.kind.value} values only go with == and !=", value_start)
        if cur.startswith("..") or cur.peek() == ",":
            raise cur.error("ranges and lists only go with == and !=")
        return first
    if cur.startswith(".."):
        cur.pos += 2
        high_start = cur.pos
        high = _parse_value(cur)
        if first.kind not in _COMPARABLE or high.kind is not first.kind:
            raise cur.error("a range needs two numbers, strings, dates or times", high_start)
        return QRange(first, high)
    if cur.peek() == ",":
        values = [first]
        while cur.peek() == ",":
            cur.pos += 1
            values.append(_parse_value(cur))
        return QValueList(tuple(values))
    return first


def _parse_q_term(cur: _Cursor) -> QExpression:
    if cur.peek() == "!":
        cur.pos += 1
        path = _parse_path(cur)
        if not _end_of_term(cur):
            raise cur.error("'!' only negates an attribute existence test")
        return QNotExists(path)
    path = _parse_path(cur)
    if _end_of_term(cur):
        return QExists(path)
    for symbol in _QUERY_OPERATORS:
        if cur.startswith(symbol):
            cur.pos += len(symbol)
            op = QOperator(symbol)
            break
    else:
        raise cur.error("expected an operator (==, !=, >, >=, <, <=, ~=, !~=)")
    if _end_of_term(cur):
        raise cur.error(f"missing value after '{op.value}'")
    operand = _parse_operand(cur, op)
    if not _end_of_term(cur):
        raise cur.error("unexpected character after the value")
    return QComparison(path, op, operand)


def parse_q(text: str) -> QExpression:
    """Parse a ``q`` query; raise ``InvalidRequest`` naming the problem and position.

    Invalid regular expressions are rejected here too, so evaluation never raises.
    """
    return _parse_boolean(_Cursor("q", text), _parse_q_term, QAnd, QOr, "|")


# --------------------------------------------------------------------------- scopeQ


class ScopeExpression(ABC):
    """A parsed ``scopeQ`` (clause 4.19)."""

    __slots__ = ()

    @abstractmethod
    def matches(self, scopes: Sequence[str]) -> bool:
        """True when the entity's scopes satisfy the query (no scopes: never)."""

    @abstractmethod
    def render(self) -> str:
        """Query text that parses back to an equal expression."""

    def __str__(self) -> str:
        return self.render()


_SCOPE_TERM_RE = re.compile(r"/#|(?:/(?:\w+|\+))+(?:/#)?")


@dataclass(frozen=True, slots=True)
class ScopePattern(ScopeExpression):
    """``/a/+/c`` (``+`` = any one level) optionally ending ``/#`` (this level and below);
    ``/#`` alone matches every scope. Compiled to one anchored regex."""

    levels: tuple[str, ...]
    descendants: bool
    _regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        body = "".join("/[^/]+" if lv == "+" else "/" + re.escape(lv) for lv in self.levels)
        object.__setattr__(
            self, "_regex", re.compile(body + ("(?:/.*)?" if self.descendants else ""))
        )

    def matches(self, scopes: Sequence[str]) -> bool:
        """True when any one of the scopes fits the pattern."""
        regex = self._regex
        return any(regex.fullmatch(s) for s in scopes)

    def render(self) -> str:
        """See :meth:`ScopeExpression.render`."""
        text = "".join("/" + lv for lv in self.levels)
        return text + "/#" if self.descendants else text


@dataclass(frozen=True, slots=True)
class ScopeAnd(ScopeExpression):
    """Every term is matched (possibly each by a different scope of the entity)."""

    terms: tuple[ScopeExpression, ...]

    def matches(self, scopes: Sequence[str]) -> bool:
        """See :meth:`ScopeExpression.matches`."""
        return bool(scopes) and all(t.matches(scopes) for t in self.terms)

    def render(self) -> str:
        """See :meth:`ScopeExpression.render`."""
        return ";".join(
            f"({t.render()})" if isinstance(t, ScopeAnd | ScopeOr) else t.render()
            for t in self.terms
        )


@dataclass(frozen=True, slots=True)
class ScopeOr(ScopeExpression):
    """Some term is matched (``|`` or ``,``)."""

    terms: tuple[ScopeExpression, ...]

    def matches(self, scopes: Sequence[str]) -> bool:
        """See :meth:`ScopeExpression.matches`."""
        return any(t.matches(scopes) for t in self.terms)

    def render(self) -> str:
        """See :meth:`ScopeExpression.render`."""
        return "|".join(
            f"({t.render()})" if isinstance(t, ScopeOr) else t.render() for t in self.terms
        )


def _parse_scope_term(cur: _Cursor) -> ScopeExpression:
    start = cur.pos
    token = cur.match(_SCOPE_TERM_RE)
    if token is None or not (cur.at_end() or cur.peek() in ";|,)"):
        raise cur.error("expected a scope like /a/b, /a/+/c or /a/#", start)
    descendants = token.endswith("/#")
    body = token[:-2] if descendants else token
    levels = tuple(body.split("/")[1:]) if body else ()
    return ScopePattern(levels, descendants)


def parse_scope_q(text: str) -> ScopeExpression:
    """Parse a ``scopeQ`` (clause 4.19): ``;`` AND, ``|`` or ``,`` OR, parentheses.

    Scope levels are Unicode word characters (letters, digits, ``_``).
    """
    return _parse_boolean(_Cursor("scopeQ", text), _parse_scope_term, ScopeAnd, ScopeOr, "|,")


# ---------------------------------------------------------------------- type selector


class TypeExpression(ABC):
    """A parsed entity type selector (clause 4.17)."""

    __slots__ = ()

    @abstractmethod
    def matches(self, types: Sequence[str]) -> bool:
        """True when the entity's (expanded) types satisfy the selector."""

    @abstractmethod
    def expand(self, expand_term: ExpandTerm) -> TypeExpression:
        """A copy with every type name replaced by ``expand_term(name)``."""

    @abstractmethod
    def type_names(self) -> set[str]:
        """Every type name the selector mentions."""

    @abstractmethod
    def is_simple_union(self) -> bool:
        """True for a plain OR of names (one name included): storage can use its type index."""

    @abstractmethod
    def render(self) -> str:
        """Selector text that parses back to an equal expression."""

    def __str__(self) -> str:
        return self.render()


@dataclass(frozen=True, slots=True)
class TypeName(TypeExpression):
    """One entity type (a term, compact IRI or IRI)."""

    name: str

    def matches(self, types: Sequence[str]) -> bool:
        """See :meth:`TypeExpression.matches`."""
        return self.name in types

    def expand(self, expand_term: ExpandTerm) -> TypeName:
        """See :meth:`TypeExpression.expand`."""
        return TypeName(expand_term(self.name))

    def type_names(self) -> set[str]:
        """See :meth:`TypeExpression.type_names`."""
        return {self.name}

    def is_simple_union(self) -> bool:
        """See :meth:`TypeExpression.is_simple_union`."""
        return True

    def render(self) -> str:
        """See :meth:`TypeExpression.render`."""
        return self.name


@dataclass(frozen=True, slots=True)
class TypeAnd(TypeExpression):
    """The entity has every one of these types (``;``)."""

    terms: tuple[TypeExpression, ...]

    def matches(self, types: Sequence[str]) -> bool:
        """See :meth:`TypeExpression.matches`."""
        return all(t.matches(types) for t in self.terms)

    def expand(self, expand_term: ExpandTerm) -> TypeAnd:
        """See :meth:`TypeExpression.expand`."""
        return TypeAnd(tuple(t.expand(expand_term) for t in self.terms))

    def type_names(self) -> set[str]:
        """See :meth:`TypeExpression.type_names`."""
        return set().union(*(t.type_names() for t in self.terms))

    def is_simple_union(self) -> bool:
        """See :meth:`TypeExpression.is_simple_union`."""
        return False

    def render(self) -> str:
        """See :meth:`TypeExpression.render`."""
        return ";".join(
            f"({t.render()})" if isinstance(t, TypeAnd | TypeOr) else t.render() for t in self.terms
        )


@dataclass(frozen=True, slots=True)
class TypeOr(TypeExpression):
    """The entity has at least one of these types (``,`` or ``|``)."""

    terms: tuple[TypeExpression, ...]

    def matches(self, types: Sequence[str]) -> bool:
        """See :meth:`TypeExpression.matches`."""
        return any(t.matches(types) for t in self.terms)

    def expand(self, expand_term: ExpandTerm) -> TypeOr:
        """See :meth:`TypeExpression.expand`."""
        return TypeOr(tuple(t.expand(expand_term) for t in self.terms))

    def type_names(self) -> set[str]:
        """See :meth:`TypeExpression.type_names`."""
        return set().union(*(t.type_names() for t in self.terms))

    def is_simple_union(self) -> bool:
        """See :meth:`TypeExpression.is_simple_union`."""
        return all(t.is_simple_union() for t in self.terms)

    def render(self) -> str:
        """See :meth:`TypeExpression.render`."""
        return ",".join(
            f"({t.render()})" if isinstance(t, TypeOr) else t.render() for t in self.terms
        )


_TYPE_NAME_RE = re.compile(r"[^\s,;|()\"]+")


def _parse_type_term(cur: _Cursor) -> TypeExpression:
    name = cur.match(_TYPE_NAME_RE)
    if name is None:
        raise cur.error("expected a type name")
    return TypeName(name)


def parse_type_selector(text: str) -> TypeExpression:
    """Parse a ``type`` parameter (clause 4.17): ``,``/``|`` OR, ``;`` AND, parentheses.

    A name is any run of characters other than whitespace, quotes and ``,;|()``, so
    terms, compact IRIs and full IRIs are all accepted (expansion happens later).
    """
    return _parse_boolean(_Cursor("type selector", text), _parse_type_term, TypeAnd, TypeOr, ",|")
