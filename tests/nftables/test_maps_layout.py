"""The maps layout (--nftables-layout maps) against the real kernel: real TCP through the
numgen range maps, and every endpoint change a transaction of map/set elements only."""

from __future__ import annotations

import collections
import re
from dataclasses import replace

import pytest

from svcproxy.config import NodeConfig
from svcproxy.dataplane.nftables import NftablesDataplane, names
from svcproxy.dataplane.nftables.layout import SLOT
from svcproxy.dataplane.nftables.service_maps import RANGE, placement, ranges, slot_of
from svcproxy.state import ServicePortName

from .conftest import Netns, fetch
from .helpers import CFG, service, state_of

pytestmark = pytest.mark.kernel

MAPS = replace(CFG, nftables_layout="maps")
MAPS6 = NodeConfig(hostname="test-node", ip_family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:10::/64",),
                   nftables_layout="maps")


def base(name: str) -> str:
    return names.port_base(ServicePortName("ns1", name, "p", "TCP"))


def shared(name: str) -> tuple[str, int]:
    """(shared map, offset) of service ns1/<name>'s port "p"."""
    return placement(names.ENDPOINTS + base(name))


def colliding_names() -> tuple[str, str]:
    """Two service names whose ports hash to the same shared slot (found by search)."""
    seen: dict[int, str] = {}
    for i in range(1_000_000):
        name = f"c{i}"
        slot = slot_of(names.ENDPOINTS + base(name))
        if slot in seen:
            return seen[slot], name
        seen[slot] = name
    raise AssertionError("no collision found")


def only_elements(tx: str) -> bool:
    """True when a transaction adds and deletes set/map elements and nothing else."""
    lines = [line for line in tx.splitlines() if line.strip()]
    return bool(lines) and all(line.split()[1] == "element" for line in lines)


def test_ranges_cover_the_modulus_evenly() -> None:
    for n in (1, 2, 3, 7, 1000):
        spans = [tuple(map(int, r.split("-"))) for r in ranges(n)]
        assert spans[0][0] == 0 and spans[-1][1] == RANGE - 1
        assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:], strict=False))
        sizes = {hi - lo + 1 for lo, hi in spans}
        assert max(sizes) - min(sizes) <= 1
    assert ranges(0) == []
    assert ranges(3, SLOT, 70000) == ["70000-73332", "73333-76665", "76666-79999"]


def test_endpoint_changes_are_elements_only_and_traffic_follows(inside: Netns, backends: None) -> None:
    dp = NftablesDataplane(MAPS)
    dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.10"]), service("b", "172.30.0.2", ["10.0.1.11"])))
    assert {fetch("172.30.0.1") for _ in range(5)} == {"10.0.1.10"}
    text = inside.nft("list", "table", "ip", "kube-proxy").stdout
    shard, offset = shared("a")
    assert f"dnat ip to numgen random mod 10000 offset {offset} map @{shard}" in text
    assert f'{offset}-{offset + 9999} comment "ns1/a:p" : 10.0.1.10 . 8080' in text
    assert "typeof numgen random mod 10000 : ip daddr . tcp dport" in text  # as nft declares it
    paths = [path for path, _, _ in dp.timings if path in ("nft", "netlink")]
    assert paths[0] == "nft" and set(paths[1:]) == {"netlink"}, paths  # only the fixed part through nft

    steps = [["10.0.1.10", "10.0.1.11"], ["10.0.1.11"], [], ["10.0.1.10"]]
    for eps in steps:
        batches = dp.io.netlink_batches
        dp.sync(state_of(service("a", "172.30.0.1", eps), service("b", "172.30.0.2", ["10.0.1.11"])), {"ns1/a"})
        assert dp.io.netlink_batches == batches + 1, "an endpoint change goes through netlink"
        assert only_elements(dp.transactions[-1]), dp.transactions[-1]
        if eps:
            seen = collections.Counter(fetch("172.30.0.1") for _ in range(60))
            assert set(seen) == set(eps), seen
            assert min(seen.values()) >= 10, seen  # an even split (30/30 expected)
        else:
            with pytest.raises(ConnectionRefusedError):  # no endpoints: rejected
                fetch("172.30.0.1")
    assert {fetch("172.30.0.2") for _ in range(5)} == {"10.0.1.11"}  # the other service untouched


