"""amesh/passthrough.lua (the plugin's pure decision) in APISIX's own OpenResty (`resty`, from the
real APISIX install): the node built from the original destination, v4/v6, and every refusal.
The plugin around it runs on a real APISIX in test_real_apisix.py."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests import realapisix
from sidecar_agent.apisix.datapath import LUA_DIR

CASES = [
    ("10.20.2.2", "80", {"host": "10.20.2.2", "port": 80, "weight": 1, "priority": 0}),
    ("fd00:20:2::2", "8080", {"host": "[fd00:20:2::2]", "port": 8080, "weight": 1, "priority": 0}),
    ("[fd00:20:2::2]", "8080", {"host": "[fd00:20:2::2]", "port": 8080, "weight": 1, "priority": 0}),
    ("127.0.0.1", "80", {"refused": "original destination 127.0.0.1 is loopback"}),
    ("127.9.9.9", "80", {"refused": "original destination 127.9.9.9 is loopback"}),
    ("::1", "80", {"refused": "original destination ::1 is loopback"}),
    ("::ffff:127.0.0.1", "80", {"refused": "original destination ::ffff:127.0.0.1 is loopback"}),
    ("0.0.0.0", "80", {"refused": "original destination 0.0.0.0 is unspecified"}),
    ("::", "80", {"refused": "original destination :: is unspecified"}),
    ("10.20.2.2", "15001", {"refused": "original port 15001 is a capture port (would loop into the proxy)"}),
    ("fd00:20:2::2", "15006", {"refused": "original port 15006 is a capture port (would loop into the proxy)"}),
    ("10.20.2.2", "0", {"refused": "original port 0 is not a port number"}),
    ("10.20.2.2", "65536", {"refused": "original port 65536 is not a port number"}),
    ("10.20.2.2", "8.5", {"refused": "original port 8.5 is not a port number"}),
    ("origin.test", "80", {"refused": "original address origin.test is not an IP address"}),
    ("", "80", {"refused": "no original destination"}),
]

SCRIPT = r"""
local cjson = require("cjson")
local passthrough = require("amesh.passthrough")
for line in io.lines(arg[1]) do
    local case = cjson.decode(line)
    local addr = case[1] ~= "" and case[1] or nil
    local node, err = passthrough.node(addr, case[2], { [15001] = true, [15006] = true })
    print(cjson.encode(node or { refused = err }))
end
"""


@pytest.fixture(scope="module")
def decisions(tmp_path_factory) -> list[dict]:
    if shutil.which("resty") is None:
        pytest.skip(realapisix.unavailable() or "resty (OpenResty's CLI) not on PATH")
    tmp = tmp_path_factory.mktemp("passthrough")
    (tmp / "cases.jsonl").write_text("".join(json.dumps([a, p]) + "\n" for a, p, _ in CASES))
    (tmp / "run.lua").write_text(SCRIPT)
    out = subprocess.run(["resty", "-I", str(LUA_DIR), str(tmp / "run.lua"), str(tmp / "cases.jsonl")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{a or '-'}:{p}" for a, p, _ in CASES])
def test_pure_part_builds_the_node_or_names_the_refusal(decisions, index):
    assert decisions[index] == CASES[index][2]
