"""The proxy on every lab node: `svcproxy run` inside the node's namespace, and how to tell that
it has programmed what the manifests say (the node's live ruleset names the right endpoints).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ..config import NodeConfig
from ..model.load import load_paths
from ..state import build_state
from . import netns
from .plan import CLUSTER_CIDR, CLUSTER_CIDR6, LabError, NodeSpec

HEALTHZ_PORT = 10256
METRICS_PORT = 10249
MIN_SYNC_PERIOD = "100ms"  # the lab shows changes followed at once; kube-proxy's default is 1s
RULES_MARKER = {"iptables": "KUBE-SERVICES", "nftables": "table ip kube-proxy"}  # present once synced
USERSPACE_IFNAME = "svcproxy0"  # userspace mode's interface holding the service addresses


def svcproxy_argv() -> list[str]:
    """How to start this very svcproxy (the venv's script, else through the interpreter)."""
    script = Path(sys.executable).with_name("svcproxy")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from svcproxy.cli import main; sys.argv[0] = 'svcproxy'; main()"]


def run_argv(node: NodeSpec, mode: str, manifests: Path, nftables_layout: str = "kube-proxy") -> list[str]:
    """`svcproxy run` for one node, fed by the lab's manifest directory."""
    layout = ["--nftables-layout", nftables_layout] if mode == "nftables" else []
    # a dual-stack node: one daemon, both families (a node IP and a cluster CIDR per family)
    # a single-stack node: IPv4 alone (run's default would add IPv6 wherever the host can)
    dual = ["--node-ip", node.ip6, "--cluster-cidr", CLUSTER_CIDR6] if node.ip6 else ["--ip-family", "IPv4"]
    return [*svcproxy_argv(), "run", "-f", str(manifests), "--proxy-mode", mode, *layout,
            "--hostname-override", node.name, "--node-ip", node.ip, "--cluster-cidr", CLUSTER_CIDR, *dual,
            "--healthz-bind-address", f"{node.ip}:{HEALTHZ_PORT}",
            "--metrics-bind-address", f"{node.ip}:{METRICS_PORT}", "--min-sync-period", MIN_SYNC_PERIOD,
            # a node namespace sees the host's nf_conntrack_max, read-only: leave it (as kind does)
            "--conntrack-max-per-core=0"]


def start(ns: str, node: NodeSpec, mode: str, manifests: Path, log: Path, nftables_layout: str = "kube-proxy") -> int:
    return netns.spawn(ns, run_argv(node, mode, manifests, nftables_layout), log).pid


def live_rules(ns: str, mode: str, family: int = 4) -> str:
    """The node's ruleset as the kernel has it now (what the tracer reads, too); iptables mode
    has one per family (nft's ruleset holds both tables)."""
    if mode == "userspace":
        raise LabError(f"userspace mode programs no rules; nothing to show or trace (its listeners: "
                       f"`ip netns exec {ns} ss -ltnu`; its addresses: `ip -n {ns} addr show {USERSPACE_IFNAME}`)")
    if mode == "iptables":
        return netns.exec_in(ns, ["ip6tables-save" if family == 6 else "iptables-save"])
    return netns.exec_in(ns, ["nft", "list", "ruleset"])


def node_configs(node: NodeSpec) -> list[NodeConfig]:
    """The node's view of itself, per family its proxy programs."""
    cfg = NodeConfig(hostname=node.name, node_ips=node.ips, cluster_cidrs=(CLUSTER_CIDR,), zone=node.zone)
    if not node.ip6:
        return [cfg]
    dual = NodeConfig(hostname=node.name, node_ips=node.ips, cluster_cidrs=(CLUSTER_CIDR, CLUSTER_CIDR6),
                      zone=node.zone)
    return [dual, replace(dual, ip_family=6)]


def node_config(node: NodeSpec) -> NodeConfig:
    return node_configs(node)[0]


def expected_endpoints(manifests: Path, node: NodeSpec) -> set[str]:
    """Endpoint IPs this node's rules must name: every endpoint its proxy can send traffic to."""
    objects = load_paths([manifests])
    out: set[str] = set()
    for cfg in node_configs(node):
        state = build_state(objects, cfg)
        for port in state.ports:
            out.update(ep.ip for ep in state.policy(port, cfg).selection.all_reachable)
    return out


def expected_addresses(manifests: Path, node: NodeSpec) -> set[str]:
    """Service addresses userspace mode must put on the node's svcproxy0."""
    objects = load_paths([manifests])
    return {ip for cfg in node_configs(node) for p in build_state(objects, cfg).ports
            for ip in (p.cluster_ip, *p.external_ips, *p.load_balancer_ips)}


def userspace_addresses(ns: str) -> set[str]:
    out = netns.run(["ip", "-n", ns, "-o", "addr", "show", "dev", USERSPACE_IFNAME], check=False)
    return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}


