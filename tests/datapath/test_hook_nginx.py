"""amesh/hook.lua (the APISIX glue) in a real nginx, with apisix/apisix.core replaced by a stand-in
exposing the two APIs it uses: the variables it registers, the internal-listener port map, fail-closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from netns_tests.pods import POD_V4
from tests.datapath import testnginx
from tests.datapath.test_origdst_nginx import keepalive

STUB = Path(__file__).resolve().parent / "apisix_stub"
ANSWER = r"""
    content_by_lua_block {
        local vars = require("apisix.core").vars
        local function show(v) if v == nil then return "null" end return '"' .. tostring(v) .. '"' end
        ngx.say(string.format('{"addr":%s,"port":%s,"direction":%s,"registered":%s,"connection":%s,"lookups":%d}',
            show(vars.original_dst_addr()), show(vars.original_dst_port()), show(vars.amesh_direction()),
            show(table.concat((function() local t = {} for k in pairs(vars) do t[#t + 1] = k end
                                table.sort(t) return t end)(), ",")),
            ngx.var.connection, require("amesh.origdst").lookups))
    }
"""


@pytest.fixture(scope="module")
def hooked(captured_pod):
    reason = testnginx.unavailable()
    if reason:
        pytest.skip(reason)
    server = testnginx.Nginx(captured_pod.pod, ["15006", "127.0.0.1:15100", "127.0.0.1:15600"],
                             ready_port=15006, lua_path=(str(STUB),), init='require("amesh.hook")', answer=ANSWER)
    yield captured_pod, server
    server.stop()


def test_http_subsystem_registers_the_original_destination_and_direction(hooked):
    network, _ = hooked
    answer = keepalive(network.other, POD_V4, 8080, count=2)[0]
    assert answer["registered"] == "amesh_direction,original_dst_addr,original_dst_port"
    assert (answer["addr"], answer["port"], answer["direction"]) == (POD_V4, "8080", "inbound")


@pytest.mark.parametrize("internal,port,direction", [(15100, "9080", "outbound"), (15600, "8080", "inbound")])
def test_internal_listener_stands_for_its_original_port(hooked, internal, port, direction):
    network, _ = hooked
    answers = keepalive(network.pod, "127.0.0.1", internal, count=2, uid=1337)
    assert [(a["addr"], a["port"], a["direction"]) for a in answers] == [(None, port, direction)] * 2


def test_unmapped_connection_that_was_not_redirected_matches_nothing(hooked):
    network, _ = hooked
    answer = keepalive(network.pod, "127.0.0.1", 15006, count=1, uid=1000)[0]
    assert (answer["addr"], answer["port"]) == (None, None)
