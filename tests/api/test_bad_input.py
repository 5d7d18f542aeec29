"""Bad input always gets a 4xx ProblemDetails naming the problem, never a 500."""

from __future__ import annotations

import httpx
import pytest

JSON = {"Content-Type": "application/json"}
LD = {"Content-Type": "application/ld+json"}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "error"),
    [
        ("POST", "/entities", b"{not json", JSON, 400, "InvalidRequest"),
        ("POST", "/entities", b"", JSON, 400, "InvalidRequest"),
        (
            "POST",
            "/entities",
            b'{"id":"urn:x:1","type":"T"}',
            {"Content-Type": "text/plain"},
            415,
            None,
        ),
        ("POST", "/entities", b'{"id":"not a uri","type":"T"}', JSON, 400, "BadRequestData"),
        ("POST", "/entities", b'{"id":"urn:x:1"}', JSON, 400, "BadRequestData"),
        ("POST", "/entities", b"[1,2]", JSON, 400, "InvalidRequest"),
        (
            "POST",
            "/entities",
            b'{"id":"urn:x:1","type":"T","a":{"type":"Property"}}',
            JSON,
            400,
            "BadRequestData",
        ),
        (
            "POST",
            "/entities",
            b'{"id":"urn:x:1","type":"T","a":{"type":"Relationship","object":"no uri"}}',
            JSON,
            400,
            "BadRequestData",
        ),
        (
            "POST",
            "/entities",
            b'{"id":"urn:x:1","type":"T","location":{"type":"GeoProperty",'
            b'"value":{"type":"Point","coordinates":[500,1]}}}',
            JSON,
            400,
            "BadRequestData",
        ),
        (
            "POST",
            "/entities",
            b'{"id":"urn:x:1","type":"T","a":{"type":"Property","value":1,'
            b'"observedAt":"yesterday"}}',
            JSON,
            400,
            "BadRequestData",
        ),
        ("POST", "/entities", b'{"id":"urn:x:1","type":"T"}', LD, 400, "BadRequestData"),
        ("GET", "/entities?type=T&q=temperature%3E%3E1", None, {}, 400, None),
        ("GET", "/entities?type=T&q=(a==1", None, {}, 400, None),
        (
            "GET",
            "/entities?type=T&georel=near&geometry=Point&coordinates=[1,2]",
            None,
            {},
            400,
            None,
        ),
        ("GET", "/entities?type=T&georel=within&geometry=Point", None, {}, 400, None),
        (
            "GET",
            "/entities?type=T&georel=within&geometry=Polygon&coordinates=[[1,2]]",
            None,
            {},
            400,
            None,
        ),
        ("GET", "/entities?type=T&limit=-1", None, {}, 400, None),
        ("GET", "/entities?type=T&limit=abc", None, {}, 400, None),
        ("GET", "/entities?type=T&idPattern=(unclosed", None, {}, 400, None),
        ("GET", "/entities?type=T&options=bogus", None, {}, 400, None),
        ("GET", "/entities", None, {}, 400, "BadRequestData"),
        ("GET", "/entities/not%20a%20uri", None, {}, 400, "BadRequestData"),
        ("GET", "/entities?type=T", None, {"Accept": "application/xml"}, 406, None),
        (
            "GET",
            "/entities?type=T",
            None,
            {
                "Link": '<http://127.0.0.1:9/missing.jsonld>; rel="http://www.w3.org/ns/json-ld#'
                'context"; type="application/ld+json"'
            },
            503,
            "LdContextNotAvailable",
        ),
        ("POST", "/entityOperations/create", b'{"id":"urn:x:1"}', JSON, 400, "BadRequestData"),
    ],
)
def test_bad_request_gets_problem_details(
    client: httpx.Client,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    error: str | None,
) -> None:
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["status"] == status
    assert problem["detail"]
    if error is not None:
        assert problem["type"] == f"https://uri.etsi.org/ngsi-ld/errors/{error}"
