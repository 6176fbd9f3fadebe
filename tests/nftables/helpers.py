"""Small builders for nftables-mode tests: states from YAML, services from keyword arguments."""

from __future__ import annotations

from svcproxy.config import NodeConfig
from svcproxy.model import load_text
from svcproxy.state import (
    EndpointInfo,
    ProxyState,
    ServicePortInfo,
    ServicePortName,
    ServiceState,
    build_state,
)

CFG = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/16",))


def state_from(yaml_text: str, cfg: NodeConfig = CFG) -> ProxyState:
    objects = load_text(yaml_text)
    assert not objects.errors, objects.errors
    return build_state(objects, cfg)


def service(name: str, cluster_ip: str, endpoints: list[str], *, ns: str = "ns1", port: int = 80,
            protocol: str = "TCP", local: tuple[str, ...] = (), **kw: object) -> ServiceState:
    """One-port service "ns/name" with ready endpoints ip (port 8080); those in local are on this node."""
    spn = ServicePortName(ns, name, "p", protocol)
    eps = tuple(EndpointInfo(ip, 8080, is_local=ip in local, node_name="test-node" if ip in local else "other")
                for ip in endpoints)
    info = ServicePortInfo(spn, cluster_ip, port, protocol, 8080, **kw)  # type: ignore[arg-type]
    return ServiceState(spn.service_key, (info,), {spn: eps})


def state_of(*services: ServiceState) -> ProxyState:
    st = ProxyState()
    for s in services:
        st.services[s.key] = s
    return st