def test_ipv6_endpoint_change(inside: Netns, backends: None) -> None:
    dp = NftablesDataplane(MAPS6)
    dp.sync(state_of(service("a", "fd00:30::1", ["fd00:10::10"])))
    assert {fetch("fd00:30::1") for _ in range(5)} == {"fd00:10::10"}
    dp.sync(state_of(service("a", "fd00:30::1", ["fd00:10::10", "fd00:10::11"])), {"ns1/a"})
    assert only_elements(dp.transactions[-1])
    assert {fetch("fd00:30::1") for _ in range(40)} == {"fd00:10::10", "fd00:10::11"}
    dp.sync(state_of(service("a", "fd00:30::1", [])), {"ns1/a"})
    with pytest.raises(ConnectionRefusedError):
        fetch("fd00:30::1")


def hairpins(ns: Netns) -> str:
    return ns.nft("list", "set", "ip", "kube-proxy", "hairpin-endpoints").stdout


def test_shared_hairpin_pair_stays_while_a_service_claims_it(inside: Netns) -> None:
    dp = NftablesDataplane(MAPS)
    a, b = service("a", "172.30.0.1", ["10.0.1.10"]), service("b", "172.30.0.2", ["10.0.1.10"])
    dp.sync(state_of(a, b))
    assert "10.0.1.10 . 10.0.1.10" in hairpins(inside)
    dp.sync(state_of(a), {"ns1/b"})  # b gone: a still needs the pair
    assert "10.0.1.10 . 10.0.1.10" in hairpins(inside)
    dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.11"])), {"ns1/a"})
    assert "10.0.1.10 . 10.0.1.10" not in hairpins(inside)
    assert "10.0.1.11 . 10.0.1.11" in hairpins(inside)


def test_restart_adopts_the_table_and_drops_stale_ranges(inside: Netns, backends: None) -> None:
    NftablesDataplane(MAPS).sync(state_of(service("a", "172.30.0.1", ["10.0.1.10", "10.0.1.11"])))
    dp = NftablesDataplane(MAPS)  # a new process: finds the maps, refills them in its commit
    dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.11"])))
    shard, offset = shared("a")
    listing = inside.nft("list", "map", "ip", "kube-proxy", shard).stdout
    assert f'{offset}-{offset + 9999} comment "ns1/a:p" : 10.0.1.11 . 8080' in listing and "10.0.1.10" not in listing
    assert {fetch("172.30.0.1") for _ in range(10)} == {"10.0.1.11"}
    dp.sync(state_of(), {"ns1/a"})  # the service goes: its chains are flushed, its ranges deleted
    assert "ns1/a:p" not in inside.nft("list", "table", "ip", "kube-proxy").stdout
    dp.sync(state_of())  # the next full sync deletes the shared map no port uses any more
    assert f"map {shard} " not in inside.nft("list", "table", "ip", "kube-proxy").stdout


