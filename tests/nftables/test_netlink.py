"""The netlink fast path: what it programs lists exactly as what nft programs from the same
commands, and the kernel's refusal leaves the rules as they were."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace

import pytest

from svcproxy.config import NodeConfig
from svcproxy.dataplane import ApplyError
from svcproxy.dataplane.nftables import NftablesDataplane, netlink
from svcproxy.dataplane.nftables.commands import AddChain, AddContainer, AddRule, AddTable
from svcproxy.dataplane.nftables.layout import Chain, Container

from .conftest import make_netns, setns
from .helpers import CFG, service, state_of

pytestmark = pytest.mark.kernel

V6 = NodeConfig(hostname="test-node", ip_family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:10::/64",))


def scenario(cfg: NodeConfig, use_netlink: bool) -> NftablesDataplane:
    """A sequence of partial syncs touching every per-service shape."""
    v4 = cfg.ip_family == 4

    def ip(n: int, pod: bool = True) -> str:
        if v4:
            return f"10.0.1.{n}" if pod else f"172.30.0.{n}"
        return f"fd00:10::{n:x}" if pod else f"fd00:30::{n:x}"

    ext = ("192.168.100.5",) if v4 else ("2001:db8::5",)
    a = service("a", ip(1, False), [ip(10)], session_affinity_timeout=600)
    b = service("b", ip(2, False), [ip(10), ip(11)], node_port=30002, external_policy_local=True,
                load_balancer_ips=ext, protocol="UDP")
    dp = NftablesDataplane(cfg, use_netlink=use_netlink)
    dp.sync(state_of(a))
    dp.sync(state_of(a, b), {"ns1/b"})
    a2 = service("a", ip(1, False), [ip(10), ip(13)], session_affinity_timeout=600)
    b2 = service("b", ip(2, False), [ip(12), ip(11)], node_port=30002, external_policy_local=True,
                 local=(ip(12),), load_balancer_ips=ext, protocol="UDP")
    dp.sync(state_of(a2, b2), {"ns1/a", "ns1/b"})
    c = service("c", ip(3, False), [], node_port=30003, protocol="SCTP", external_ips=ext)
    dp.sync(state_of(a2, b2, c), {"ns1/c"})
    dp.sync(state_of(a2, c), {"ns1/b"})
    return dp


def listing_after(cfg: NodeConfig, use_netlink: bool) -> tuple[str, int]:
    ns = make_netns("nl")
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        setns(fd)
        os.close(fd)
        dp = scenario(cfg, use_netlink)
        return ns.nft("list", "ruleset").stdout, dp.io.netlink_batches
    finally:
        setns(home)
        os.close(home)
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


@pytest.mark.parametrize("cfg", [
    CFG, V6, replace(CFG, masquerade_all=True),
    replace(CFG, detect_local_mode="BridgeInterface", bridge_interface="cbr0"),
    replace(V6, detect_local_mode="InterfaceNamePrefix", interface_name_prefix="veth"),
], ids=["ipv4", "ipv6", "masq-all", "bridge-interface", "interface-prefix-ipv6"])
def test_netlink_programs_what_nft_programs(cfg: NodeConfig) -> None:
    by_nft, batches_nft = listing_after(cfg, use_netlink=False)
    by_netlink, batches = listing_after(cfg, use_netlink=True)
    assert batches_nft == 0 and batches >= 4  # every partial sync went through the session
    assert by_netlink == by_nft


def test_unknown_commands_fall_back_to_nft() -> None:
    for unknown in (AddRule("c", "ip saddr != { 1.2.3.0/24 } drop"),  # an anonymous set
                    AddChain(Chain("c", comment="a regular chain with a comment")),
                    AddTable("rules for kube-proxy"),
                    AddContainer(Container("cluster-ips", "ipv4_addr", comment="Active ClusterIPs"))):
        with pytest.raises(netlink.Unsupported):
            netlink.encode("ip", "kube-proxy", [unknown])
    msgs = netlink.encode("ip", "kube-proxy", [
        AddRule("c", "ip daddr 172.30.0.1 tcp dport 80 ip saddr != 10.0.0.0/16 jump mark-for-masquerade")])
    assert len(msgs) == 1 and msgs[0][0] == netlink.NEWRULE


def test_refused_batch_changes_nothing(inside) -> None:
    dp = NftablesDataplane(CFG)
    a = service("a", "172.30.0.1", ["10.0.1.10"])
    dp.sync(state_of(a))
    before = inside.nft("list", "ruleset").stdout
    good = service("b", "172.30.0.2", ["10.0.1.11"])
    # a verdict to a chain that does not exist: the kernel refuses the whole batch
    bad = replace(good, ports=(replace(good.ports[0], cluster_ip="172.30.0.3"),))
    rules = dp.cache.service(bad, "")  # prime the cache, then break the rules of its service chain
    name = next(iter(rules.chains))
    rules.chains[name] = replace(rules.chains[name], rules=("goto no-such-chain",))
    # refused through netlink, then by nft too (which names the chain): both are reported
    with pytest.raises(ApplyError, match=r"nft refused.*no-such-chain.*through netlink: the kernel refused the batch"):
        dp.sync(state_of(a, bad), {"ns1/b"})
    assert inside.nft("list", "ruleset").stdout == before
    assert dp.use_netlink  # the transaction was at fault, not the encoder


def test_reading_the_table_by_netlink_dump_finds_what_nft_lists(inside) -> None:
    """read_kernel() (startup, periodic drift check) dumps chains and sets through the session;
    it finds the same names and affinity timeouts as parsing `nft -j list`."""
    by_dump, by_nft = NftablesDataplane(CFG), NftablesDataplane(CFG, use_netlink=False)
    assert not by_dump.io.read_kernel().exists and not by_nft.io.read_kernel().exists  # no table yet
    a = service("a", "172.30.0.1", ["10.0.1.10", "10.0.1.11"], session_affinity_timeout=600)
    b = service("b", "172.30.0.2", ["10.0.1.12"], node_port=30002)
    by_dump.sync(state_of(a, b))
    found, expected = by_dump.io.read_kernel(), by_nft.io.read_kernel()
    assert found.exists and found.chains == expected.chains and found.sets == expected.sets
    # a: service + one endpoint chain per endpoint (affinity); b: service + external (no endpoint chain)
    assert len(found.chains) == 5 and all(v is None for v in found.chains.values())
    assert sorted(s.timeout for s in found.sets.values()) == [600, 600]
