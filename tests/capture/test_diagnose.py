"""Failure messages name the missing kernel module or binary (texts as iptables prints them)."""

from __future__ import annotations

from init.diagnose import explain_restore_failure


def test_legacy_missing_nat_table() -> None:
    text = "iptables-restore v1.8.4 (legacy): iptables-restore: unable to initialize table 'nat'\n\nError occurred at line: 1"
    message = explain_restore_failure(text, "legacy", 4)
    assert "iptable_nat" in message and "'nat' table" in message


def test_legacy_ipv6_table_names_ip6table_module() -> None:
    text = "ip6tables-restore v1.8.7 (legacy): ip6tables-restore: unable to initialize table 'nat'"
    assert "ip6table_nat" in explain_restore_failure(text, "legacy", 6)


def test_nft_table_add_failure() -> None:
    text = "iptables-restore v1.8.4 (nf_tables): TABLE_ADD failed (Operation not supported): table nat"
    message = explain_restore_failure(text, "nft", 4)
    assert "nft_chain_nat" in message


def test_missing_extension() -> None:
    text = "iptables-restore v1.8.9 (legacy): Couldn't load target `TPROXY':No such file or directory"
    assert "xt_TPROXY" in explain_restore_failure(text, "legacy", 4)
    text = "iptables-restore: Couldn't load match `owner':No such file or directory"
    assert "xt_owner" in explain_restore_failure(text, "legacy", 4)


def test_no_nf_tables() -> None:
    text = "iptables-restore/1.8.9 Failed to initialize nft: Protocol not supported"
    assert "nf_tables" in explain_restore_failure(text, "nft", 4)


def test_permission() -> None:
    text = "iptables-restore v1.8.9 (legacy): iptables-restore: unable to initialize table 'nat' (Permission denied (you must be root))"
    assert "NET_ADMIN" in explain_restore_failure(text, "legacy", 4)