def test_ports_whose_slots_collide_get_maps_of_their_own(inside: Netns, backends: None) -> None:
    """A new port hashing to a slot in use moves the other port to its own map too (the
    choice is a function of the whole state); traffic to both stays right throughout."""
    a, b = colliding_names()
    sa, sb = service(a, "172.30.0.1", ["10.0.1.10"]), service(b, "172.30.0.2", ["10.0.1.11"])
    dp = NftablesDataplane(MAPS)
    dp.sync(state_of(sa))
    shard, offset = shared(a)
    assert f"offset {offset} map @{shard}" in inside.nft("list", "table", "ip", "kube-proxy").stdout
    dp.sync(state_of(sa, sb), {f"ns1/{b}"})
    text = inside.nft("list", "table", "ip", "kube-proxy").stdout
    for name in (a, b):
        assert f"map endpoints-{base(name)} {{" in text  # own maps, mod 1000000
        assert f"dnat ip to numgen random mod 1000000 map @endpoints-{base(name)}" in text
    assert f"ns1/{a}:p" not in text  # its ranges left the shared map
    assert {fetch("172.30.0.1") for _ in range(5)} == {"10.0.1.10"}
    assert {fetch("172.30.0.2") for _ in range(5)} == {"10.0.1.11"}
    dp.sync(state_of(sa), {f"ns1/{b}"})  # b goes: a returns to its shared slot
    text = inside.nft("list", "table", "ip", "kube-proxy").stdout
    assert f"offset {offset} map @{shard}" in text and f"map endpoints-{base(a)} {{" not in text
    assert {fetch("172.30.0.1") for _ in range(5)} == {"10.0.1.10"}
    again = NftablesDataplane(MAPS)  # a full sync from scratch lands on the same table
    again.sync(state_of(sa))
    assert without_empty_chains(inside.nft("list", "table", "ip", "kube-proxy").stdout) == without_empty_chains(text)


def without_empty_chains(listing: str) -> str:
    """A listing without the flushed chains a later sync deletes."""
    return re.sub(r"\n+", "\n", re.sub(r"\n\tchain \S+ \{\n\t\}\n", "\n", listing))


def affinity_entries(ns: Netns, family: str, name: str) -> str:
    return ns.nft("list", "map", family, "kube-proxy", f"client-affinity-{base(name)}").stdout


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_client_ip_affinity_is_data_only(inside: Netns, backends: None, family: str) -> None:
    """Sticky to one endpoint; removing it changes elements only and leaves no entry pointing
    at it; the client then sticks to the one that is left."""
    cfg, vip, eps = (MAPS, "172.30.0.1", ["10.0.1.10", "10.0.1.11"]) if family == "ip" else \
        (MAPS6, "fd00:30::1", ["fd00:10::10", "fd00:10::11"])
    dp = NftablesDataplane(cfg)
    dp.sync(state_of(service("a", vip, eps, session_affinity_timeout=60)))
    listing = inside.nft("list", "table", family, "kube-proxy").stdout
    assert "chain endpoint-" not in listing  # no per-endpoint chains
    assert "ct state new ct status dnat jump remember-endpoint" in listing  # netlink-encoded as nft would
    first = fetch(vip)
    assert {fetch(vip) for _ in range(10)} == {first}  # sticky
    assert f": {first}" in affinity_entries(inside, family, "a")  # remembered by the packet path
    other = next(ep for ep in eps if ep != first)
    dp.sync(state_of(service("a", vip, [other], session_affinity_timeout=60)), {"ns1/a"})
    assert only_elements(dp.transactions[0]), dp.transactions[0]
    assert first not in affinity_entries(inside, family, "a")  # the stale entry went with its endpoint
    assert {fetch(vip) for _ in range(3)} == {other}  # and the client is remembered anew
    dp.sync(state_of(service("a", vip, eps, session_affinity_timeout=60)), {"ns1/a"})  # it comes back
    assert only_elements(dp.transactions[0])
    assert {fetch(vip) for _ in range(10)} == {other}  # still sticky to the endpoint the client had


def test_affinity_with_local_policy_keeps_per_endpoint_chains(inside: Netns, backends: None) -> None:
    dp = NftablesDataplane(MAPS)
    dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.10", "10.0.1.11"], local=("10.0.1.10", "10.0.1.11"),
                             session_affinity_timeout=60, internal_policy_local=True)))
    assert "chain endpoint-" in inside.nft("list", "table", "ip", "kube-proxy").stdout
    first = fetch("172.30.0.1")
    assert {fetch("172.30.0.1") for _ in range(10)} == {first}  # sticky
