"""What a node knows about itself: the inputs besides the cluster objects that rendering needs.

Rendering is a pure function of (state, NodeConfig). The daemon fills NodeConfig from flags,
a KubeProxyConfiguration file and the kernel; `render` fills it from flags alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

DEFAULT_MASQUERADE_BIT = 14


def ip_family(address: str) -> int:
    """4 or 6 for an address or CIDR string."""
    return 6 if ":" in address else 4


def nodeport_cidrs(addresses: Sequence[str], node_ips: Sequence[str], family: int
                   ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """kube-proxy's NodePortAddresses for one family: "primary" becomes the family's first
    node IP as a /32 or /128 (server.go; a loopback one is skipped), the other family's CIDRs
    are dropped, and nothing left means all: 0.0.0.0/0 or ::/0 (NewNodePortAddresses)."""
    if list(addresses) == ["primary"]:
        ips = [ip for ip in node_ips if ip_family(ip) == family][:1]
        addresses = [ip for ip in ips if not ipaddress.ip_address(ip).is_loopback]
    nets = tuple(ipaddress.ip_network(a, strict=False) for a in addresses if a != "primary" and ip_family(a) == family)
    return nets or (ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0"),)


def format_endpoint(ip: str, port: int) -> str:
    """ip:port as kube-proxy prints it: IPv6 in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


NFTABLES_LAYOUTS = ("kube-proxy", "maps")
DETECT_LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")


@dataclass(frozen=True)
class NodeConfig:
    hostname: str = "test-node"
    ip_family: int = 4
    cluster_cidrs: tuple[str, ...] = ()
    node_ips: tuple[str, ...] = ()  # primary address per family
    local_addresses: tuple[str, ...] = ()  # other addresses on this node's interfaces
    nodeport_addresses: tuple[str, ...] = ()  # CIDRs or "primary"; empty = every local address
    masquerade_all: bool = False
    localhost_nodeports: bool = True
    masquerade_bit: int = DEFAULT_MASQUERADE_BIT
    zone: str = ""  # this node's topology.kubernetes.io/zone label
    node_labels: tuple[tuple[str, str], ...] = field(default=())
    # nftables table layout: "kube-proxy" (upstream's names and chains) or "maps" (endpoint
    # changes are data-only map elements; see docs/nftables-layouts.md)
    nftables_layout: str = "kube-proxy"
    # Local-traffic detection (kube-proxy's --detect-local-mode): which packets count as coming
    # from a pod. ClusterCIDR uses cluster_cidrs; NodeCIDR the Node's spec.podCIDRs
    # (node_pod_cidrs); BridgeInterface the input interface bridge_interface; InterfaceNamePrefix
    # any input interface named interface_name_prefix*. Without its input, nothing is local.
    detect_local_mode: str = "ClusterCIDR"
    node_pod_cidrs: tuple[str, ...] = ()
    bridge_interface: str = ""
    interface_name_prefix: str = ""
    # net.netfilter.nf_conntrack_tcp_be_liberal is set: the kernel marks only out-of-window RSTs
    # INVALID, so (as kube-proxy) no INVALID drop rule is written. Read from the kernel at start.
    conntrack_tcp_be_liberal: bool = False
    # ebpf mode: the cgroup v2 directory whose processes' sockets the BPF programs balance
    # ("": the root of the hierarchy, every process on the node)
    bpf_cgroup: str = ""
    # iptables mode: the nfacct objects that exist (kube-proxy's ct_state_invalid_dropped_pkts,
    # localhost_nps_accepted_pkts); a rule counts into one only when it is there
    nfacct_counters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ip_family not in (4, 6):
            raise ValueError(f"ip family must be 4 or 6, got {self.ip_family}")
        if not 0 <= self.masquerade_bit <= 31:
            raise ValueError(f"masquerade bit must be 0-31, got {self.masquerade_bit}")
        if self.nftables_layout not in NFTABLES_LAYOUTS:
            raise ValueError(f"nftables layout must be one of {', '.join(NFTABLES_LAYOUTS)}, "
                             f"got {self.nftables_layout!r}")
        if self.detect_local_mode not in DETECT_LOCAL_MODES:
            raise ValueError(f"detect-local mode must be one of {', '.join(DETECT_LOCAL_MODES)}, "
                             f"got {self.detect_local_mode!r}")
        # kube-proxy's validateDetectLocalConfiguration: the interface modes need their name
        if self.detect_local_mode == "BridgeInterface" and not self.bridge_interface:
            raise ValueError("detect-local mode BridgeInterface needs the bridge interface "
                             "(--pod-bridge-interface, detectLocal.bridgeInterface): must not be empty")
        if self.detect_local_mode == "InterfaceNamePrefix" and not self.interface_name_prefix:
            raise ValueError("detect-local mode InterfaceNamePrefix needs the interface name prefix "
                             "(--pod-interface-name-prefix, detectLocal.interfaceNamePrefix): must not be empty")

    @property
    def family_name(self) -> str:
        return f"IPv{self.ip_family}"

    @cached_property
    def family_cluster_cidrs(self) -> tuple[str, ...]:
        return tuple(c for c in self.cluster_cidrs if ip_family(c) == self.ip_family)

    @cached_property
    def primary_ip(self) -> str:
        for ip in self.node_ips:
            if ip_family(ip) == self.ip_family:
                return ip
        return ""

    @cached_property
    def local_ips(self) -> tuple[str, ...]:
        """Every address of this family that the node owns, loopback included, deduplicated."""
        loop = "127.0.0.1" if self.ip_family == 4 else "::1"
        ips = [*self.node_ips, *self.local_addresses, loop]
        return tuple(dict.fromkeys(ip for ip in ips if ip_family(ip) == self.ip_family))

    def is_local(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        if addr.is_loopback:
            return True
        return any(ipaddress.ip_address(x) == addr for x in self.local_ips)

    @cached_property
    def nodeport_ips(self) -> tuple[str, ...] | None:
        """The addresses NodePorts answer on; None means every local address (addrtype LOCAL).

        Mirrors kube-proxy: an empty --nodeport-addresses means all; "primary" means the node
        IP of this family; CIDRs select matching local addresses (a 0.0.0.0/0 or ::/0 means all,
        and so does naming no CIDR of this family at all).
        """
        if not self.nodeport_addresses:
            return None
        nets = nodeport_cidrs(self.nodeport_addresses, self.node_ips, self.ip_family)
        if any(net.prefixlen == 0 for net in nets):
            return None
        out = [ip for net in nets for ip in self.local_ips if ipaddress.ip_address(ip) in net]
        return tuple(dict.fromkeys(out))
