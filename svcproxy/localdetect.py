"""kube-proxy's local-traffic detector: which packets count as coming from a pod on this node.

One pure answer for (NodeConfig, family) that every renderer, the userspace proxy and the lab
share, as kube-proxy's getLocalDetectors (cmd/kube-proxy/app/server_linux.go) builds one
LocalTrafficDetector per family (pkg/proxy/util/localdetector.go):

- ClusterCIDR: the first --cluster-cidr of the family (`-s CIDR`, `ip saddr CIDR`);
- NodeCIDR: the first of the Node's spec.podCIDRs of the family (same matches);
- BridgeInterface: the input interface (`-i br0`, `iifname "br0"`), for both families;
- InterfaceNamePrefix: any input interface named prefix* (`-i veth+`, `iifname "veth*"`).

Without its input (no CIDR of the family), the detector is kube-proxy's no-op one: nothing is
local, and the rules that need a detector are left out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import NodeConfig, ip_family

NOOP, CIDR, INTERFACE, PREFIX = "", "cidr", "interface", "interface-prefix"


@dataclass(frozen=True, slots=True)
class LocalDetector:
    """kind: "" (no-op), "cidr", "interface" or "interface-prefix"; value: the CIDR, the
    interface name, or the interface name prefix."""

    kind: str = NOOP
    value: str = ""

    @property
    def implemented(self) -> bool:
        """kube-proxy's IsImplemented: False for the no-op detector (write no rule that needs it)."""
        return self.kind != NOOP

    def iptables(self, negate: bool = False) -> str:
        """IfLocal / IfNotLocal, as iptables-save prints them: `-s 10.0.0.0/8`, `! -i br0`,
        `-i veth+`; "" for the no-op detector."""
        if self.kind == NOOP:
            return ""
        bang = "! " if negate else ""
        if self.kind == CIDR:
            return f"{bang}-s {self.value}"
        return f"{bang}-i {self.value}{'+' if self.kind == PREFIX else ''}"

    def nft(self, negate: bool = False) -> str:
        """IfLocalNFT / IfNotLocalNFT: `ip saddr 10.0.0.0/8`, `ip6 saddr != fd00::/48`,
        `iifname "br0"`, `iifname != "veth*"` (quoted, as `nft list` prints them); ""
        for the no-op detector."""
        if self.kind == NOOP:
            return ""
        op = "!= " if negate else ""
        if self.kind == CIDR:
            return f"{'ip6' if ip_family(self.value) == 6 else 'ip'} saddr {op}{self.value}"
        return f'iifname {op}"{self.value}{"*" if self.kind == PREFIX else ""}"'

    def is_local(self, source: str, in_interface: str | None) -> bool | None:
        """Whether a packet from `source` arriving on `in_interface` is pod traffic; None when
        the detector needs the interface and it is not known."""
        if self.kind == NOOP:
            return False
        if self.kind == CIDR:
            return ipaddress.ip_address(source) in ipaddress.ip_network(self.value, strict=False)
        if in_interface is None:
            return None
        if self.kind == PREFIX:
            return in_interface.startswith(self.value)
        return in_interface == self.value


def first_of_family(cidrs: tuple[str, ...], family: int) -> str:
    """kube-proxy's MapCIDRsByIPFamily(...)[family][0]: the first CIDR of the family, or ""."""
    return next((c for c in cidrs if ip_family(c) == family), "")


def local_detector(cfg: NodeConfig, family: int | None = None) -> LocalDetector:
    """The detector of one family (cfg.ip_family by default), per cfg.detect_local_mode."""
    fam = cfg.ip_family if family is None else family
    mode = cfg.detect_local_mode
    if mode in ("ClusterCIDR", "NodeCIDR"):
        cidr = first_of_family(cfg.cluster_cidrs if mode == "ClusterCIDR" else cfg.node_pod_cidrs, fam)
        return LocalDetector(CIDR, cidr) if cidr else LocalDetector()
    if mode == "BridgeInterface" and cfg.bridge_interface:
        return LocalDetector(INTERFACE, cfg.bridge_interface)
    if mode == "InterfaceNamePrefix" and cfg.interface_name_prefix:
        return LocalDetector(PREFIX, cfg.interface_name_prefix)
    return LocalDetector()


def missing_input(cfg: NodeConfig) -> str:
    """Why the primary family's detector is a no-op ("" when it is not), worded as kube-proxy
    logs it at start."""
    if local_detector(cfg).implemented:
        return ""
    if cfg.detect_local_mode == "ClusterCIDR":
        return (f"Detect-local-mode set to ClusterCIDR, but no cluster CIDR specified for primary IP family "
                f"(IPv{cfg.ip_family}): no traffic counts as pod traffic")
    if cfg.detect_local_mode == "NodeCIDR":
        return (f"Detect-local-mode set to NodeCIDR, but no PodCIDR defined at node for primary IP family "
                f"(IPv{cfg.ip_family}; podCIDRs {list(cfg.node_pod_cidrs)}): no traffic counts as pod traffic")
    return ""
