"""kube-proxy's KubeProxyConfiguration, in its internal form: the one typed settings object that
flags and a config file both fill, and that run, render and trace read.

Defaults are kube-proxy 1.36's (pkg/proxy/apis/config/v1alpha1/defaults.go). The internal form
is the file's after conversion: sync periods and masqueradeAll are top-level, taken from the
active mode's section (see v1alpha1.py), as kube-proxy's conversion does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"

# kube-proxy's modes on Linux, "" meaning its default (iptables); svcproxy's own after them
KUBE_PROXY_MODES = ("", "iptables", "ipvs", "nftables")
SVCPROXY_MODES = ("userspace", "ebpf")
LOCAL_MODES = ("", "ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
NODEPORT_PRIMARY = "primary"
HEALTHZ_PORT, METRICS_PORT = 10256, 10249  # kube-proxy's ports.ProxyHealthzPort, ports.ProxyStatusPort
# modes whose settings come from the file's nftables section (ebpf runs the nftables maps layout)
NFTABLES_SECTION_MODES = ("nftables", "ebpf")


def section_of(mode: str) -> str:
    """The file section (iptables, ipvs, nftables) that gives a mode its sync periods,
    masqueradeAll and masqueradeBit: kube-proxy's conversion, ebpf reading nftables'."""
    if mode in NFTABLES_SECTION_MODES:
        return "nftables"
    return "ipvs" if mode == "ipvs" else "iptables"


@dataclass
class ClientConnection:
    kubeconfig: str = ""
    accept_content_types: str = ""
    content_type: str = "application/vnd.kubernetes.protobuf"
    qps: float = 5.0
    burst: int = 10


@dataclass
class Conntrack:
    """conntrack sysctls kube-proxy sets at start (seconds; None/0 leaves the kernel's value)."""

    max_per_core: int | None = 32768
    min: int | None = 131072
    tcp_established_timeout: float | None = 86400.0
    tcp_close_wait_timeout: float | None = 3600.0
    tcp_be_liberal: bool = False
    udp_timeout: float = 0.0
    udp_stream_timeout: float = 0.0


@dataclass
class IPVS:
    """ipvs mode's settings: accepted and kept (for --write-config-to), used by nothing here."""

    sync_period: float = 30.0
    min_sync_period: float = 0.0
    scheduler: str = ""
    exclude_cidrs: list[str] = field(default_factory=list)
    strict_arp: bool = False
    tcp_timeout: float = 0.0
    tcp_fin_timeout: float = 0.0
    udp_timeout: float = 0.0


@dataclass
class Logging:
    format: str = "text"
    flush_frequency: float = 5.0
    verbosity: int = 0
    vmodule: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DetectLocal:
    bridge_interface: str = ""
    interface_name_prefix: str = ""
    cluster_cidrs: list[str] = field(default_factory=list)


@dataclass
class KubeProxyConfiguration:
    """Field for field kube-proxy's internal config.KubeProxyConfiguration (Linux parts)."""

    feature_gates: dict[str, bool] = field(default_factory=dict)
    client_connection: ClientConnection = field(default_factory=ClientConnection)
    logging: Logging = field(default_factory=Logging)
    hostname_override: str = ""
    bind_address: str = "0.0.0.0"
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    bind_address_hard_fail: bool = False
    enable_profiling: bool = False
    show_hidden_metrics_for_version: str = ""
    mode: str = ""
    iptables_masquerade_bit: int = 14
    iptables_localhost_nodeports: bool = True
    nftables_masquerade_bit: int = 14
    ipvs: IPVS = field(default_factory=IPVS)
    winkernel: dict[str, Any] = field(default_factory=dict)
    detect_local_mode: str = ""
    detect_local: DetectLocal = field(default_factory=DetectLocal)
    node_port_addresses: list[str] = field(default_factory=list)
    masquerade_all: bool = False
    oom_score_adj: int = -999
    conntrack: Conntrack = field(default_factory=Conntrack)
    config_sync_period: float = 900.0
    sync_period: float = 30.0
    min_sync_period: float = 1.0
    port_range: str = ""
    windows_run_as_service: bool = False
    # svcproxy's own: the nftables table layout (nftables.layout in the file)
    nftables_layout: str = "kube-proxy"

    @property
    def masquerade_bit(self) -> int:
        """The active mode's mark bit: kube-proxy's nftables proxier reads nftables.masqueradeBit,
        every other mode iptables.masqueradeBit (so --iptables-masquerade-bit is iptables-only)."""
        return self.nftables_masquerade_bit if self.mode in NFTABLES_SECTION_MODES else self.iptables_masquerade_bit
