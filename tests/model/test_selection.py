"""Per-node endpoint selection, checked against the cases of kube-proxy's topology_test.go."""

from __future__ import annotations

from svcproxy.config import NodeConfig
from svcproxy.model.selection import Selection, port_policy
from svcproxy.state import EndpointInfo, ServicePortInfo, ServicePortName

CFG = NodeConfig(hostname="test-node")


def ep(ip: str, *, ready: bool = True, serving: bool | None = None, terminating: bool = False,
       local: bool = False, zones: tuple[str, ...] = (), nodes: tuple[str, ...] = ()) -> EndpointInfo:
    return EndpointInfo(ip, 80, local, ready, ready if serving is None else serving, terminating,
                        frozenset(zones), frozenset(nodes))


def port(**kw: object) -> ServicePortInfo:
    return ServicePortInfo(ServicePortName("ns1", "svc1", "p80", "TCP"), "172.30.0.41", 80, "TCP", **kw)  # type: ignore[arg-type]


def select_endpoints(p: ServicePortInfo, eps: tuple[EndpointInfo, ...], cfg: NodeConfig,
                     zone: str) -> Selection[EndpointInfo]:
    """The selection part of the port's policy (the one entry point every backend uses)."""
    return port_policy(p, eps, cfg.hostname, zone).selection


def ips(eps: tuple[EndpointInfo, ...]) -> set[str]:
    return {e.ip for e in eps}


def test_ready_endpoints_only() -> None:
    s = select_endpoints(port(), (ep("10.1.2.3"), ep("10.1.2.4", ready=False)), CFG, "")
    assert ips(s.cluster) == {"10.1.2.3"} and s.local == () and s.has_any


def test_terminating_fallback_when_none_ready() -> None:
    eps = (ep("10.1.2.3", ready=False, serving=True, terminating=True),
           ep("10.1.2.4", ready=False, serving=False, terminating=True))
    s = select_endpoints(port(), eps, CFG, "")
    assert ips(s.all_reachable) == {"10.1.2.3"} and s.has_any


def test_no_usable_endpoints() -> None:
    s = select_endpoints(port(), (ep("10.1.2.3", ready=False),), CFG, "")
    assert s.all_reachable == () and not s.has_any


def test_zone_hints_used_when_all_ready_have_them() -> None:
    eps = (ep("10.1.2.3", zones=("zone-a",)), ep("10.1.2.4", zones=("zone-b",)), ep("10.1.2.5", zones=("zone-a",)))
    assert ips(select_endpoints(port(), eps, CFG, "zone-a").cluster) == {"10.1.2.3", "10.1.2.5"}
    # No endpoint for our zone: hints ignored.
    assert len(select_endpoints(port(), eps, CFG, "zone-c").cluster) == 3


def test_zone_hints_ignored_when_one_ready_endpoint_lacks_them() -> None:
    eps = (ep("10.1.2.3", zones=("zone-a",)), ep("10.1.2.4"))
    assert len(select_endpoints(port(), eps, CFG, "zone-a").cluster) == 2


def test_node_hints_win_over_zone_hints() -> None:
    eps = (ep("10.1.2.3", zones=("zone-a",), nodes=("test-node",)),
           ep("10.1.2.4", zones=("zone-a",), nodes=("other",)))
    assert ips(select_endpoints(port(), eps, CFG, "zone-a").cluster) == {"10.1.2.3"}


def test_internal_local_uses_only_local_endpoints() -> None:
    eps = (ep("10.1.2.3", local=True), ep("10.1.2.4"))
    s = select_endpoints(port(internal_policy_local=True), eps, CFG, "")
    assert s.cluster == () and ips(s.local) == {"10.1.2.3"} and ips(s.all_reachable) == {"10.1.2.3"}


def test_internal_local_without_local_endpoints_still_has_any() -> None:
    s = select_endpoints(port(internal_policy_local=True), (ep("10.1.2.4"),), CFG, "")
    assert s.all_reachable == () and s.has_any


def test_external_local_keeps_cluster_for_internal_traffic() -> None:
    eps = (ep("10.1.2.3", local=True), ep("10.1.2.4"))
    s = select_endpoints(port(node_port=30080, external_policy_local=True), eps, CFG, "")
    assert ips(s.cluster) == {"10.1.2.3", "10.1.2.4"} and ips(s.local) == {"10.1.2.3"}
    assert ips(s.all_reachable) == {"10.1.2.3", "10.1.2.4"}


def test_local_terminating_fallback_merges_with_cluster() -> None:
    eps = (ep("10.1.2.3", ready=False, serving=True, terminating=True, local=True), ep("10.1.2.4"))
    s = select_endpoints(port(node_port=30080, external_policy_local=True), eps, CFG, "")
    assert ips(s.cluster) == {"10.1.2.4"} and ips(s.local) == {"10.1.2.3"}
    assert ips(s.all_reachable) == {"10.1.2.3", "10.1.2.4"}