CHAIN_LINE = re.compile(r"^\s*(chain\s|:)")


def rule_lines(rules: str) -> str:
    """The ruleset without its chain declarations: a stale chain kept empty for a while (as
    kube-proxy's nftables mode does before deleting it) still names its endpoint."""
    return "\n".join(line for line in rules.splitlines() if not CHAIN_LINE.match(line))


def mentions(rules: str, ip: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(ip)}(?![\d])", rules) is not None


LAST_SYNC = re.compile(r"^kubeproxy_sync_proxy_rules_last_timestamp_seconds(?:{[^}]*})?\s+(\S+)", re.M)


def last_sync(ns: str, node: NodeSpec) -> float:
    """When the node's proxy last finished a sync (its kube-proxy metric; 0 if not yet); for a
    dual-stack proxy, the family that synced least recently."""
    url = f"http://{node.ip}:{METRICS_PORT}/metrics"
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=2).read().decode())"
    out = netns.exec_in(ns, [sys.executable, "-c", code], check=False, timeout=10)
    times = [float(t) for t in LAST_SYNC.findall(out)]
    return min(times) if times else 0.0


def wait_programmed(nodes: Iterable[tuple[str, NodeSpec, int]], mode: str, manifests: Path, since: float,
                    gone: Iterable[str] = (), timeout: float = 20.0, log_dir: Path | None = None) -> float:
    """Wait until every node's live rules name all endpoints it should and none of `gone`, and its
    proxy has finished a sync after `since` (wall time the manifests were written): a sync
    applies in batches, so the endpoints can show before the last batch is in.

    nodes: (namespace, node, proxy pid). Returns the seconds until the last node's rules showed
    the change (the proxies' reaction time, without our confirmation round-trips). A proxy that died or a
    deadline passed raises LabError with the tail of the proxy's log.

    userspace mode programs no rules: there the node's svcproxy0 must hold every service
    address, and the sync after `since` is taken as the change being in (its listeners and
    endpoints live in the proxy process, out of sight).
    """
    start_t = time.monotonic()
    nodes = list(nodes)
    gone = set(gone)
    userspace = mode == "userspace"
    expected = {n.name: (expected_addresses if userspace else expected_endpoints)(manifests, n) for _, n, _ in nodes}
    pending = {n.name for _, n, _ in nodes}
    seen: dict[str, float] = {}  # when each node's rules first showed the change
    while True:
        for ns, node, pid in nodes:
            if node.name not in pending:
                continue
            if pid and not netns.alive(pid):
                raise LabError(f"svcproxy run on {node.name} exited:\n{log_tail(log_dir, node.name)}")
            if userspace:
                programmed = expected[node.name] <= userspace_addresses(ns)
            else:
                rules = rule_lines(_nat_rules(ns, mode, bool(node.ip6)))
                programmed = (RULES_MARKER[mode] in rules and all(mentions(rules, ip) for ip in expected[node.name])
                              and not any(mentions(rules, ip) for ip in gone))
            if programmed:
                seen.setdefault(node.name, time.monotonic() - start_t)
                if last_sync(ns, node) >= since:
                    pending.discard(node.name)
        if not pending:
            return max(seen.values())
        if time.monotonic() - start_t > timeout:
            tails = "\n".join(f"--- {name}:\n{log_tail(log_dir, name)}" for name in sorted(pending))
            raise LabError(f"the proxies on {', '.join(sorted(pending))} did not program the manifests "
                           f"within {timeout:.0f}s; their logs end with:\n{tails}")
        time.sleep(0.01)


def _nat_rules(ns: str, mode: str, dual: bool) -> str:
    if mode != "iptables":
        return netns.exec_in(ns, ["nft", "list", "ruleset"], check=False)
    tools = ("iptables-save", "ip6tables-save") if dual else ("iptables-save",)
    return "".join(netns.exec_in(ns, [t, "-t", "nat"], check=False) for t in tools)


def log_tail(log_dir: Path | None, node: str, lines: int = 15) -> str:
    if log_dir is None:
        return "(no log)"
    try:
        return "\n".join((log_dir / f"proxy-{node}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
