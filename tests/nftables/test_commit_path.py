"""A full sync's commit through our netlink encoder programs exactly what `nft -f` programs:
the same states, synced through nft only (use_netlink=False) and through the session, list the
same in two namespaces; and the netlink path sends nothing through nft once the table is large."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace

import pytest

import svcproxy.dataplane.nftables as nft_dp
import svcproxy.dataplane.nftables.pipeline as nft_pipeline
from svcproxy.config import NodeConfig
from svcproxy.dataplane.nftables import NftablesDataplane, netlink
from svcproxy.dataplane.nftables.commands import AddChain, AddElements, AddRule, FlushContainer
from svcproxy.dataplane.nftables.layout import Chain, Hook
from svcproxy.dataplane.nftables.service import Element
from svcproxy.state import ProxyState

from .conftest import make_netns, setns
from .helpers import CFG, service, state_of

pytestmark = pytest.mark.kernel

V6 = NodeConfig(hostname="test-node", ip_family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:10::/64",))
NODEPORT_ADDRESSES = replace(CFG, nodeport_addresses=("192.168.0.0/24",))


def states(cfg: NodeConfig) -> tuple[ProxyState, ProxyState]:
    """A cold state with every per-service shape, then a changed one (a service gone, an
    affinity timeout changed, endpoints moved, a service added)."""
    v4 = cfg.ip_family == 4

    def ip(n: int, pod: bool = True) -> str:
        if v4:
            return f"10.0.1.{n}" if pod else f"172.30.0.{n}"
        return f"fd00:10::{n:x}" if pod else f"fd00:30::{n:x}"

    ext = ("192.168.100.5",) if v4 else ("2001:db8::5",)
    lb = ("192.168.100.6",) if v4 else ("2001:db8::6",)
    ranges = ("203.0.113.0/25",) if v4 else ("2001:db8:1::/64",)
    cidrs = ("172.30.0.0/16",) if v4 else ("fd00:30::/112",)
    a = service("a", ip(1, False), [ip(10), ip(11)], session_affinity_timeout=600)
    b = service("b", ip(2, False), [ip(12), ip(13)], node_port=30002, external_policy_local=True,
                load_balancer_ips=lb, load_balancer_source_ranges=ranges, local=(ip(12),), protocol="UDP")
    c = service("c", ip(3, False), [], node_port=30003, protocol="SCTP", external_ips=ext)
    d = service("d", ip(4, False), [ip(14)], internal_policy_local=True)
    first = state_of(a, b, c, d)
    first.service_cidrs = cidrs
    a2 = service("a", ip(1, False), [ip(10), ip(15)], session_affinity_timeout=300)
    e = service("e", ip(5, False), [ip(16), ip(17), ip(18)], node_port=30005)
    second = state_of(a2, b, c, e)
    second.service_cidrs = cidrs
    return first, second


def normalise(text: str) -> str:
    """Handles and our anonymous map names, should a listing show them."""
    return re.sub(r"__map\w+", "__map", re.sub(r" # handle \d+", "", text))


def listings(cfg: NodeConfig, use_netlink: bool) -> tuple[list[str], list[list[tuple[str, int, float]]]]:
    """The table's listing after a cold and a warm full sync, and each sync's transactions."""
    ns = make_netns("cp")
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        setns(fd)
        os.close(fd)
        dp = NftablesDataplane(cfg, use_netlink=use_netlink)
        out, timings = [], []
        for st in states(cfg):
            dp.sync(st, None)
            timings.append([t for t in dp.timings if t[0] not in ("render", "wait")])
            out.append(normalise(ns.nft("list", "table", names_family(cfg), "kube-proxy").stdout))
        return out, timings
    finally:
        setns(home)
        os.close(home)
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


def names_family(cfg: NodeConfig) -> str:
    return "ip" if cfg.ip_family == 4 else "ip6"


@pytest.mark.parametrize("cfg", [CFG, V6, replace(CFG, masquerade_all=True), NODEPORT_ADDRESSES],
                         ids=["ipv4", "ipv6", "masq-all", "nodeport-addresses"])
def test_full_sync_commit_lists_as_nft_programs_it(cfg: NodeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    by_nft, nft_timings = listings(cfg, use_netlink=False)  # one fill chunk
    monkeypatch.setattr(nft_pipeline, "FILL_BATCH_CHAINS", 3)  # many chunks, one or two services each
    by_netlink, timings = listings(cfg, use_netlink=True)
    assert all(path == "nft" for t in nft_timings for path, _, _ in t)
    cold, warm = timings
    # the fixed part through nft, the commit (last) through the session; (the firewall chain's
    # anonymous set is nft's job, so its fill batch goes through nft)
    assert cold[0][0] == "nft" and cold[-1][0] == "netlink" and warm[-1][0] == "netlink"
    assert len(cold) > len(nft_timings[0])  # it did go chunk by chunk
    assert "service-ips" in by_nft[0] and "affinity-" in by_nft[0] and "timeout 5m" in by_nft[1]
    assert by_netlink[0] == by_nft[0]
    assert by_netlink[1] == by_nft[1]


def test_large_table_full_sync_sends_nothing_through_nft(inside, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above DRIFT_CHECK_MAX_CHAINS the fixed part is re-declared only when it changed."""
    monkeypatch.setattr(nft_dp, "DRIFT_CHECK_MAX_CHAINS", 1)
    first, second = states(CFG)
    dp = NftablesDataplane(CFG)
    dp.sync(first, None)
    dp.sync(second, None)
    paths = [path for path, _, _ in dp.timings if path not in ("render", "wait")]
    assert paths and all(path == "netlink" for path in paths)
    second.service_cidrs = ("172.30.0.0/16", "192.168.200.0/24")  # the fixed part changed: nft again
    dp.sync(second, None)
    assert [path for path, _, _ in dp.timings if path not in ("render", "wait")][0] == "nft"
    assert "192.168.200.0/24" in inside.nft("list", "chain", "ip", "kube-proxy", "cluster-ips-check").stdout


