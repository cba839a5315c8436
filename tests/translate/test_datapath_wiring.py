"""The data path wired into the Translator: inbound and outbound stream translation are part of the
document, recomputed per listener, and the incremental document equals a fresh translation with the
same data-path settings (the internal ports pinned as the incremental one pinned them)."""

from __future__ import annotations

import pytest

from sidecar_agent.apisix import datapath
from sidecar_agent.configdump import load_config_dump
from sidecar_agent.translate import TranslationError, Translator, translate
from sidecar_agent.translate.render import to_json
from sidecar_agent.translate.stream import OutboundPolicy

from .conftest import fixture

DUAL = "istio1.24-dualstack-sleep-sidecar.config_dump.json"
DUAL_IPS = ("10.244.0.12", "fd00:10:244::c")


def loaded(pod_ips=DUAL_IPS, **options):
    resources = load_config_dump(fixture(DUAL))
    return resources, Translator(pod_ips=pod_ips, **options).load(resources)


def fresh(resources, translator: Translator, pod_ips=DUAL_IPS) -> str:
    return to_json(translate(resources, pod_ips=pod_ips, data_path=translator.data_path_settings).document)


def test_translate_equals_the_incremental_form_through_listener_changes():
    resources, t = loaded()
    listeners = dict(resources.listeners)
    steps = ["0.0.0.0_80", "10.96.0.1_443", "virtualInbound", "virtualOutbound", "0.0.0.0_8000"]
    for name in steps:  # remove one at a time, then bring them back in reverse order
        t.remove_listener(name)
        del listeners[name]
        state = type(resources)(listeners, resources.route_configs, resources.clusters, resources.endpoints)
        assert to_json(t.document()) == fresh(state, t), f"after removing {name}"
    for name in reversed(steps):
        t.set_listener(resources.listeners[name])
        listeners[name] = resources.listeners[name]
        state = type(resources)(listeners, resources.route_configs, resources.clusters, resources.endpoints)
        assert to_json(t.document()) == fresh(state, t), f"after adding {name} back"
    # back to the same listeners; the internal ports are the pinned history's, not necessarily dense
    assert t.data_path_settings.outbound_http_ports == translate_settings(resources).outbound_http_ports


def translate_settings(resources):
    return Translator(pod_ips=DUAL_IPS).load(resources).data_path_settings


def test_a_port_that_comes_and_goes_never_moves_the_others():
    resources, t = loaded()
    before = datapath.internal_ports(t.data_path_settings)
    assert before[(datapath.Direction.OUTBOUND, 80)] < before[(datapath.Direction.OUTBOUND, 8000)]
    t.remove_listener("0.0.0.0_80")  # the lowest outbound HTTP port
    during = datapath.internal_ports(t.data_path_settings)
    assert (datapath.Direction.OUTBOUND, 80) not in during
    assert all(during[k] == before[k] for k in during), "dense renumbering would misroute until reload"
    assert datapath.needs_reload(datapath.with_ports(t.data_path_settings, (80,), ()), t.data_path_settings)
    t.set_listener(resources.listeners["0.0.0.0_80"])
    assert datapath.internal_ports(t.data_path_settings) == before


def test_a_listener_change_touches_only_its_stream_route():
    resources, t = loaded()
    first = t.document()
    t.set_listener(resources.listeners["10.96.0.1_443"])  # same bytes, recomputed
    second = t.document()
    assert second["stream_routes"] == first["stream_routes"]
    kept = {id(r) for r in first["stream_routes"]} & {id(r) for r in second["stream_routes"]}
    assert len(kept) == len(first["stream_routes"]), "unchanged stream routes are the same objects"
    assert {id(u) for u in first["upstreams"]} == {id(u) for u in second["upstreams"]}
    t.remove_listener("10.96.0.1_443")
    third = t.document()
    assert {r["name"] for r in first["stream_routes"]} - {r["name"] for r in third["stream_routes"]} == {
        "10.96.0.1_443/tcp"}


def test_outbound_policy_option_wins_over_virtual_outbound():
    _, allow = loaded()
    _, deny = loaded(outbound_policy=OutboundPolicy.REGISTRY_ONLY)
    names = lambda t: {r["name"] for r in t.document()["stream_routes"]}  # noqa: E731
    assert names(allow) - names(deny) == {"virtualOutbound/0.0.0.0/0", "virtualOutbound/::/0"}


