"""Placement preferences with any descriptor, as Docker accepts them: the spec takes any text
(docker-py's integration tests use `com.dockerpy.test`), the scheduler spreads over the
`node.labels.` / `engine.labels.` ones (prefix in any case) and skips the others, as swarmkit."""

from __future__ import annotations

from collections import Counter

import pytest

from manager.specs import SpecError, validate_service_spec
from tests.unit.test_scheduler import node, placed, setup, task
from tests.unit.test_validate import spec_with


def spread(desc: object) -> dict[str, object]:
    return spec_with("TaskTemplate.Placement", {"Preferences": [{"Spread": {"SpreadDescriptor": desc}}]})


def test_any_descriptor_text_is_accepted_a_non_string_is_not() -> None:
    for desc in ("com.dockerpy.test", "node.labels.zone", "Engine.Labels.disk", ""):
        validate_service_spec(spread(desc))
    with pytest.raises(SpecError, match="SpreadDescriptor: expected a string"):
        validate_service_spec(spread(5))


async def test_unknown_descriptors_are_skipped_known_ones_spread() -> None:
    nodes = [node("a1", labels={"zone": "a"})] + [node(f"b{i}", labels={"zone": "b"}) for i in range(3)]
    tasks = [task("web", i, prefs=["com.dockerpy.test", "NODE.LABELS.zone", "node.id"]) for i in range(1, 5)]
    store, sched = await setup(nodes, tasks)
    assert await sched.tick() == 4
    zone = {n.id: n.spec["Labels"]["zone"] for n in nodes}
    assert Counter(zone[t.node_id] for t in placed(store).values()) == {"a": 2, "b": 2}
