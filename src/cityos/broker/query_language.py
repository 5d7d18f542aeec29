"""The NGSI-LD query language (``q``), scope query (``scopeQ``) and type selection (``type``).

INTERFACE (implemented by the query-language work package):

- ``parse_q(text: str) -> QExpression`` raises ``InvalidRequest`` on bad syntax.
- ``QExpression.expand(expand_term) -> QExpression`` with attribute names expanded
  to IRIs by ``expand_term: Callable[[str], str]``.
- ``QExpression.matches(entity: StoredEntity) -> bool`` evaluates on the stored form
  (see ``cityos.broker.model``).
- ``parse_scope_q(text) -> ScopeExpression`` with ``.matches(scopes: list[str]) -> bool``.
- ``parse_type_selector(text) -> TypeExpression`` (``A,B`` or ``A|B`` = either,
  ``A;B`` = both, parentheses) with ``.expand(expand_term)``,
  ``.matches(types: list[str]) -> bool`` and ``.type_names() -> set[str]``.
"""