def test_without_pod_ips_inbound_is_reported_and_ports_have_no_inbound_side():
    _, t = loaded(pod_ips=())
    assert t.data_path_settings.inbound_http_ports == ()
    assert not [r for r in t.document()["routes"] if "inbound" in r["name"]]
    fields = {(e.resource, e.field) for e in t.report().entries}
    assert ("virtualInbound", "listener[inbound: pod IPs unknown (INSTANCE_IPS), not translated]") in fields


def test_inbound_cluster_change_recomputes_the_inbound_side():
    resources, t = loaded()
    cluster = type(resources.clusters["inbound|80||"])()
    cluster.CopyFrom(resources.clusters["inbound|80||"])
    cluster.type = 0  # STATIC, as Istio <= 1.9 sent it
    cluster.load_assignment.cluster_name = "inbound|80||"
    endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.socket_address.address, endpoint.address.socket_address.port_value = "127.0.0.1", 80
    t.set_cluster(cluster)
    app = [u for u in t.document()["upstreams"] if u["name"] == "inbound|80|||tcp" or
           u["name"].startswith("inbound|80|||http")]
    assert app and all(u["nodes"][0]["host"] == "127.0.0.1" for u in app)


@pytest.mark.parametrize("options,message", [
    ({"pod_ips": ("10.0.0.300",)}, "not IP addresses"),
    ({"outbound_policy": "ALLOW_ANY"}, "not an OutboundPolicy"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Translator(**options)


def test_invalid_listener_is_refused_when_set_not_later():
    resources, t = loaded()
    bad = type(resources.listeners["10.96.0.1_443"])()
    bad.CopyFrom(resources.listeners["10.96.0.1_443"])
    bad.address.socket_address.address = "not-an-ip"
    with pytest.raises(TranslationError, match="not an IP address"):
        t.set_listener(bad)


def test_cli_reads_the_pod_ips_from_the_dump_and_emits_the_data_path(schema_dir):
    import json

    from click.testing import CliRunner

    from sidecar_agent.cli import main

    dump = fixture("istio1.9-bookinfo-productpage-sidecar.config_dump.json")
    out = CliRunner().invoke(main, ["translate", str(dump), "--schema-dir", str(schema_dir)])
    assert out.exit_code == 0, out.output
    document = json.loads(out.output)
    assert {r["server_addr"] for r in document["stream_routes"] if "inbound" in r["name"]} == {"10.244.2.66"}
    assert any(r["name"].startswith("inbound|9080") for r in document["routes"])
    other = CliRunner().invoke(main, ["translate", str(dump), "--pod-ip", "10.1.2.3",
                                      "--outbound-policy", "REGISTRY_ONLY"])
    assert other.exit_code == 0, other.output
    routes = json.loads(other.output)["stream_routes"]
    assert {r["server_addr"] for r in routes if "inbound" in r["name"]} == {"10.1.2.3"}
    assert not [r for r in routes if r["name"].startswith("virtualOutbound/")]
    bad = CliRunner().invoke(main, ["translate", str(dump), "--pod-ip", "nope"])
    assert bad.exit_code != 0 and "not IP addresses" in bad.output


def test_instance_ips_from_bootstrap():
    from sidecar_agent.translate.bootstrap import instance_ips

    def dump(ips):
        return {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                             "bootstrap": {"node": {"metadata": {"INSTANCE_IPS": ips}}}}]}

    assert instance_ips(dump("10.0.0.1, fd00::1")) == ("10.0.0.1", "fd00::1")
    assert instance_ips({"configs": []}) == () and instance_ips([]) == ()
    with pytest.raises(ValueError, match="'x' is not an IP address"):
        instance_ips(dump("10.0.0.1,x"))


def test_settings_for_the_composition_root():
    resources = load_config_dump(fixture(DUAL))
    settings = datapath.settings_for(resources.listeners, DUAL_IPS)
    assert settings.ipv6 and settings.inbound_http_ports == (80,)
    assert settings == Translator(pod_ips=DUAL_IPS).load(resources).data_path_settings
    assert datapath.settings_for(resources.listeners).inbound_http_ports == ()  # no pod IPs: no inbound side
    previous = datapath.with_ports(settings, (9999,) + settings.outbound_http_ports, ())  # 9999 went away
    kept = datapath.settings_for(resources.listeners, DUAL_IPS, previous=previous)
    before, after = datapath.internal_ports(previous), datapath.internal_ports(kept)
    assert all(after[k] == before[k] for k in after if k[0] is datapath.Direction.OUTBOUND)
    assert datapath.needs_reload(previous, kept) and not datapath.needs_reload(kept, kept)
