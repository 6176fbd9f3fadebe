"""kube-proxy 1.36's checks of a resolved configuration (pkg/proxy/apis/config/validation), each
problem as `field: what is wrong`, with the field named as the file names it."""

from __future__ import annotations

import ipaddress

from ..config import NFTABLES_LAYOUTS
from .model import LOCAL_MODES, NODEPORT_PRIMARY, SVCPROXY_MODES, KubeProxyConfiguration


def _cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True


def _host_port(field: str, text: str) -> list[str]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        return [f"{field}: {text!r} must be IP:port (e.g. 0.0.0.0:10256)"]
    problems = []
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        problems.append(f"{field}: {host!r} must be a valid IP")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        problems.append(f"{field}: {port!r} must be a valid port (1-65535)")
    return problems


def validate(c: KubeProxyConfiguration) -> list[str]:
    """Every problem in c (empty: usable)."""
    p: list[str] = []
    for name, bit in (("iptables.masqueradeBit", c.iptables_masquerade_bit),
                      ("nftables.masqueradeBit", c.nftables_masquerade_bit)):
        if not 0 <= bit <= 31:
            p.append(f"{name}: {bit} must be within the range [0, 31]")
    p += _conntrack(c)
    if not -1000 <= c.oom_score_adj <= 1000:
        p.append(f"oomScoreAdj: {c.oom_score_adj} must be within the range [-1000, 1000]")
    if c.mode not in ("", "iptables", "ipvs", "nftables", *SVCPROXY_MODES):
        p.append(f"mode: {c.mode!r} must be iptables, ipvs, nftables or blank (blank means iptables); "
                 f"svcproxy also has {', '.join(SVCPROXY_MODES)}")
    if c.client_connection.burst < 0:
        p.append(f"clientConnection.burst: {c.client_connection.burst} must be greater than or equal to 0")
    if c.config_sync_period <= 0:
        p.append("configSyncPeriod: must be greater than 0")
    if c.sync_period <= 0:
        p.append("syncPeriod: must be greater than 0")
    if c.min_sync_period < 0:
        p.append("minSyncPeriod: must be greater than or equal to 0")
    elif c.min_sync_period > c.sync_period:
        p.append("syncPeriod: must be greater than or equal to minSyncPeriod")
    try:
        ipaddress.ip_address(c.bind_address)
    except ValueError:
        p.append(f"bindAddress: {c.bind_address!r} is not a valid textual representation of an IP address")
    if c.healthz_bind_address:
        p += _host_port("healthzBindAddress", c.healthz_bind_address)
    if c.metrics_bind_address:  # kube-proxy checks it even when empty; empty turns it off here
        p += _host_port("metricsBindAddress", c.metrics_bind_address)
    p += _nodeport_addresses(c.node_port_addresses)
    p += _detect_local(c)
    if c.nftables_layout not in NFTABLES_LAYOUTS:
        p.append(f"nftables.layout: {c.nftables_layout!r} must be one of {', '.join(NFTABLES_LAYOUTS)}")
    if c.logging.format not in ("text", "json"):
        p.append(f"logging.format: {c.logging.format!r} must be text or json")
    if c.logging.verbosity < 0:
        p.append(f"logging.verbosity: {c.logging.verbosity} must be greater than or equal to 0")
    return p


def _conntrack(c: KubeProxyConfiguration) -> list[str]:
    t, p = c.conntrack, []
    for name, value in (("maxPerCore", t.max_per_core), ("min", t.min),
                        ("tcpEstablishedTimeout", t.tcp_established_timeout),
                        ("tcpCloseWaitTimeout", t.tcp_close_wait_timeout),
                        ("udpTimeout", t.udp_timeout), ("udpStreamTimeout", t.udp_stream_timeout)):
        if value is not None and value < 0:
            p.append(f"conntrack.{name}: {value:g} must be greater than or equal to 0")
    return p


def _nodeport_addresses(addresses: list[str]) -> list[str]:
    p = []
    for i, a in enumerate(addresses):
        if a == NODEPORT_PRIMARY:
            if i != 0 or len(addresses) != 1:
                p.append(f"nodePortAddresses[{i}]: can't use both 'primary' and CIDRs")
            break
        if not _cidr(a):
            p.append(f"nodePortAddresses[{i}]: {a!r} must be a valid CIDR (e.g. 192.168.0.0/24) or 'primary'")
    return p


def _detect_local(c: KubeProxyConfiguration) -> list[str]:
    mode, d = c.detect_local_mode, c.detect_local
    if mode not in LOCAL_MODES:
        return [f"detectLocalMode: {mode!r} is not supported: use one of "
                f"{', '.join(m for m in LOCAL_MODES if m)} (or leave it empty for ClusterCIDR)"]
    if mode == "BridgeInterface" and not d.bridge_interface:
        return ["detectLocal.bridgeInterface: must not be empty with detectLocalMode BridgeInterface"]
    if mode == "InterfaceNamePrefix" and not d.interface_name_prefix:
        return ["detectLocal.interfaceNamePrefix: must not be empty with detectLocalMode InterfaceNamePrefix"]
    if mode in ("", "ClusterCIDR") and d.cluster_cidrs:
        return _cluster_cidrs(d.cluster_cidrs)
    return []


def _cluster_cidrs(cidrs: list[str]) -> list[str]:
    bad = [f"clusterCIDR[{i}]: {x!r} must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)"
           for i, x in enumerate(cidrs) if not _cidr(x)]
    if bad:
        return bad
    pair = "must be either a single CIDR or a dual-stack pair of CIDRs (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)"
    if len(cidrs) > 2:
        return [f"clusterCIDR: {','.join(cidrs)} {pair}"]
    if len(cidrs) == 2:
        fams = {ipaddress.ip_network(x.strip(), strict=False).version for x in cidrs}
        if len(fams) != 2:
            return [f"clusterCIDR: {','.join(cidrs)} {pair}"]
    return []
