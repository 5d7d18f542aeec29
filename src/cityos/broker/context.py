"""JSON-LD @context handling without a generic JSON-LD processor on the request path.

INTERFACE (implemented by the context work package):

- ``CompiledContext``: the effective term maps of one @context (the NGSI-LD core
  context always applies last, so core terms cannot be redefined).
    * ``expand(term) -> str``: attribute name or entity type to IRI. Rules: a term
      defined in the context maps to its IRI; ``prefix:suffix`` with a defined prefix
      expands; an absolute IRI (has a scheme, e.g. ``urn:`` / ``http:``) stays;
      anything else is ``@vocab`` + term (core: ``https://uri.etsi.org/ngsi-ld/default-context/``).
    * ``compact(iri) -> str``: the inverse, for output: exact term match first,
      then ``@vocab``-relative, then a compact IRI ``prefix:suffix``, else the IRI.
    * ``context_value``: the JSON value to put as ``@context`` in responses
      (the URL(s)/object(s) the client gave, plus the core context URL).
    * ``link_url``: the URL to put in a ``Link`` header (a single URL; for inline
      contexts the URL of an implicitly created hosted copy).
  Both maps are dicts built once per distinct context and cached.
- ``ContextResolver``: ``await resolve(context_value) -> CompiledContext`` where the
  value is ``None`` (core only), a URL string, an object, or a list of those.
  Remote URLs are fetched once (httpx, timeout from settings) and cached; a
  pre-seeded map URL -> local file is consulted first, so the broker works offline.
  The core context is bundled in the package and never fetched. Failure to get or
  parse a remote context raises ``LdContextNotAvailable``; a context that is not
  a valid JSON-LD context raises ``InvalidRequest``.
"""
