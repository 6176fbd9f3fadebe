"""NftablesDataplane against the real kernel, inside a namespace per test: full and partial
syncs, failure atomicity, cleanup, and adopting a running table after a restart."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from svcproxy.config import NodeConfig
from svcproxy.dataplane import ApplyError, cleanup_other_modes, dataplane
from svcproxy.dataplane.nftables import NftablesDataplane, names
from svcproxy.state import ServicePortName

from .conftest import Netns, fetch
from .helpers import CFG, service, state_of

pytestmark = pytest.mark.kernel


def table(ns: Netns) -> str:
    return ns.nft("list", "table", "ip", "kube-proxy").stdout


def handles(ns: Netns, chain: str) -> str:
    return ns.nft("-a", "list", "chain", "ip", "kube-proxy", chain).stdout


def base(name: str) -> str:
    return names.port_base(ServicePortName("ns1", name, "p", "TCP"))


A = service("a", "172.30.0.1", ["10.0.1.10"])
B = service("b", "172.30.0.2", ["10.0.1.10", "10.0.1.11"], node_port=30002)


def test_full_sync_programs_the_table(inside: Netns) -> None:
    dp = dataplane("nftables", CFG)
    res = dp.sync(state_of(A, B))
    assert res.full and res.rules["chains"] == 3  # kube-proxy 1.36: no endpoint chains without affinity
    text = table(inside)
    assert f"172.30.0.2 . tcp . 80 : goto service-{base('b')}" in text
    assert f"tcp . 30002 : goto external-{base('b')}" in text
    assert "dnat ip to numgen random mod 2 map { 0 : 10.0.1.10 . 8080, 1 : 10.0.1.11 . 8080 }" in text
    assert "chain endpoint-" not in text
    assert "type filter hook forward priority filter; policy accept;" in text


def test_partial_sync_touches_only_the_changed_service(inside: Netns) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A, B))
    before_a, before_b = handles(inside, f"service-{base('a')}"), handles(inside, f"service-{base('b')}")
    b2 = service("b", "172.30.0.2", ["10.0.1.10", "10.0.1.12"], node_port=30002)
    res = dp.sync(state_of(A, b2), {"ns1/b"})
    assert not res.full
    assert len(dp.transactions) == 1  # one transaction
    tx = dp.transactions[0]
    assert "/a/" not in tx and "ns1/b" in tx  # nothing of service a
    assert "add element" not in tx and "delete element" not in tx  # same addresses: no map change
    assert "endpoint-" not in tx  # the service chain's map is the only thing rewritten
    assert handles(inside, f"service-{base('a')}") == before_a  # untouched: same rule handles
    assert handles(inside, f"service-{base('b')}") != before_b
    text = table(inside)
    assert "1 : 10.0.1.12 . 8080" in text and "10.0.1.11" not in text
    # removing a service removes its elements at once and its chains a second later
    dp.sync(state_of(b2), {"ns1/a"})
    text = table(inside)
    assert "172.30.0.1 " not in text
    assert f"chain service-{base('a')} {{\n\t}}" in text  # flushed
    time.sleep(1.1)
    dp.sync(state_of(b2), set())
    text = table(inside)
    assert base("a") not in text and base("b") in text


def test_partial_sync_moves_a_service_between_maps(inside: Netns) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A))
    empty = service("a", "172.30.0.1", [])
    dp.sync(state_of(empty), {"ns1/a"})
    text = table(inside)
    assert '172.30.0.1 . tcp . 80 comment "ns1/a:p" : goto reject-chain' in text
    assert f"goto service-{base('a')}" not in text and f"chain service-{base('a')} {{\n\t}}" in text
    dp.sync(state_of(A), {"ns1/a"})
    assert f"goto service-{base('a')}" in table(inside)
    assert "reject-chain" not in table(inside).split("map no-endpoint-services")[1].split("\n\t}")[0]


def broken(svc_name: str):
    """A service the kernel refuses (an IPv6 ClusterIP in the IPv4 table)."""
    good = service(svc_name, "172.30.0.9", ["10.0.1.10"])
    port = replace(good.ports[0], cluster_ip="fd00::9")
    return replace(good, ports=(port,))


def test_failed_partial_sync_keeps_the_old_rules(inside: Netns) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A, B))
    before = table(inside)
    b2 = service("b", "172.30.0.2", ["10.0.1.13"], node_port=30002)
    with pytest.raises(ApplyError, match="previous rules stay in place"):
        dp.sync(state_of(A, b2, broken("c")), {"ns1/b", "ns1/c"})
    assert table(inside) == before
    # the next sync is a full one, and works once the bad service is gone
    res = dp.sync(state_of(A, b2), {"ns1/b"})
    assert res.full and "0 : 10.0.1.13 . 8080" in table(inside)


def test_failed_full_sync_keeps_the_old_dispatch(inside: Netns) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A, B))
    before = table(inside)
    with pytest.raises(ApplyError):
        dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.14"]), B, broken("c")))
    after = table(inside)
    # new chains may have been declared (unreferenced), but maps and existing chains are as before
    for part in ("map service-ips", f"chain service-{base('a')} ", f"chain service-{base('b')} "):
        assert after.split(part)[1].split("\n\t}")[0] == before.split(part)[1].split("\n\t}")[0]


def test_cleanup_removes_only_our_tables(inside: Netns) -> None:
    inside.nft("-f", "-", input="table ip other {\n chain c {\n type filter hook input priority 0;\n }\n}\n"
               "table inet kube-proxy {\n chain c {\n }\n}\n")
    dp = NftablesDataplane(CFG)
    dp.cleanup()  # nothing of ours yet: fine
    dp.sync(state_of(A))
    NftablesDataplane(replace(CFG, ip_family=6, node_ips=("fd00::2",), cluster_cidrs=())).sync(state_of())
    tables = inside.nft("list", "tables").stdout
    assert "table ip kube-proxy" in tables and "table ip6 kube-proxy" in tables
    NftablesDataplane(CFG).cleanup()
    tables = inside.nft("list", "tables").stdout
    assert "table ip kube-proxy" not in tables and "table ip6 kube-proxy" not in tables
    assert "table ip other" in tables and "table inet kube-proxy" in tables


def test_restart_adopts_the_running_table_without_a_gap(inside: Netns) -> None:
    first = NftablesDataplane(CFG)
    first.sync(state_of(A, B))
    before = table(inside)
    second = NftablesDataplane(CFG)  # a new daemon: knows nothing, finds the table
    second.sync(state_of(A))  # b was deleted while it was down
    for tx in second.transactions:
        assert "delete table" not in tx and "flush table" not in tx and "flush ruleset" not in tx
        lines = tx.splitlines()
        for i, line in enumerate(lines):  # a flushed chain in use is refilled in the same transaction
            if line.startswith("flush chain") and "-ns1/b/" not in line:
                chain = line.split()[-1]
                rest = lines[i + 1:]
                assert any(r.startswith(f"add rule ip kube-proxy {chain} ") for r in rest), line
    after = table(inside)
    assert f"chain service-{base('b')} {{\n\t}}" in after and f"goto service-{base('b')}" not in after
    assert after.split(f"chain service-{base('a')} ")[1].split("}")[0] == \
        before.split(f"chain service-{base('a')} ")[1].split("}")[0]
    # and it then continues with partial syncs
    assert not second.sync(state_of(A, B), {"ns1/b"}).full
    assert f"goto service-{base('b')}" in table(inside)


def test_ipv6_traffic(inside: Netns, backends: None) -> None:
    cfg = NodeConfig(hostname="test-node", ip_family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:10::/64",))
    dp = NftablesDataplane(cfg)
    dp.sync(state_of(service("a", "fd00:30::1", ["fd00:10::10"])))
    assert {fetch("fd00:30::1") for _ in range(5)} == {"fd00:10::10"}
    dp.sync(state_of(service("a", "fd00:30::1", ["fd00:10::10", "fd00:10::11"])), {"ns1/a"})  # via netlink
    assert {fetch("fd00:30::1") for _ in range(40)} == {"fd00:10::10", "fd00:10::11"}
    assert "table ip6 kube-proxy" in inside.nft("list", "tables").stdout


def test_traffic_follows_full_and_partial_syncs(inside: Netns, backends: None) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.10"])))
    assert {fetch("172.30.0.1") for _ in range(5)} == {"10.0.1.10"}
    dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.11"])), {"ns1/a"})
    assert {fetch("172.30.0.1") for _ in range(5)} == {"10.0.1.11"}
    dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.10", "10.0.1.11"])), {"ns1/a"})
    assert {fetch("172.30.0.1") for _ in range(40)} == {"10.0.1.10", "10.0.1.11"}
    dp.sync(state_of(service("a", "172.30.0.1", [])), {"ns1/a"})
    with pytest.raises(ConnectionRefusedError):  # no endpoints: rejected
        fetch("172.30.0.1")
    with pytest.raises(ConnectionRefusedError):  # unknown port of a ClusterIP: rejected
        fetch("172.30.0.1", 81)



def test_switching_modes_leaves_nothing_of_the_old_mode(inside: Netns) -> None:
    st = state_of(A, B)
    dataplane("iptables", CFG).sync(st)
    assert "KUBE-SERVICES" in inside.run("iptables-save", "-t", "nat").stdout
    inside.run("ip", "link", "add", "svcproxy0", "type", "bridge")  # and userspace mode's interface
    cleanup_other_modes("nftables", CFG)  # what the daemon does before its first sync
    NftablesDataplane(CFG).sync(st)
    assert "KUBE-" not in inside.run("iptables-save").stdout
    assert "svcproxy0" not in inside.run("ip", "link").stdout
    assert f"goto service-{base('b')}" in table(inside)
    cleanup_other_modes("iptables", CFG)  # and back: iptables mode removes our table
    dataplane("iptables", CFG).sync(st)
    assert "kube-proxy" not in inside.nft("list", "tables").stdout
    assert "KUBE-SERVICES" in inside.run("iptables-save", "-t", "nat").stdout


@pytest.mark.parametrize("partial", [True, False], ids=["partial", "full-after-restart"])
def test_changed_affinity_timeout_recreates_the_sets(inside: Netns, partial: bool) -> None:
    sticky = service("s", "172.30.0.5", ["10.0.1.10", "10.0.1.11"], session_affinity_timeout=600)
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(sticky))
    assert "timeout 10m" in table(inside)
    shorter = service("s", "172.30.0.5", ["10.0.1.10", "10.0.1.11"], session_affinity_timeout=300)
    if partial:
        dp.sync(state_of(shorter), {"ns1/s"})
    else:
        NftablesDataplane(CFG).sync(state_of(shorter))
    text = table(inside)
    assert "timeout 10m" not in text and text.count("timeout 5m") == 2
    svc = f"service-{names.port_base(ServicePortName('ns1', 's', 'p', 'TCP'))}"
    assert text.split(f"chain {svc} {{")[1].split("}")[0].count("ip saddr @affinity-") == 2
    assert text.count("update @affinity-") == 2
