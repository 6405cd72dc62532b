"""The msgspec fast paths (release_coordinator.schemas) hand every body they cannot take to the
full path, which decides as it did before the Structs: never a different answer."""

from __future__ import annotations

import json

import pytest

from release_coordinator.coordinator.wire import decode_request
from release_coordinator.errors import ValidationError
from release_coordinator.rollout.bodies import PollRequest
from release_coordinator.schemas import BodyDecoder


def nested(depth: int) -> bytes:
    """A /poll body with a value nested ``depth`` lists deep in its area."""
    return (
        b'{"id": "c1", "number_of_children": 0, "geographic_area": {"type": "Polygon", '
        b'"coordinates": ' + b"[" * depth + b"]" * depth + b"}}"
    )


@pytest.mark.parametrize("depth", [10, 2_000, 100_000])
def test_a_deeply_nested_body_goes_to_the_full_path_instead_of_raising(depth: int) -> None:
    decoder = BodyDecoder(PollRequest)
    decoded = decoder.decode(nested(depth))
    if depth == 10:
        assert decoded is not None
    else:  # too deep for msgspec: the caller's full path (json, as before) decides
        assert decoded is None


def test_the_fast_path_agrees_with_json_on_what_it_takes() -> None:
    body = nested(3)
    decoded = BodyDecoder(PollRequest).decode(body)
    assert decoded is not None
    assert decoded.geographic_area == json.loads(body)["geographic_area"]


@pytest.mark.parametrize("studies", [("a", "b"), {"a"}, frozenset({"a"})])
def test_studies_must_be_a_json_list(studies: object) -> None:
    body = {"action": "start", "task_id": "t1", "release_id": "r1", "studies": studies}
    with pytest.raises(ValidationError) as caught:
        decode_request(body)
    assert caught.value.problems == [("studies", "must be a list of strings")]


def test_a_left_out_field_documents_what_it_means_not_null() -> None:
    from release_coordinator.server.openapi import combined_openapi

    schemas = combined_openapi()["components"]["schemas"]
    assert schemas["PollRequest"]["properties"]["number_of_children"]["default"] == 0
    assert schemas["TaskServiceCreate"]["properties"]["enabled"]["default"] is True
    assert schemas["TaskServiceCreate"]["properties"]["check"]["default"] is True
    assert schemas["ReleaseCreate"]["properties"]["is_major"]["default"] is False
    assert schemas["ReleaseCreate"]["properties"]["auto_publish"]["default"] is False
