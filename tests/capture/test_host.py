"""Host facts from the files Linux exposes (written here, not the machine's)."""

from __future__ import annotations

from init.host import has_global_ipv6, resolv_conf_servers


def test_ipv6_needs_a_global_address_off_lo(tmp_path) -> None:
    path = tmp_path / "if_inet6"
    path.write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "00000000000000000000000000000006 01 80 00 80       lo\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
    )
    assert not has_global_ipv6(str(path))
    path.write_text(path.read_text() + "fd000000000000000000000000000002 02 40 00 80     eth0\n")
    assert has_global_ipv6(str(path))
    assert not has_global_ipv6(str(tmp_path / "missing"))


def test_resolv_conf_servers_split_by_family(tmp_path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("search default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a%eth0\n"
                    "nameserver not-an-ip\noptions ndots:5\n")
    assert resolv_conf_servers(str(path)) == (("10.96.0.10",), ("fd00::a",))
    assert resolv_conf_servers(str(tmp_path / "none")) == ((), ())
