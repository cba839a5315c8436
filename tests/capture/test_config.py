"""Bad input: every problem named, nothing planned or applied."""

from __future__ import annotations

import ipaddress

import pytest

from init.config import Backend, ConfigError, Mode, build_config


def problems(**raw) -> list[str]:
    with pytest.raises(ConfigError) as err:
        build_config(raw, default_proxy_uid="1337")
    return err.value.problems


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"envoy_port": "abc"}, "--envoy-port: invalid port 'abc'"),
        ({"envoy_port": "70000"}, "--envoy-port: invalid port '70000'"),
        ({"inbound_capture_port": "0"}, "--inbound-capture-port: invalid port '0'"),
        ({"istio_inbound_ports": "80,http"}, "--istio-inbound-ports: invalid port 'http'"),
        ({"istio_local_exclude_ports": "-1"}, "--istio-local-exclude-ports: invalid port '-1'"),
        ({"istio_outbound_ports": "8000:9000"}, "--istio-outbound-ports: invalid port '8000:9000'"),
        ({"istio_service_cidr": "10.0.0.0/33"}, "--istio-service-cidr: invalid CIDR '10.0.0.0/33'"),
        ({"istio_service_exclude_cidr": "*"}, "--istio-service-exclude-cidr: '*' is not allowed"),
        ({"istio_service_exclude_cidr": "10.0.0.0/8,*"}, "--istio-service-exclude-cidr: '*' is not allowed"),
        ({"istio_service_exclude_cidr": "bogus"}, "--istio-service-exclude-cidr: invalid CIDR 'bogus'"),
        ({"istio_inbound_interception_mode": "NONE"}, "invalid mode 'NONE'"),
        ({"istio_inbound_tproxy_mark": "x"}, "--istio-inbound-tproxy-mark: invalid value 'x'"),
        ({"istio_inbound_tproxy_route_table": "0"}, "--istio-inbound-tproxy-route-table: invalid value '0'"),
        ({"istio_exclude_interfaces": "eth0,bad/name"}, "invalid interface name 'bad/name'"),
        ({"kube_virt_interfaces": "waytoolonginterfacename"}, "invalid interface name"),
        ({"proxy_uid": "13 37"}, "--proxy-uid: invalid user '13 37'"),
        ({"proxy_gid": "1337,a b"}, "--proxy-gid: invalid group 'a b'"),
        ({"cni_mode": True}, "--cni-mode: needs --network-namespace"),
        ({"probe_timeout": "5 seconds"}, "--probe-timeout: invalid duration '5 seconds'"),
        ({"iptables_backend": "iptables"}, "--iptables-backend: invalid backend 'iptables'"),
    ],
)
def test_bad_value_is_named(raw: dict, expected: str) -> None:
    found = problems(**raw)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    found = problems(envoy_port="x", istio_service_cidr="nope", istio_inbound_interception_mode="FOO")
    assert len(found) == 3


def test_defaults_and_parsing() -> None:
    config = build_config(
        {
            "istio_inbound_ports": "*",
            "istio_service_cidr": "10.1.2.3/8, fd00::/8,",
            "istio_service_exclude_cidr": "192.168.0.1",
            "istio_local_exclude_ports": "15090,,15021",
            "istio_inbound_interception_mode": "tproxy",
            "istio_inbound_tproxy_mark": "0x539",
            "probe_timeout": "1m30s",
            "proxy_gid": "",
        },
        default_proxy_uid="999",
    )
    assert config.inbound_all and not config.outbound_all
    assert config.outbound_cidrs == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert config.outbound_exclude_cidrs == (ipaddress.ip_network("192.168.0.1/32"),)
    assert config.inbound_exclude_ports == (15090, 15021)
    assert config.mode is Mode.TPROXY and config.tproxy_mark == 1337
    assert config.probe_timeout == 90.0
    assert config.proxy_uids == ("999",) and config.proxy_gids == ("999",)  # gid defaults to the uid list
    assert config.backend is Backend.AUTO and config.restore_format


KNOWN = {("user", "istio-proxy"), ("group", "istio-proxy"), ("group", "proxies")}


def known(kind: str, name: str) -> bool:
    return (kind, name) in KNOWN


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"proxy_uid": "bob"}, ["--proxy-uid: unknown user 'bob' (not a number, and no such user on this host)"]),
        ({"proxy_uid": "1337", "proxy_gid": "1337,staff"},
         ["--proxy-gid: unknown group 'staff' (not a number, and no such group on this host)"]),
        ({"proxy_uid": "bob,eve"}, ["--proxy-uid: unknown user 'bob' (not a number, and no such user on this host)",
                                    "--proxy-uid: unknown user 'eve' (not a number, and no such user on this host)"]),
    ],
)
def test_owner_names_must_resolve(raw: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(raw, "1337", owner_known=known)
    assert err.value.problems == expected


def test_owner_names_that_resolve_and_numbers_pass() -> None:
    config = build_config({"proxy_uid": "istio-proxy,1337", "proxy_gid": "proxies"}, "1337", owner_known=known)
    assert config.proxy_uids == ("istio-proxy", "1337") and config.proxy_gids == ("proxies",)
    # no -g: the user names are the group names too, and must resolve as groups
    assert build_config({"proxy_uid": "istio-proxy"}, "1337", owner_known=known).proxy_gids == ("istio-proxy",)


def test_cni_mode_with_a_namespace() -> None:
    config = build_config({"cni_mode": True, "network_namespace": "/var/run/netns/pod"}, "1337")
    assert config.cni_mode and config.network_namespace == "/var/run/netns/pod"
