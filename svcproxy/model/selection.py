"""Which endpoints this node sends a service's traffic to: kube-proxy's CategorizeEndpoints.

Ready endpoints by default; serving+terminating ones when none is ready (independently for
the Cluster and Local policies); topology hints (PreferSameNode, then PreferSameZone) only when
every ready endpoint carries them and at least one matches this node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar


class _Endpoint(Protocol):
    ready: bool
    serving: bool
    terminating: bool
    is_local: bool
    zone_hints: frozenset[str]
    node_hints: frozenset[str]


E = TypeVar("E", bound=_Endpoint)


@dataclass(frozen=True, slots=True)
class Selection(Generic[E]):  # noqa: UP046 - Python 3.11 has no PEP 695
    cluster: tuple[E, ...]  # empty if the service never uses Cluster policy
    local: tuple[E, ...]  # empty if the service never uses Local policy
    all_reachable: tuple[E, ...]  # union of the two, in input order
    has_any: bool  # some usable endpoint exists somewhere in the cluster


def topology_mode(endpoints: tuple[E, ...], node_name: str, zone: str) -> str:
    """"PreferSameNode", "PreferSameZone" or "" from the endpoints' hints."""
    ready = [ep for ep in endpoints if ep.ready]
    if not ready:
        return ""
    if all(ep.node_hints for ep in ready) and any(node_name in ep.node_hints for ep in ready):
        return "PreferSameNode"
    if all(ep.zone_hints for ep in ready) and any(zone in ep.zone_hints for ep in ready):
        return "PreferSameZone"
    return ""


def _available(ep: _Endpoint, mode: str, node_name: str, zone: str) -> bool:
    if mode == "PreferSameNode":
        return node_name in ep.node_hints
    if mode == "PreferSameZone":
        return zone in ep.zone_hints
    return True


def categorize(endpoints: tuple[E, ...], uses_cluster: bool, uses_local: bool,
               node_name: str, zone: str) -> Selection[E]:
    if not endpoints:
        return Selection((), (), (), False)
    cluster: tuple[E, ...] = ()
    local: tuple[E, ...] = ()
    has_any = False
    mode = ""
    if uses_cluster:
        mode = topology_mode(endpoints, node_name, zone)
        cluster = tuple(ep for ep in endpoints if ep.ready and _available(ep, mode, node_name, zone))
        if not cluster:
            cluster = tuple(ep for ep in endpoints if ep.serving and ep.terminating)
        has_any = bool(cluster)
    if not uses_local:
        return Selection(cluster, (), cluster, has_any)

    local_ready = local_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            local_ready |= ep.is_local
        elif ep.serving and ep.terminating:
            has_any = True
            local_terminating |= ep.is_local
    use_terminating = False
    if local_ready:
        local = tuple(ep for ep in endpoints if ep.is_local and ep.ready)
    elif local_terminating:
        use_terminating = True
        local = tuple(ep for ep in endpoints if ep.is_local and ep.serving and ep.terminating)
    if not uses_cluster:
        return Selection((), local, local, has_any)
    if mode == "" and not use_terminating:
        return Selection(cluster, local, cluster, has_any)
    merged = dict.fromkeys(cluster)
    merged.update(dict.fromkeys(local))
    return Selection(cluster, local, tuple(merged), has_any)


class _Port(Protocol):
    internal_policy_local: bool
    external_policy_local: bool

    @property
    def uses_cluster_endpoints(self) -> bool: ...

    @property
    def uses_local_endpoints(self) -> bool: ...

    @property
    def externally_accessible(self) -> bool: ...


class Policy(NamedTuple, Generic[E]):  # noqa: UP046 - Python 3.11 has no PEP 695
    """Where one service port's traffic goes on this node, decided once the way kube-proxy's
    syncProxyRules decides it before writing a rule. Every backend renders from this, so the
    iptables, nftables and userspace modes cannot disagree about a port's endpoints. (A
    NamedTuple: made once per port per render, 10,000 times in a cold one.)"""

    selection: Selection[E]
    uses_cluster_chain: bool  # a chain spreading over selection.cluster exists
    uses_local_chain: bool  # one over selection.local exists
    has_internal: bool  # ClusterIP traffic has an endpoint under its policy (else: dropped)
    has_external: bool  # external traffic (NodePort, external/LB IPs) has one (else: dropped)
    uses_external_chain: bool  # externally accessible, with endpoints: the external chain exists

    @property
    def has_endpoints(self) -> bool:
        """Some usable endpoint exists in the cluster; without one, traffic is rejected."""
        return self.selection.has_any


def port_policy(port: _Port, endpoints: tuple[E, ...], node_name: str, zone: str) -> Policy[E]:
    """The one entry point of endpoint selection: kube-proxy's CategorizeEndpoints, then what
    each traffic policy (internal, external) does with the result."""
    uses_cluster, uses_local = port.uses_cluster_endpoints, port.uses_local_endpoints
    sel = categorize(endpoints, uses_cluster, uses_local, node_name, zone)
    has_local = bool(sel.local)
    return Policy(
        sel,
        bool(sel.cluster) and uses_cluster,  # uses_cluster_chain
        has_local and uses_local,  # uses_local_chain
        has_local if port.internal_policy_local else sel.has_any,  # has_internal
        has_local if port.external_policy_local else sel.has_any,  # has_external
        sel.has_any and port.externally_accessible,  # uses_external_chain
    )
