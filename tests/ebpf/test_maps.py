"""What the BPF maps hold for a state, and the writes between two states (no kernel needed)."""

from __future__ import annotations

from dataclasses import replace

from svcproxy.dataplane.ebpf import maps

from .conftest import CFG
from .helpers import VIP, service, state_of

A, B, C, D = "10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"


def entries(*svcs):  # noqa: ANN001, ANN202
    return maps.desired(state_of(*svcs), CFG)


def groups(svc) -> dict:  # noqa: ANN001
    return {kind: g for (_, kind), g in maps.service_entries(svc, state_of(svc), CFG).groups.items()}


def test_cluster_ip_uses_ready_endpoints_and_terminating_ones_only_when_none_is_ready() -> None:
    assert groups(service("web", VIP, [A, B]))["internal"].endpoints == ((A, 8080), (B, 8080))
    assert groups(service("web", VIP, [A, B], terminating=(B,)))["internal"].endpoints == ((A, 8080),)
    assert groups(service("web", VIP, [A, B], terminating=(A, B)))["internal"].endpoints == ((A, 8080), (B, 8080))


def test_no_endpoints_rejects_and_internal_local_without_local_endpoint_passes_to_nftables() -> None:
    assert groups(service("web", VIP, []))["internal"].flags == maps.SVC_F_REJECT
    local = groups(service("web", VIP, [A, B], local=(B,), internal_policy_local=True))["internal"]
    assert local.endpoints == ((B, 8080),) and local.flags == 0
    none_local = groups(service("web", VIP, [A, B], internal_policy_local=True))["internal"]
    assert none_local.endpoints == () and none_local.flags == maps.SVC_F_PASS  # nftables drops it


def test_external_addresses_of_a_local_client_use_the_cluster_endpoints() -> None:
    svc = service("web", VIP, [A, B], local=(A,), node_port=30080, external_ips=("192.0.2.1",),
                  load_balancer_ips=("198.51.100.1",), external_policy_local=True)
    ent = maps.service_entries(svc, state_of(svc), CFG)
    keys = {k: g for k, (_, g) in ent.keys.items()}
    assert keys == {maps.svc_key(VIP, 80, "TCP"): "internal", maps.svc_key("10.0.0.1", 30080, "TCP"): "internal",
                    maps.svc_key("192.0.2.1", 80, "TCP"): "internal", maps.svc_key("198.51.100.1", 80, "TCP"): "internal"}
    ranged = replace(svc.ports[0], load_balancer_source_ranges=("203.0.113.0/24",))
    assert maps.external_addresses(ranged, CFG) == [("10.0.0.1", 30080), ("192.0.2.1", 80)]  # firewall: nftables


def test_affinity_timeout_reaches_the_service_value() -> None:
    w, _ = maps.plan({}, entries(service("web", VIP, [A], session_affinity_timeout=10800)), maps.Ids())
    assert [maps.parse_svc_val(v) for _, v in w.svc_set] == [(1, 1, 10800, 0)]


def test_one_endpoint_change_is_one_slot_write_and_two_counter_ops() -> None:
    ids = maps.Ids()
    _, applied = maps.plan({}, entries(service("web", VIP, [A, B, C])), ids)
    w, placed = maps.plan(applied, entries(service("web", VIP, [A, C, D])), ids)
    assert w.slot_set == [(maps.slot_key(1, 1), maps.backend((D, 8080)))]
    assert w.ep_add == [(maps.ep_key(1, (D, 8080)), bytes(8))] and w.ep_del == [maps.ep_key(1, (B, 8080))]
    assert w.svc_set == [] and w.svc_del == [] and w.slot_del == []
    assert placed["ns1/web"].groups[("ns1/web:p", "internal")].endpoints == ((A, 8080), (D, 8080), (C, 8080))


def test_shrinking_sets_the_count_before_deleting_the_slot() -> None:
    ids = maps.Ids()
    _, applied = maps.plan({}, entries(service("web", VIP, [A, B, C])), ids)
    w, _ = maps.plan(applied, entries(service("web", VIP, [A, B])), ids)
    assert [maps.parse_svc_val(v)[1] for _, v in w.svc_set] == [2]
    assert w.slot_del == [maps.slot_key(1, 2)] and w.slot_set == []


def test_a_removed_service_frees_its_id_only_after_the_writes() -> None:
    ids = maps.Ids()
    _, applied = maps.plan({}, entries(service("a", VIP, [A])), ids)
    w, placed = maps.plan(applied, {"ns1/a": None, **entries(service("b", "172.30.0.11", [B]))}, ids)
    assert w.svc_del == [maps.svc_key(VIP, 80, "TCP")] and w.slot_del == [maps.slot_key(1, 0)]
    assert [maps.parse_svc_val(v)[0] for _, v in w.svc_set] == [2]  # not 1: still in use while writing
    assert "ns1/a" not in placed and ids.get(("x", "internal")) == 1  # free afterwards


def test_assign_slots_keeps_survivors_in_place() -> None:
    a, b, c, d = ((x, 1) for x in "abcd")
    assert maps.assign_slots((a, b, c), (a, c, d)) == (a, d, c)
    assert maps.assign_slots((a, b, c), (c,)) == (c,)
    assert maps.assign_slots((a, b, c), (b, c)) == (c, b)
    assert maps.assign_slots((), (b, a)) == (b, a)


def test_status_counters_add_the_bpf_counts_since_the_first_poll() -> None:
    from svcproxy.runtime.status import EndpointCounters

    bpf = {("10.0.1.10", 8080, "TCP"): 5}
    c = EndpointCounters(dump=lambda: [(1, "10.0.1.10", 8080, "TCP", None)], extra=lambda: dict(bpf))
    c.poll()
    assert c.connections("10.0.1.10", 8080, "TCP") == 1  # the 5 predate the page: a baseline
    bpf[("10.0.1.10", 8080, "TCP")] = 9
    bpf[("10.0.1.11", 8080, "TCP")] = 2
    c.poll()
    assert c.connections("10.0.1.10", 8080, "TCP") == 5 and c.connections("10.0.1.11", 8080, "TCP") == 2
