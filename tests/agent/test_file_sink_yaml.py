"""apisix.yaml must spell every object out: translated documents share node dicts between upstreams."""

from __future__ import annotations

import yaml

from sidecar_agent.sink.file import render


def test_shared_objects_are_written_in_full_not_as_yaml_aliases() -> None:
    nodes = [{"host": "10.0.0.1", "port": 9080, "weight": 1}]
    document = {"upstreams": [{"id": "a", "nodes": nodes, "type": "roundrobin"},
                              {"id": "b", "nodes": nodes, "type": "least_conn"}]}
    text = render(document)
    assert "&id" not in text and "*id" not in text
    assert text.endswith("#END\n")
    assert yaml.safe_load(text)["upstreams"][1]["nodes"] == nodes
