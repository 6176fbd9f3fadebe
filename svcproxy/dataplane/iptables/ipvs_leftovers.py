"""Removing what kube-proxy's ipvs mode left on a node (pkg/proxy/ipvs/cleanup.go), and nothing else.

ipvs mode is iptables-based and shares chain names with iptables mode (KUBE-SERVICES,
KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD, KUBE-PROXY-FIREWALL), so kube-proxy removes
these leftovers exactly when it removes iptables mode's: starting in another mode, and on
--cleanup. IptablesDataplane.cleanup() calls this first for the same reason.

What goes, in kube-proxy's order: the IPVS virtual services on kube-ipvs0's addresses (kube-proxy
flushes every virtual service; only these are known to be its own), the kube-ipvs0 dummy link,
its jumps (matched by kube-proxy's exact rule), its chains, then its ipsets (after the chains,
which reference them), IPv6 ones (KUBE-6-*) included. A chain, set or link of another name, or
a kube-ipvs0 that is not a dummy, stays.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..protocol import ApplyError
from .kernel import Iptables

log = logging.getLogger(__name__)

DUMMY_DEVICE = "kube-ipvs0"

# kube-proxy's iptablesJumpChain: (table, built-in chain, target, comment)
IPVS_JUMPS: tuple[tuple[str, str, str, str], ...] = (
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("filter", "INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
)
# kube-proxy's iptablesCleanupChains
IPVS_CHAINS: tuple[tuple[str, str], ...] = (
    ("nat", "KUBE-SERVICES"), ("nat", "KUBE-POSTROUTING"), ("nat", "KUBE-NODE-PORT"),
    ("nat", "KUBE-LOAD-BALANCER"), ("nat", "KUBE-MARK-MASQ"),
    ("filter", "KUBE-FORWARD"), ("filter", "KUBE-NODE-PORT"), ("filter", "KUBE-PROXY-FIREWALL"),
    ("filter", "KUBE-SOURCE-RANGES-FIREWALL"), ("filter", "KUBE-IPVS-FILTER"), ("filter", "KUBE-IPVS-OUT-FILTER"),
)
# chains iptables mode has too: when one is still in use, iptables mode's own cleanup (right after)
# removes it with its jumps
SHARED_CHAINS = frozenset({"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-FORWARD",
                           "KUBE-PROXY-FIREWALL"})
# kube-proxy's ipsetInfo names; the IPv6 proxier's are KUBE-6-<rest>
IPVS_IPSETS: tuple[str, ...] = (
    "KUBE-LOOP-BACK", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL", "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-FW", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP", "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
)


def ipvs_ipset_names() -> tuple[str, ...]:
    """Every set name kube-proxy's ipvs mode creates, IPv4 and IPv6."""
    return (*IPVS_IPSETS, *(s.replace("KUBE-", "KUBE-6-", 1) for s in IPVS_IPSETS))


def ipsets_to_destroy(existing: Iterable[str]) -> list[str]:
    """The existing sets that are kube-proxy ipvs mode's, in kube-proxy's order."""
    have = set(existing)
    return [s for s in ipvs_ipset_names() if s in have]


@dataclass(frozen=True)
class VirtualService:
    protocol: str  # TCP, UDP, SCTP
    address: str
    port: int

    @property
    def ipvsadm_args(self) -> list[str]:
        flag = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}[self.protocol]
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return ["-D", flag, f"{addr}:{self.port}"]


def parse_ip_vs(text: str) -> list[VirtualService]:
    """The virtual services in /proc/net/ip_vs (addresses in hex, IPv6 in brackets); firewall-mark
    services and real servers are skipped."""
    out: list[VirtualService] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] not in ("TCP", "UDP", "SCTP"):
            continue
        addr, _, port = words[1].rpartition(":")
        if addr.startswith("["):
            ip = str(ipaddress.IPv6Address(addr[1:-1]))
        else:
            ip = str(ipaddress.IPv4Address(int(addr, 16)))
        out.append(VirtualService(words[0], ip, int(port, 16)))
    return out


def services_on(services: Sequence[VirtualService], addresses: Iterable[str]) -> list[VirtualService]:
    """The virtual services whose address is one of kube-ipvs0's (ClusterIPs, external and LB IPs)."""
    own = {str(ipaddress.ip_address(a)) for a in addresses}
    return [s for s in services if s.address in own]


class _Runner:
    """Commands in the namespace (or this one)."""

    def __init__(self, netns: str | None) -> None:
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.ip = ["ip", *(["-n", netns] if netns else [])]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str] | None:
        """None when the tool is not installed."""
        try:
            return subprocess.run([*self.prefix, *argv], capture_output=True, text=True)
        except FileNotFoundError:
            return None


def dummy_addresses(links: list[dict]) -> tuple[list[str] | None, str]:
    """From `ip -d -j addr show dev kube-ipvs0`: its addresses when it is a dummy link (kube-proxy
    deletes only that), else None and why it stays ("" when there is no such link)."""
    if not links:
        return None, ""
    kind = links[0].get("linkinfo", {}).get("info_kind", "")
    if kind != "dummy":
        return None, (f"error deleting dummy device created by ipvs proxier: {DUMMY_DEVICE}: expect dummy device, "
                      f"got device type: {kind or 'none'} (left in place)")
    return [a["local"] for a in links[0].get("addr_info", [])], ""


