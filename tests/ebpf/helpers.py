"""Services for ebpf tests, from keyword arguments."""

from __future__ import annotations

from svcproxy.state import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName, ServiceState

VIP, VIP6 = "172.30.0.10", "fd00:30::10"


def service(name: str, cluster_ip: str, endpoints: list[str] | tuple[str, ...], *, port: int = 80,
            target: int = 8080, protocol: str = "TCP", ns: str = "ns1", local: tuple[str, ...] = (),
            terminating: tuple[str, ...] = (), **kw: object) -> ServiceState:
    """One-port Service ns/name with endpoints ip:target; those in local are on this node,
    those in terminating are serving but terminating (not ready)."""
    spn = ServicePortName(ns, name, "p", protocol)
    eps = tuple(EndpointInfo(ip, target, is_local=ip in local, ready=ip not in terminating,
                             terminating=ip in terminating, node_name="test-node" if ip in local else "other")
                for ip in endpoints)
    info = ServicePortInfo(spn, cluster_ip, port, protocol, target, **kw)  # type: ignore[arg-type]
    return ServiceState(spn.service_key, (info,), {spn: eps})


def state_of(*services: ServiceState) -> ProxyState:
    st = ProxyState()
    for s in services:
        st.services[s.key] = s
    return st
