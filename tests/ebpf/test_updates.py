"""ebpf mode under change: a rolling update under load fails no connection; IPv4 and IPv6
run side by side, each family with its own programs and maps on the same cgroup."""

from __future__ import annotations

import threading
import time

import pytest

from .conftest import CFG6, ENDPOINTS, ENDPOINTS6, UDP_PORT, Node
from .helpers import VIP, VIP6, service, state_of

pytestmark = pytest.mark.kernel


def test_rolling_update_under_load_fails_no_connection(inside: Node) -> None:
    dp = inside.dataplane()
    dp.sync(state_of(service("web", VIP, ENDPOINTS[:2])))
    results: list[list[dict]] = []
    load = threading.Thread(target=lambda: results.append(inside.client("tcp", VIP, 80, 400, pause=0.002)))
    load.start()
    time.sleep(0.2)
    a, b, c = ENDPOINTS
    # surge one, retire one, as a Deployment's rollout does; partial syncs as the daemon makes
    for step in ([a, b, c], [b, c], [b, c, a], [c, a], [a]):
        dp.sync(state_of(service("web", VIP, step)), changed={"ns1/web"})
        time.sleep(0.1)
    load.join()
    got = results[0]
    assert [r for r in got if "served" not in r] == []
    assert len({r["served"] for r in got}) == 3  # every endpoint of the rollout served some


def test_dual_stack_both_families_on_one_cgroup(inside: Node) -> None:
    dp4, dp6 = inside.dataplane(), inside.dataplane(CFG6)
    dp4.sync(state_of(service("web", VIP, ENDPOINTS)))
    dp6.sync(state_of(service("web", VIP6, ENDPOINTS6),
                      service("dns", "fd00:30::53", ENDPOINTS6, port=53, target=UDP_PORT, protocol="UDP")))
    assert {r["served"] for r in inside.client("tcp", VIP, 80, 30)} == set(ENDPOINTS)
    got6 = inside.client("tcp", VIP6, 80, 30)
    assert {r["served"] for r in got6} == set(ENDPOINTS6)
    assert all(r["peer"] == [VIP6, 80] for r in got6)
    udp6 = inside.client("udp", "fd00:30::53", 53, 10)
    assert all(r["source"] == ["fd00:30::53", 53] for r in udp6), udp6
    assert sorted(p.name for p in inside.pins.iterdir()) == ["ipv4", "ipv6"]
    dp6.cleanup()  # one family's cleanup removes ebpf mode entirely, as nftables' does both tables
    assert not inside.pins.exists()
