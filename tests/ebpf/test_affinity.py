"""ClientIP session affinity in ebpf mode: one client keeps its endpoint while the affinity is
fresh and that endpoint still serves the Service; afterwards it is chosen at random again."""

from __future__ import annotations

import pytest

from .conftest import ENDPOINTS, Node
from .helpers import VIP, service, state_of

pytestmark = pytest.mark.kernel


def test_affinity_keeps_the_endpoint_then_times_out(inside: Node) -> None:
    dp = inside.dataplane()
    dp.sync(state_of(service("web", VIP, ENDPOINTS, session_affinity_timeout=1)))
    sticky = {r["served"] for r in inside.client("tcp", VIP, 80, 30)}
    assert len(sticky) == 1, sticky
    # 1.1 s between connections: each one finds its affinity expired and draws again; 8 draws
    # over 3 endpoints all alike would happen once in 2,000 runs
    spread = {r["served"] for r in inside.client("tcp", VIP, 80, 8, pause=1.1)}
    assert len(spread) > 1, spread


def test_affinity_lets_go_of_a_removed_endpoint(inside: Node) -> None:
    dp = inside.dataplane()
    dp.sync(state_of(service("web", VIP, ENDPOINTS, session_affinity_timeout=300)))
    first = inside.client("tcp", VIP, 80, 1)[0]["served"]
    rest = [ip for ip in ENDPOINTS if ip != first]
    dp.sync(state_of(service("web", VIP, rest, session_affinity_timeout=300)), changed={"ns1/web"})
    after = {r["served"] for r in inside.client("tcp", VIP, 80, 10)}
    assert len(after) == 1 and after < set(rest), after  # a new affine endpoint, among the rest