def _dummy_addresses(r: _Runner, errors: list[str]) -> list[str] | None:
    p = subprocess.run([*r.ip, "-d", "-j", "addr", "show", "dev", DUMMY_DEVICE], capture_output=True, text=True)
    if p.returncode:
        return None  # no such link
    addresses, why = dummy_addresses(json.loads(p.stdout or "[]"))
    if why:
        errors.append(why)
    return addresses


def _remove_virtual_services(r: _Runner, addresses: list[str], lines: list[str], errors: list[str]) -> None:
    cat = r.run("cat", "/proc/net/ip_vs")
    if cat is None or cat.returncode:
        return  # no IPVS in this kernel: nothing can be there
    stale = services_on(parse_ip_vs(cat.stdout), addresses)
    if not stale:
        return
    if shutil.which("ipvsadm") is None:
        errors.append(f"{len(stale)} IPVS virtual services of kube-proxy's ipvs mode remain: install ipvsadm "
                      "(apt-get install ipvsadm) and run `svcproxy cleanup` again")
        return
    for s in stale:
        p = r.run("ipvsadm", *s.ipvsadm_args)
        if p is not None and p.returncode == 0:
            lines.append(f"deleted IPVS virtual service {s.protocol} {s.address}:{s.port}")
        else:
            errors.append(f"deleting IPVS virtual service {s.address}:{s.port}: {p.stderr.strip() if p else ''}")


def _cleanup_chains(ipt: Iptables, lines: list[str], errors: list[str]) -> None:
    """kube-proxy's cleanupIptablesLeftovers for one family: its jumps, then flush and delete its
    chains; a shared chain still in use is left to iptables mode's cleanup."""
    present = {t: ipt.chains(t) for t in ("nat", "filter")}
    for table, chain, target, comment in IPVS_JUMPS:
        if target not in present[table]:
            continue  # no chain, no jump to it
        while ipt.run("-t", table, "-D", chain, "-m", "comment", "--comment", comment, "-j", target,
                      check=False).returncode == 0:
            lines.append(f"IPv{ipt.family}: deleted ipvs mode's jump {table}/{chain} -> {target}")
    mine = [(t, c) for t, c in IPVS_CHAINS if c in present[t]]
    ipvs_only = [(t, c) for t, c in mine if c not in SHARED_CHAINS]
    for t, c in mine:
        ipt.run("-t", t, "-F", c, check=False)
    for t, c in mine:
        p = ipt.run("-t", t, "-X", c, check=False)
        if p.returncode == 0:
            if (t, c) in ipvs_only:
                lines.append(f"IPv{ipt.family}: deleted ipvs mode's chain {t}/{c}")
        elif (t, c) in ipvs_only:
            errors.append(f"IPv{ipt.family}: deleting ipvs mode's chain {t}/{c}: {p.stderr.strip()}")


def _destroy_ipsets(r: _Runner, lines: list[str], errors: list[str]) -> None:
    listing = r.run("ipset", "list", "-n")
    if listing is None or listing.returncode:
        return  # no ipset tool (or no ip_set in the kernel): kube-proxy skips this step too
    for name in ipsets_to_destroy(listing.stdout.split()):
        p = r.run("ipset", "destroy", name)
        if p is not None and p.returncode == 0:
            lines.append(f"destroyed ipvs mode's ipset {name}")
        else:
            errors.append(f"error removing ipset {name}: {p.stderr.strip() if p else ''}")


def cleanup_ipvs_leftovers(netns: str | None = None, families: Sequence[int] = (4, 6)) -> list[str]:
    """Remove kube-proxy ipvs mode's objects (see the module docstring); returns a line per thing
    removed. Every step is tried; ApplyError lists what could not be removed."""
    r = _Runner(netns)
    lines: list[str] = []
    errors: list[str] = []
    addresses = _dummy_addresses(r, errors)
    if addresses is not None:
        _remove_virtual_services(r, addresses, lines, errors)
        p = subprocess.run([*r.ip, "link", "delete", DUMMY_DEVICE], capture_output=True, text=True)
        if p.returncode == 0:
            lines.append(f"deleted ipvs mode's dummy interface {DUMMY_DEVICE}")
        else:
            errors.append(f"error deleting dummy device created by ipvs proxier: {DUMMY_DEVICE}: {p.stderr.strip()}")
    for family in families:
        ipt = Iptables(family, netns)
        try:
            _cleanup_chains(ipt, lines, errors)
        except ApplyError as e:  # no ip6tables, say: nothing of that family to remove
            log.debug("ipvs leftovers, IPv%d: %s", family, e)
    _destroy_ipsets(r, lines, errors)
    for line in lines:
        log.info("%s", line)
    if errors:
        raise ApplyError("removing ipvs mode's leftovers: " + "; ".join(errors))
    return lines


__all__ = ["DUMMY_DEVICE", "IPVS_CHAINS", "IPVS_IPSETS", "IPVS_JUMPS", "VirtualService", "cleanup_ipvs_leftovers",
           "dummy_addresses", "ipsets_to_destroy", "ipvs_ipset_names", "parse_ip_vs", "services_on"]
