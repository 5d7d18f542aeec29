"""keyValues rendering of multi-instance attributes keeps every instance by datasetId."""

from __future__ import annotations

from cityos.broker.representation import RenderOptions, render_entity

NAME = "https://example.org/name"


def test_several_instances_render_as_a_dataset_map() -> None:
    entity = {
        "id": "urn:ngsi-ld:Building:1",
        "type": ["https://example.org/Building"],
        "attrs": {
            NAME: [
                {"type": "Property", "value": "Eiffel Tower"},
                {"type": "Property", "value": "Eiffelturm", "datasetId": "urn:ngsi-ld:Dataset:de"},
            ]
        },
    }
    rendered = render_entity(
        entity, lambda iri: iri.rsplit("/", 1)[-1], RenderOptions(format="keyValues")
    )
    assert rendered["name"] == {
        "dataset": {"@none": "Eiffel Tower", "urn:ngsi-ld:Dataset:de": "Eiffelturm"}
    }


def test_one_instance_renders_as_its_bare_value() -> None:
    entity = {
        "id": "urn:ngsi-ld:Building:1",
        "type": ["https://example.org/Building"],
        "attrs": {
            NAME: [
                {"type": "Property", "value": "Eiffel Tower", "datasetId": "urn:ngsi-ld:Dataset:en"}
            ]
        },
    }
    rendered = render_entity(
        entity, lambda iri: iri.rsplit("/", 1)[-1], RenderOptions(format="keyValues")
    )
    assert rendered["name"] == "Eiffel Tower"
