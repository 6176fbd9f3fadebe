"""The maps layout's rendered text (no root): endpoints appear only as set/map elements.

The kernel tests (test_maps_layout.py) prove the traffic; these check the property the layout
exists for on every service shape: take the elements out of the ruleset and what is left, the
chains, rules and declarations, is the same whatever the endpoints are."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from svcproxy.dataplane.nftables import names
from svcproxy.dataplane.nftables.render import BlockCache, render_ruleset
from svcproxy.dataplane.nftables.service_maps import SlotIndex, placement, slot_of
from svcproxy.state import ServicePortName

from .helpers import CFG, service, state_of
from .test_render import chain, elements

MAPS = replace(CFG, nftables_layout="maps")
ELEMENTS = re.compile(r"\n\t\telements = \{.*?\}\n", re.S)

SHAPES = {  # keyword arguments of helpers.service, one service port each
    "cluster-ip": {},
    "node-port": {"node_port": 30001},
    "external-ip": {"external_ips": ("192.168.99.1",)},
    "load-balancer with source ranges": {"load_balancer_ips": ("5.6.7.8",),
                                         "load_balancer_source_ranges": ("203.0.113.0/25",), "node_port": 30002},
    "eTP=Local": {"node_port": 30003, "external_policy_local": True, "health_check_node_port": 30100},
    "iTP=Local": {"internal_policy_local": True},
    "ClientIP affinity": {"session_affinity_timeout": 10800, "node_port": 30004},
    "udp": {"protocol": "UDP"},
}
ENDPOINT_SETS = [[], ["10.0.1.1"], ["10.0.1.1", "10.0.1.2"], ["10.0.1.3", "10.0.1.4", "10.0.1.5"],
                 ["10.0.1.1", "10.0.1.9"]]


def base(name: str, protocol: str = "TCP") -> str:
    return names.port_base(ServicePortName("ns1", name, "p", protocol))


def without_elements(text: str) -> str:
    return ELEMENTS.sub("\n", text)


@pytest.mark.parametrize("shape", SHAPES)
def test_rules_do_not_depend_on_the_endpoints(shape: str) -> None:
    kw = dict(SHAPES[shape])
    protocol = str(kw.pop("protocol", "TCP"))
    rendered = set()
    for eps in ENDPOINT_SETS:
        for local in ((), tuple(eps[:1])):  # with and without an endpoint on this node
            st = state_of(service("a", "172.30.0.1", eps, protocol=protocol, local=local, **kw),
                          service("other", "172.30.0.2", ["10.0.2.1"]))
            text = render_ruleset(st, MAPS)
            assert "chain endpoint-" not in text and "chain affinity-" not in text
            rendered.add(without_elements(text))
    assert len(rendered) == 1, f"{shape}: a rule or declaration changed with the endpoints"


def shared(name: str, local: bool = False) -> tuple[str, int]:
    return placement((names.LOCAL_ENDPOINTS if local else names.ENDPOINTS) + base(name))


def test_the_ranges_split_the_ports_slot_evenly_by_address() -> None:
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.1.5", "10.0.1.3", "10.0.1.4"])), MAPS)
    shard, o = shared("a")
    assert shard.startswith("endpoints-tcp-") and o % 10000 == 0
    assert elements(text, shard) == [f'{o}-{o + 3332} comment "ns1/a:p" : 10.0.1.3 . 8080',
                                     f'{o + 3333}-{o + 6665} comment "ns1/a:p" : 10.0.1.4 . 8080',
                                     f'{o + 6666}-{o + 9999} comment "ns1/a:p" : 10.0.1.5 . 8080']
    assert chain(text, f"service-{base('a')}")[-1] == (
        f"meta l4proto tcp dnat ip to numgen random mod 10000 offset {o} map @{shard}")


def test_udp_ports_use_the_udp_maps() -> None:
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.1.1"], protocol="UDP")), MAPS)
    shard, o = placement(names.ENDPOINTS + base("a", "UDP"))
    assert shard.startswith("endpoints-udp-")
    assert elements(text, shard) == [f'{o}-{o + 9999} comment "ns1/a:p" : 10.0.1.1 . 8080']
    assert "typeof numgen random mod 10000 : ip daddr . udp dport" in text


def colliding_names() -> tuple[str, str]:
    seen: dict[tuple[str, int], str] = {}
    for i in range(1_000_000):
        slot = slot_of(names.ENDPOINTS + base(f"c{i}"))
        if slot in seen:
            return seen[slot], f"c{i}"
        seen[slot] = f"c{i}"
    raise AssertionError("no collision found")


def test_colliding_slots_give_both_ports_maps_of_their_own() -> None:
    a, b = colliding_names()
    text = render_ruleset(state_of(service(a, "172.30.0.1", ["10.0.1.1"]), service(b, "172.30.0.2", ["10.0.1.2"])), MAPS)
    for name, ep in ((a, "10.0.1.1"), (b, "10.0.1.2")):
        assert elements(text, f"endpoints-{base(name)}") == [f"0-999999 : {ep} . 8080"]
        assert chain(text, f"service-{base(name)}")[-1] == (
            f"meta l4proto tcp dnat ip to numgen random mod 1000000 map @endpoints-{base(name)}")
    alone = render_ruleset(state_of(service(a, "172.30.0.1", ["10.0.1.1"])), MAPS)
    assert f"map endpoints-{base(a)} " not in alone and "offset" in chain(alone, f"service-{base(a)}")[-1]


def test_slot_index_updates_match_a_rebuild() -> None:
    """update() reports exactly the other services whose ports moved, and ends where a
    rebuild from the same state does."""
    a, b = colliding_names()
    sa, sb, sc = (service(n, f"172.30.0.{i}", ["10.0.1.1"]) for i, n in enumerate((a, b, "plain"), 1))
    index = SlotIndex()
    index.rebuild([sa, sc])
    assert index.own_maps(sa.key) == frozenset()
    assert index.update({sb.key: sb}) == {sa.key}  # b arrives on a's slot: a moves
    assert index.own_maps(sa.key) == {names.ENDPOINTS + base(a)} and index.own_maps(sc.key) == frozenset()
    assert index.update({sc.key: None}) == set()  # unrelated
    fresh = SlotIndex()
    fresh.rebuild([sa, sb])
    assert (fresh.claims, fresh.keys) == (index.claims, index.keys)
    assert index.update({sb.key: None}) == {sa.key}  # b goes: a moves back
    assert index.own_maps(sa.key) == frozenset()


def test_the_cache_rerenders_a_port_moved_by_another() -> None:
    a, b = colliding_names()
    sa, sb = service(a, "172.30.0.1", ["10.0.1.1"]), service(b, "172.30.0.2", ["10.0.1.2"])
    cache = BlockCache(MAPS)
    cache.claim(state_of(sa))
    before = cache.service(sa, "")
    assert cache.claim(state_of(sa, sb), [sb.key]) == {sa.key}
    after = cache.service(sa, "")
    assert after is not before and f"endpoints-{base(a)}" in after.sets


def test_no_endpoints_is_an_element_of_the_reject_sets() -> None:
    text = render_ruleset(state_of(service("a", "172.30.0.1", [], node_port=30001)), MAPS)
    assert elements(text, f"endpoints-{base('a')}") == []
    assert elements(text, "reject-services") == ['172.30.0.1 . tcp . 80 comment "ns1/a:p"']
    assert [e.split(" comment")[0] for e in elements(text, "reject-nodeports")] == ["tcp . 30001"]
    # the dispatch still leads to the service chain, whose map is empty: the DNAT does not happen
    assert f"172.30.0.1 . tcp . 80 : goto service-{base('a')}" in elements(text, "service-ips")
    assert "ip daddr . meta l4proto . th dport @reject-services reject" in chain(text, "service-endpoints-check")


def test_external_policy_local_without_a_local_endpoint_drops_node_ports() -> None:
    st = state_of(service("a", "172.30.0.1", ["10.0.1.1"], node_port=30001, external_policy_local=True,
                          health_check_node_port=30100))
    text = render_ruleset(st, MAPS)
    assert [e.split(" comment")[0] for e in elements(text, "drop-nodeports")] == ["tcp . 30001"]
    (cluster, o), (local, lo) = shared("a"), shared("a", local=True)
    assert f'{o}-{o + 9999} comment "ns1/a:p" : 10.0.1.1 . 8080' in elements(text, cluster)
    assert not any(e.startswith(f"{lo}-") for e in elements(text, local))  # no local endpoint: no range
    assert chain(text, f"local-{base('a')}")[-1].endswith(f"offset {lo} map @{local}")


def test_hairpin_pairs_and_affinity_members_follow_the_endpoints() -> None:
    st = state_of(service("a", "172.30.0.1", ["10.0.1.1", "10.0.1.2"], session_affinity_timeout=600))
    text = render_ruleset(st, MAPS)
    assert elements(text, "hairpin-endpoints") == ["10.0.1.1 . 10.0.1.1", "10.0.1.2 . 10.0.1.2"]
    assert elements(text, f"members-{base('a')}") == ["10.0.1.1 . 8080", "10.0.1.2 . 8080"]
    assert chain(text, f"service-{base('a')}")[1] == (
        f"meta l4proto tcp dnat ip to ip saddr map @client-affinity-{base('a')} : 8080")


def test_the_default_layout_has_no_maps_layout_objects() -> None:
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.1.1"], session_affinity_timeout=600)), CFG)
    for name in ("map endpoints-", "hairpin-endpoints", "reject-services", "members-", "client-affinity-", "remember-"):
        assert name not in text
