"""The node setup kube-proxy does at start (and all that `--init-only` does): conntrack sysctls,
route_localnet for localhost NodePorts, the OOM score.

Planning is pure (what kube-proxy 1.36 would write, from plain settings and the CPU count);
applying reads the current values and writes only what differs, under a proc and sys root so
tests can point it at a directory. References: pkg/proxy/conntrack/sysctls.go (SetSysctls),
pkg/proxy/iptables/proxier.go (NewProxier), cmd/kube-proxy/app/server.go (OOM score).

Which of these are per network namespace (Linux 6.x): the conntrack timeouts and
tcp_be_liberal, and route_localnet, are; nf_conntrack_max is the init namespace's and read-only
in any other; the hashsize is a module parameter, one for the whole host.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import nodeport_cidrs
from ..proxyconfig.model import Conntrack

log = logging.getLogger("svcproxy.runtime.node_setup")

PROC = Path("/proc")
SYS = Path("/sys")
# kube-proxy caps maxPerCore * CPUs here, to avoid excessive memory use on machines with many cores
CONNTRACK_MAX_LIMIT = 1048576
HASHSIZE = "module/nf_conntrack/parameters/hashsize"  # under /sys
ROUTE_LOCALNET = "net/ipv4/conf/all/route_localnet"  # kube-proxy's sysctlRouteLocalnet
OOM_SCORE_ADJ_RANGE = (-1000, 1000)
# modes that program netfilter; userspace mode proxies sockets itself and needs none of this
NETFILTER_MODES = ("iptables", "nftables", "ebpf")  # ebpf runs the nftables maps layout too


# KubeProxyConntrackConfiguration with kube-proxy's defaults, durations in seconds: the
# configuration's own type (None or 0 leaves the kernel's value as it is, as kube-proxy does)
ConntrackSettings = Conntrack


@dataclass(frozen=True)
class Write:
    """One value to put in place: a sysctl (path under /proc/sys, kube-proxy's slash form) or,
    with module=True, a module parameter under /sys. raise_only: written only when the current
    value is smaller (the conntrack hashsize). setting names the config field that asked for it,
    so an error can say what to change."""

    path: str
    value: int
    setting: str
    module: bool = False
    raise_only: bool = False


class NodeSetupError(RuntimeError):
    """A write kube-proxy treats as fatal failed; `setting` is the config field (and flag) behind it."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


_MAX = "conntrack.maxPerCore / conntrack.min (--conntrack-max-per-core, --conntrack-min)"


# -- planning (pure) ---------------------------------------------------------------------------
def conntrack_max(settings: ConntrackSettings, ncpu: int) -> int:
    """kube-proxy's getConntrackMax: maxPerCore * CPUs (capped at 1Mi), at least min; 0 (leave
    nf_conntrack_max alone) when maxPerCore is unset or 0. The cap is checked before min, as
    kube-proxy does."""
    if not settings.max_per_core or settings.max_per_core <= 0:
        return 0
    floor = settings.min or 0
    scaled = settings.max_per_core * ncpu
    if scaled > CONNTRACK_MAX_LIMIT:
        return CONNTRACK_MAX_LIMIT
    return scaled if scaled > floor else floor


def _seconds(value: float | None) -> int | None:
    """Go's int(d / time.Second) for d > 0: truncated whole seconds; None when not to be set."""
    return int(value) if value is not None and value > 0 else None


def conntrack_writes(settings: ConntrackSettings, ncpu: int) -> list[Write]:
    """The writes kube-proxy's SetSysctls makes, in its order."""
    writes: list[Write] = []
    maximum = conntrack_max(settings, ncpu)
    if maximum > 0:
        writes.append(Write("net/netfilter/nf_conntrack_max", maximum, _MAX))
        writes.append(Write(HASHSIZE, maximum // 4, _MAX, module=True, raise_only=True))
    for name, value, setting in (
        ("tcp_timeout_established", _seconds(settings.tcp_established_timeout),
         "conntrack.tcpEstablishedTimeout (--conntrack-tcp-timeout-established)"),
        ("tcp_timeout_close_wait", _seconds(settings.tcp_close_wait_timeout),
         "conntrack.tcpCloseWaitTimeout (--conntrack-tcp-timeout-close-wait)"),
        ("tcp_be_liberal", 1 if settings.tcp_be_liberal else None,
         "conntrack.tcpBeLiberal (--conntrack-tcp-be-liberal)"),
        ("udp_timeout", _seconds(settings.udp_timeout), "conntrack.udpTimeout (--conntrack-udp-timeout)"),
        ("udp_timeout_stream", _seconds(settings.udp_stream_timeout),
         "conntrack.udpStreamTimeout (--conntrack-udp-timeout-stream)"),
    ):
        if value is not None:
            writes.append(Write(f"net/netfilter/nf_conntrack_{name}", value, setting))
    return writes


def nodeport_addresses_contain_ipv4_loopback(nodeport_addresses: Sequence[str], node_ips: Sequence[str]) -> bool:
    """kube-proxy's NodePortAddresses.ContainsIPv4Loopback for the IPv4 proxier."""
    loopback = ipaddress.ip_address("127.0.0.0")
    return any(c.network_address.is_loopback or loopback in c
               for c in nodeport_cidrs(nodeport_addresses, node_ips, 4))


def route_localnet_wanted(mode: str, families: Sequence[int], localhost_nodeports: bool,
                          nodeport_addresses: Sequence[str] = (), node_ips: Sequence[str] = ()) -> bool:
    """Whether kube-proxy sets route_localnet=1: iptables mode, IPv4 proxied, localhostNodePorts
    on and the NodePort addresses taking in 127.0.0.0/8. nftables mode never does (it has no
    localhost NodePorts), nor does the IPv6 proxier."""
    return (mode == "iptables" and 4 in families and localhost_nodeports
            and nodeport_addresses_contain_ipv4_loopback(nodeport_addresses, node_ips))


def route_localnet_writes(mode: str, families: Sequence[int], localhost_nodeports: bool,
                          nodeport_addresses: Sequence[str] = (), node_ips: Sequence[str] = ()) -> list[Write]:
    if not route_localnet_wanted(mode, families, localhost_nodeports, nodeport_addresses, node_ips):
        return []
    return [Write(ROUTE_LOCALNET, 1, "iptables.localhostNodePorts (--iptables-localhost-nodeports)")]


def cpu_count(sys_root: Path = SYS) -> int:
    """Online logical CPUs from /sys (kube-proxy reads the topology there rather than the
    process's CPU affinity, kubernetes#99225); os.cpu_count() when /sys cannot tell."""
    try:
        text = (sys_root / "devices/system/cpu/online").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n or os.cpu_count() or 1


# -- applying (I/O) ----------------------------------------------------------------------------
def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _hint(e: OSError, w: Write) -> str:
    """What to do about a refused write, beside kube-proxy's own error text."""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = ("; nf_conntrack_max is writable only in the host network namespace (maxPerCore 0 leaves it "
                 "as it is)") if w.path.endswith("nf_conntrack_max") else ""
        return (f" ({w.setting}: svcproxy needs root with write access to /proc/sys and /sys: a privileged "
                f"container, or the --init-only init container{where})")
    if e.errno == errno.ENOENT:
        return f" ({w.setting}: the kernel has no such setting; is the nf_conntrack module loaded?)"
    return f" ({w.setting})"


def apply_writes(writes: Sequence[Write], proc: Path = PROC, sys: Path = SYS) -> list[str]:
    """Write each value that differs from the kernel's (a raise_only one only when the kernel's
    is smaller), as kube-proxy does; returns a line per change. The first failure raises
    NodeSetupError with kube-proxy's message and the setting to change."""
    done: list[str] = []
    for w in writes:
        path = (sys / w.path) if w.module else (proc / "sys" / w.path)
        current = _read_int(path)
        if w.raise_only:
            if current is None:
                raise NodeSetupError(f"could not set conntrack parameters from kube-proxy configuration: "
                                     f"cannot read {path} ({w.setting})", w.setting)
            if current >= w.value:
                continue
        elif current == w.value:
            continue
        try:
            path.write_text(str(w.value))
        except OSError as e:
            reason = f"open {path}: {os.strerror(e.errno or 0).lower()}"
            what = (f"could not set conntrack parameters from kube-proxy configuration: {reason}"
                    if w.module or w.path.startswith("net/netfilter/")
                    else f"unable to create proxier: can't set sysctl {w.path} to {w.value}: {reason}")
            raise NodeSetupError(what + _hint(e, w), w.setting) from e
        name = f"conntrack hashsize ({path})" if w.module else w.path.replace("/", ".")
        done.append(f"set {name} to {w.value} (was {current if current is not None else 'unreadable'})")
    return done


def apply_oom_score_adj(value: int | None, proc: Path = PROC) -> str | None:
    """Set this process's OOM score adjustment as kube-proxy's Run does: a failure is only
    logged (at debug: kube-proxy logs it at V(2)); None leaves it alone. Returns the log line."""
    if value is None:
        return None
    lo, hi = OOM_SCORE_ADJ_RANGE
    if not lo <= value <= hi:
        raise ValueError(f"oomScoreAdj (--oom-score-adj): must be within the range [{lo}, {hi}], got {value}")
    path = proc / "self" / "oom_score_adj"
    try:
        path.write_text(str(value))
    except OSError as e:
        log.debug("Failed to apply OOMScore: write %s: %s", path, e)
        return None
    return f"set oom_score_adj to {value}"


_KERNEL_BE_LIBERAL = "net/netfilter/nf_conntrack_tcp_be_liberal"


def init_node(mode: str, families: Sequence[int], conntrack: ConntrackSettings | None, *,
              localhost_nodeports: bool = True, nodeport_addresses: Sequence[str] = (),
              node_ips: Sequence[str] = (), ncpu: int | None = None, cleanup_leftovers: bool = False,
              proc: Path = PROC, sys: Path = SYS) -> list[str]:
    """Everything kube-proxy's --init-only does to the node, in its order: (with
    cleanup_leftovers) the other modes' leftovers removed (platformCleanup: best effort, failures
    logged), the conntrack sysctls (platformSetup), then route_localnet (the iptables proxier's
    constructor). Returns a line per thing done, for the log; raises NodeSetupError naming the
    setting when a write fails. The daemon passes cleanup_leftovers=False: its syncers remove the
    leftovers just before their first sync.

    conntrack None skips the conntrack sysctls. userspace mode does neither: it NATs nothing
    (conntrack limits and timeouts only shape the NAT modes' flows, and a refused sysctl is
    fatal in kube-proxy, which would stop the mode meant for hosts where netfilter cannot be
    programmed) and its NodePorts are real sockets on 127.0.0.1, which need no route_localnet."""
    lines: list[str] = []
    if cleanup_leftovers:
        from ..config import NodeConfig
        from ..dataplane import cleanup_other_modes

        cleanup_other_modes(mode, NodeConfig())
        lines.append(f"removed what modes other than {mode} left (a failure there is logged, not fatal)")
    if mode not in NETFILTER_MODES:
        return [*lines, f"{mode} mode: no conntrack sysctls or route_localnet needed"]
    if conntrack is not None:
        n = ncpu if ncpu is not None else cpu_count(sys)
        writes = conntrack_writes(conntrack, n)
        lines += apply_writes(writes, proc, sys)
        if not writes:
            lines.append("conntrack settings: every kernel value left as it is")
    rl = route_localnet_writes(mode, families, localhost_nodeports, nodeport_addresses, node_ips)
    if rl:
        log.info("Setting route_localnet=1 to allow node-ports on localhost; to change this either disable "
                 "iptables.localhostNodePorts (--iptables-localhost-nodeports) or set nodePortAddresses "
                 "(--nodeport-addresses) to filter loopback addresses")
        changed = apply_writes(rl, proc, sys)
        lines += changed or [f"{ROUTE_LOCALNET.replace('/', '.')} already 1 (NodePorts answer on 127.0.0.1)"]
    if mode == "iptables" and _read_int(proc / "sys" / _KERNEL_BE_LIBERAL):
        # kube-proxy then leaves out its DROP of INVALID packets; svcproxy still installs it
        lines.append("nf_conntrack_tcp_be_liberal is set")
    return lines


__all__ = ["CONNTRACK_MAX_LIMIT", "ConntrackSettings", "NodeSetupError", "Write", "apply_oom_score_adj",
           "apply_writes", "conntrack_max", "conntrack_writes", "cpu_count", "init_node",
           "nodeport_addresses_contain_ipv4_loopback", "route_localnet_wanted", "route_localnet_writes"]