def test_element_lists_are_split_below_the_attribute_limit() -> None:
    items = tuple(Element("service-ips", f"172.30.{i // 250}.{i % 250 + 1} . tcp . 80", "goto service-x")
                  for i in range(3000))
    msgs = netlink.encode("ip", "kube-proxy", [AddElements("service-ips", items)])
    assert len(msgs) > 1 and all(len(attrs) < 0xFFFF for _, _, attrs in msgs)
    assert all(m[0] == netlink.NEWSETELEM for m in msgs)


def test_base_chains_and_flushes_encode() -> None:
    msgs = netlink.encode("ip", "kube-proxy", [
        AddChain(Chain("nat-output", hook=Hook("nat", "output", -100))),
        FlushContainer("map", "service-ips"),
        AddRule("filter-input", "ct state new jump firewall-check"),
    ])
    assert [m[0] for m in msgs] == [netlink.NEWCHAIN, netlink.DELSETELEM, netlink.NEWRULE]
    with pytest.raises(netlink.Unsupported):  # a hook of another family (netdev): nft's job
        netlink.encode("ip", "kube-proxy", [AddChain(Chain("c", hook=Hook("filter", "ingress", 0)))])


def test_fills_only_nft_can_encode_share_one_nft_run(inside, monkeypatch: pytest.MonkeyPatch) -> None:
    """Firewall chains (an anonymous set of source ranges) are filled by nft, which reads the
    whole table first: all of them in one run after the netlink fills, not one per chunk."""
    monkeypatch.setattr(nft_pipeline, "FILL_BATCH_CHAINS", 1)  # one service per chunk
    svcs = [service(f"lb{i}", f"172.30.0.{i + 1}", ["10.0.1.10"], load_balancer_ips=(f"192.168.100.{i + 1}",),
                    load_balancer_source_ranges=("203.0.113.0/25", "198.51.100.0/24")) for i in range(4)]
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(*svcs), None)
    paths = [path for path, _, _ in dp.timings if path not in ("render", "wait")]
    assert paths.count("nft") == 2 and paths.count("netlink") >= 5, paths  # the fixed part, the firewalls
    fills = [t for t in dp.transactions if "saddr != {" in t]
    assert len(fills) == 1 and fills[0].count("saddr != {") == 4
    text = inside.nft("list", "table", "ip", "kube-proxy").stdout
    assert text.count("ip saddr != { 198.51.100.0/24, 203.0.113.0/25 } drop") == 4
