"""The file sink's text: JSON (the agent's form) and YAML, which must spell every object out (documents share node dicts)."""

from __future__ import annotations

import yaml

from sidecar_agent.sink.file import render


def test_shared_objects_are_written_in_full_not_as_yaml_aliases() -> None:
    nodes = [{"host": "10.0.0.1", "port": 9080, "weight": 1}]
    document = {"upstreams": [{"id": "a", "nodes": nodes, "type": "roundrobin"},
                              {"id": "b", "nodes": nodes, "type": "least_conn"}]}
    text = render(document, "yaml")
    assert "&id" not in text and "*id" not in text
    assert text.endswith("#END\n")
    assert yaml.safe_load(text)["upstreams"][1]["nodes"] == nodes


def test_json_is_the_agents_file_form_and_parses_back() -> None:
    """The agent writes conf/apisix.json (config_provider json): compact, sorted, the same document."""
    import json

    nodes = [{"host": "10.0.0.1", "port": 9080, "weight": 1}]
    document = {"upstreams": [{"id": "a", "nodes": nodes}, {"id": "b", "nodes": nodes}], "routes": []}
    text = render(document)
    assert json.loads(text) == document and "#END" not in text and text.endswith("\n")
    assert text == render(dict(reversed(list(document.items()))))  # deterministic
