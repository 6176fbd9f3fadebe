"""A Kubernetes-like cluster in network namespaces: build it, change it, probe it, remove it.

Layout (every name starts with the lab's prefix, default `svl`):

    <p>-lan   the LAN: bridge <p>-br (192.168.0.1), one port per node and one for the outside
    <p>-n<i>  node i: uplink <p>-up (192.168.0.i+1), pod bridge <p>-cbr (10.0.i.1/24), routes to
              the other nodes' pod CIDRs, `svcproxy run` programming its netfilter
    <p>-<ip>  a pod: <p>-eth with the endpoint address, default route via its node, and
              server.py answering on every endpoint port (TCP and UDP)
    <p>-out   a client outside the cluster (192.168.0.100), routing 192.168.100.0/24 (LoadBalancer
              and external IPs) through the first node

The root namespace is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..model.load import load_paths
from ..model.objects import Service
from . import checks, netns, proxies, wiring
from .plan import (
    OUTSIDE_IP,
    OUTSIDE_IP6,
    LabError,
    LabPlan,
    Names,
    NodeSpec,
    PodSpec,
    make_plan,
    manifest_text,
)
from .store import LabState, Store
from .targets import Target, resolve

LAB_DIR = Path(__file__).parent
CLIENT = LAB_DIR / "client.py"
DEFAULT_PREFIX = "svl"
# one datagram to each address (port 9, discard): makes the kernel resolve the neighbour
NEIGHBOUR_PROBE = ("import socket, sys, time\nfor a in sys.argv[1:]:\n"
                   "    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'', (a, 9))\ntime.sleep(0.2)")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Probe:
    """One connection's outcome: who served and which source the pod saw, or why it failed."""

    ok: bool
    served_by: str = ""
    pod_ip: str = ""
    source: str = ""  # ip:port the pod saw
    error: str = ""  # refused | timeout | unreachable | reset | ...
    ms: float = 0.0

    @property
    def source_ip(self) -> str:
        return self.source.rpartition(":")[0]


@dataclass(frozen=True)
class ApplyResult:
    added: tuple[str, ...]  # pod names
    removed: tuple[str, ...]
    follow_seconds: float  # manifest written -> every proxy programmed it
    warnings: tuple[str, ...] = ()


class Lab:
    """One lab, by prefix. Build with Lab.up(); attach to a running one with Lab(prefix)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, root: Path | None = None,
                 progress: Progress | None = None):
        self.names = Names(prefix)
        self.store = Store(prefix, root)
        self.progress = progress or (lambda msg: None)
        self._state = self.store.load()

    # -- reading -------------------------------------------------------------------------------
    @property
    def state(self) -> LabState:
        if self._state is None or not self._state.up:
            raise LabError(f"no lab {self.names.prefix!r} is up (start one: svcproxy lab up -f examples/cluster)")
        return self._state

    @property
    def mode(self) -> str:
        return self.state.mode

    @property
    def nodes(self) -> list[NodeSpec]:
        return self.state.nodes

    @property
    def pods(self) -> list[PodSpec]:
        return self.state.pods

    def node(self, name: str) -> NodeSpec:
        st = self._state
        for n in st.nodes if st else []:
            if name in (n.name, n.ip, f"n{n.index}") or (n.ip6 and name == n.ip6):
                return n
        raise LabError(f"no node {name!r} in lab {self.names.prefix} (nodes: "
                       f"{', '.join(n.name for n in (st.nodes if st else []))})")

    def pod(self, name: str) -> PodSpec:
        for p in self.state.pods:
            if name in (p.name, p.ip) or (p.ip6 and name == p.ip6):
                return p
        raise LabError(f"no pod {name!r} in lab {self.names.prefix} (pods: "
                       f"{', '.join(p.name for p in self.state.pods)})")

    def node_ns(self, node: NodeSpec | str) -> str:
        return self.names.node_ns(self.node(node) if isinstance(node, str) else node)

    def pod_ns(self, pod: PodSpec | str) -> str:
        return self.names.pod_ns(self.pod(pod) if isinstance(pod, str) else pod)

    def namespace_of(self, where: str, family: int = 4) -> tuple[str, str]:
        """(namespace, address of that family) of a pod name/IP, a node name/IP, or 'outside'."""
        six = family == 6
        if where == "outside":
            return self.names.outside_ns, OUTSIDE_IP6 if six else OUTSIDE_IP
        try:
            n = self.node(where)
            return self.names.node_ns(n), n.ip6 if six else n.ip
        except LabError:
            pass
        try:
            p = self.pod(where)
            return self.names.pod_ns(p), p.ip6 if six else p.ip
        except LabError:
            raise LabError(f"--from {where!r}: not a pod, a node or 'outside' (pods: "
                           f"{', '.join(p.name for p in self.pods)}; nodes: "
                           f"{', '.join(n.name for n in self.nodes)})") from None

    def local_addresses(self, node: NodeSpec | str) -> list[str]:
        """A node's own addresses, as the tracer needs them to know which packets start at OUTPUT."""
        n = self.node(node) if isinstance(node, str) else node
        return [n.ip, n.gateway, "127.0.0.1", *((n.ip6, n.gateway6, "::1") if n.ip6 else ())]

    def services(self) -> list[Service]:
        """The Services the lab's proxies currently see."""
        return load_paths([self.store.manifests]).services

    @property
    def dual_stack(self) -> bool:
        return bool(self.nodes and self.nodes[0].ip6)

    def target(self, spec: str, where: str, *, udp: bool = False, via: str | None = None,
               node: str | None = None, family: int = 4) -> Target:
        """Where `lab curl SERVICE[:PORT] --from where` connects (see targets.resolve)."""
        if family == 6 and not self.dual_stack:
            raise LabError("this lab is IPv4 only; for IPv6 start one with `svcproxy lab up --dual-stack -f ...`")
        return resolve(self.services(), spec, outside=where == "outside", nodes=self.nodes, udp=udp, via=via,
                       node=node, family=family)

    def rules(self, node: NodeSpec | str, family: int = 4) -> str:
        """The node's live ruleset (iptables-save / ip6tables-save, or nft list ruleset)."""
        return proxies.live_rules(self.node_ns(node), self.mode, family)

    def status(self) -> dict:
        """What exists and what runs: for `lab status`."""
        st = self._state
        if st is None:
            return {"prefix": self.names.prefix, "up": False, "namespaces": self._leftover_namespaces()}
        existing = set(netns.list_namespaces())
        procs = {key: {"pid": pid, "alive": netns.alive(pid)} for key, pid in st.pids.items()}
        return {"prefix": st.prefix, "up": st.up, "mode": st.mode, "nftables_layout": st.nftables_layout,
                "programmer": st.programmer,
                "external_via": st.external_via, "manifests": str(self.store.manifests),
                "dual_stack": self.dual_stack,
                "nodes": [{"name": n.name, "ip": n.ip, **({"ip6": n.ip6, "pod_cidr6": n.pod_cidr6} if n.ip6 else {}),
                           "pod_cidr": n.pod_cidr,
                           "namespace": self.names.node_ns(n), "exists": self.names.node_ns(n) in existing,
                           "proxy": procs.get(f"proxy:{n.name}")} for n in st.nodes],
                "pods": [{"name": p.name, "ip": p.ip, **({"ip6": p.ip6} if p.ip6 else {}), "node": p.node, "namespace": self.names.pod_ns(p),
                          "exists": self.names.pod_ns(p) in existing, "tcp": list(p.tcp_ports),
                          "udp": list(p.udp_ports), "server": procs.get(f"pod:{p.ip}")} for p in st.pods],
                "namespaces": sorted(ns for ns in existing if self.names.owns(ns))}

    def _leftover_namespaces(self) -> list[str]:
        return sorted(ns for ns in netns.list_namespaces() if self.names.owns(ns))

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def up(cls, paths: Iterable[str | Path], *, nodes: int | None = None, mode: str = "iptables",
           prefix: str = DEFAULT_PREFIX, root: Path | None = None, progress: Progress | None = None,
           nftables_layout: str = "kube-proxy", dual_stack: bool = False) -> Lab:
        """Build the lab for these manifests (replacing a lab of the same prefix) and wait until
        every proxy has programmed them."""
        Names(prefix)  # a bad prefix is the first thing to say
        checks.preflight(mode)
        missing = checks.dataplane_missing(mode)
        if missing:
            raise LabError(f"svcproxy run cannot program --proxy-mode {mode}: {missing}")
        paths = [Path(p) for p in paths]
        plan = make_plan(paths, nodes, dual_stack=dual_stack)
        lab = cls(prefix, root, progress)
        if lab._state is not None or lab._leftover_namespaces():
            lab.progress(f"removing the previous lab {prefix!r}")
            lab.down()
        try:
            lab._build(plan, paths, mode, nftables_layout)
        except BaseException:
            lab.down()
            raise
        return lab

    def _build(self, plan: LabPlan, paths: list[Path], mode: str, nftables_layout: str = "kube-proxy") -> None:
        n = self.names
        st = LabState(prefix=n.prefix, mode=mode, nftables_layout=nftables_layout, nodes=list(plan.nodes),
                      started=time.time(),
                      external_via=plan.nodes[0].name)
        st.namespaces = [n.lan_ns, n.outside_ns, *(n.node_ns(x) for x in plan.nodes)]
        self._state = st
        self.store.save(st)  # before creating anything: `lab down` can clean up a crash from here on
        for w in plan.warnings:
            self.progress(f"warning: {w}")
        if not checks.br_netfilter_available():
            self.progress("warning: br_netfilter is not available: a pod reaching a Service whose chosen "
                          "endpoint is on the same node gets no answer (the reply skips un-DNAT)")
        self.progress(f"creating the LAN and {len(plan.nodes)} node(s)" + (", dual-stack" if plan.dual_stack else ""))
        for ns in st.namespaces:
            netns.add_namespace(ns)
        netns.ip_batch(n.lan_ns, wiring.lan(n, plan.nodes))
        for node in plan.nodes:
            netns.ip_batch(n.node_ns(node), wiring.node(n, node, plan.nodes))
            br = checks.br_netfilter_available()
            netns.sysctls(n.node_ns(node), {**wiring.NODE_SYSCTLS, **(wiring.BR_NETFILTER_SYSCTLS if br else {}),
                                            **(wiring.NODE_SYSCTLS6 if plan.dual_stack else {}),
                                            **(wiring.BR_NETFILTER_SYSCTLS6 if br and plan.dual_stack else {})})
        netns.ip_batch(n.outside_ns, wiring.outside(n, plan.nodes[0]))
        self.store.write_manifests(manifest_text(paths, plan.nodes))
        written = time.time()
        self.progress(f"starting {len(plan.pods)} pod(s)")
        self._add_pods(plan.pods)
        if plan.dual_stack:
            self._resolve_neighbours()
        self.progress(f"starting svcproxy run ({mode}) on every node")
        for node in plan.nodes:
            self._start_proxy(node)
        self.store.save(st)
        took = self._wait_programmed(written)
        self.progress(f"proxies programmed the manifests in {took * 1000:.0f} ms")
        st.up = True
        self.store.save(st)

    def _resolve_neighbours(self, pods: Iterable[PodSpec] | None = None) -> None:
        """Dual-stack labs: have every node resolve its IPv6 neighbours (the other nodes, its pods)
        before traffic. Measured here: the first forwarded IPv6 packet towards a neighbour not yet
        resolved is lost, which costs a client's first connection a 1 s SYN retry."""
        st = self._state
        assert st is not None
        pods = list(st.pods if pods is None else pods)
        for node in st.nodes:
            targets = [o.ip6 for o in st.nodes if o.name != node.name] + [p.ip6 for p in pods if p.node == node.name]
            if targets:
                netns.exec_in(self.names.node_ns(node), [sys.executable, "-c", NEIGHBOUR_PROBE, *targets], check=False)
        netns.exec_in(self.names.outside_ns, [sys.executable, "-c", NEIGHBOUR_PROBE, *(n.ip6 for n in st.nodes)],
                      check=False)

    def route_external_via(self, node: NodeSpec | str) -> None:
        """Send the outside client's LoadBalancer/external-IP traffic through this node."""
        n = self.node(node) if isinstance(node, str) else node
        netns.ip_batch(self.names.outside_ns, wiring.external_route(n))
        self.state.external_via = n.name
        self.store.save(self.state)

    def _add_pods(self, pods: Iterable[PodSpec]) -> None:
        """Create each pod's namespace, wire it to its node's bridge and start its server."""
        pods = list(pods)
        n = self.names
        st = self._state
        assert st is not None
        st.namespaces += [n.pod_ns(p) for p in pods if n.pod_ns(p) not in st.namespaces]
        st.pods += pods
        self.store.save(st)
        by_node: dict[str, list[PodSpec]] = {}
        for p in pods:
            by_node.setdefault(p.node, []).append(p)
            netns.add_namespace(n.pod_ns(p))
        for node_name, node_pods in by_node.items():
            node = self.node(node_name)
            netns.ip_batch(n.node_ns(node), wiring.pod_ports(n, node, node_pods))
            for p in node_pods:
                netns.ip_batch(n.pod_ns(p), wiring.pod(n, node, p))
        ready = {}
        self.store.run_dir.mkdir(parents=True, exist_ok=True)
        for p in pods:
            ready_file = self.store.run_dir / f"pod-{p.ip}.ready"
            ready_file.unlink(missing_ok=True)
            proc = netns.spawn(n.pod_ns(p), wiring.server_argv(p, ready_file), self.store.logs / f"pod-{p.ip}.log")
            st.pids[f"pod:{p.ip}"] = proc.pid
            ready[p.ip] = (ready_file, proc.pid)
        self.store.save(st)
        deadline = time.monotonic() + 10
        for ip, (ready_file, pid) in ready.items():
            while not ready_file.exists():
                if not netns.alive(pid) or time.monotonic() > deadline:
                    log = (self.store.logs / f"pod-{ip}.log").read_text(errors="replace")[-800:]
                    raise LabError(f"the server of pod {ip} did not start:\n{log}")
                time.sleep(0.01)

    def _remove_pods(self, pods: Iterable[PodSpec]) -> None:
        st = self._state
        assert st is not None
        for p in pods:
            ns = self.names.pod_ns(p)
            pid = st.pids.pop(f"pod:{p.ip}", 0)
            netns.stop_processes([*([pid] if pid and netns.pid_is(pid, "server.py") else []),
                                  *netns.namespace_pids(ns)])
            netns.delete_namespace(ns)  # deleting the namespace deletes the veth pair
            st.pods = [q for q in st.pods if q.ip != p.ip]
            st.namespaces = [x for x in st.namespaces if x != ns]
        self.store.save(st)

    def kill_proxy(self, node: NodeSpec | str) -> None:
        """SIGKILL the node's svcproxy run, as a crash or an OOM kill would; its rules stay."""
        st = self.state
        n = self.node(node) if isinstance(node, str) else node
        pid = st.pids.pop(f"proxy:{n.name}", 0)
        if pid and netns.pid_is(pid, "svcproxy"):
            os.kill(pid, signal.SIGKILL)
            while netns.alive(pid):
                time.sleep(0.005)
        self.store.save(st)

    def start_proxy(self, node: NodeSpec | str, timeout: float = 20.0) -> float:
        """Start the node's svcproxy run again and wait until it has synced; returns the seconds
        from its start to its rules being in (its first sync after the lab's manifests)."""
        n = self.node(node) if isinstance(node, str) else node
        started = time.time()
        self._start_proxy(n)
        self.store.save(self.state)
        ns = self.names.node_ns(n)
        deadline = time.monotonic() + timeout
        while (synced := proxies.last_sync(ns, n)) < started:
            if not netns.alive(self.state.pids[f"proxy:{n.name}"]) or time.monotonic() > deadline:
                raise LabError(f"svcproxy run on {n.name} did not sync after its restart:\n"
                               f"{proxies.log_tail(self.store.logs, n.name)}")
            time.sleep(0.005)
        return synced - started  # the proxy's own timestamp of that sync, not when we looked

    def _start_proxy(self, node: NodeSpec) -> None:
        st = self._state
        assert st is not None
        log = self.store.logs / f"proxy-{node.name}.log"
        proc = netns.spawn(self.names.node_ns(node), proxies.run_argv(node, st.mode, self.store.manifests, st.nftables_layout), log)
        st.pids[f"proxy:{node.name}"] = proc.pid

    def _wait_programmed(self, since: float, gone: Iterable[str] = (), timeout: float = 20.0) -> float:
        st = self._state
        assert st is not None
        nodes = [(self.names.node_ns(x), x, st.pids.get(f"proxy:{x.name}", 0)) for x in st.nodes]
        return proxies.wait_programmed(nodes, st.mode, self.store.manifests, since, gone, timeout,
                                       self.store.logs)

    # -- changing ------------------------------------------------------------------------------
    def apply(self, paths: Iterable[str | Path], timeout: float = 10.0) -> ApplyResult:
        """Make the lab's manifests exactly these: new pods start first, the proxies follow through
        their manifest watch, and only then are the pods that left removed (as a pod terminates
        after its endpoint is gone)."""
        st = self.state
        paths = [Path(p) for p in paths]
        plan = make_plan(paths, nodes=tuple(st.nodes))
        old = {p.ip: p for p in st.pods}
        new = {p.ip: p for p in plan.pods}
        removed = [p for ip, p in old.items() if new.get(ip) != p]
        added = [p for ip, p in new.items() if old.get(ip) != p]
        gone = {p.ip for p in removed} - set(new)
        changed = [p for p in removed if p.ip in new]  # same address, other ports or name: restart it
        if changed:
            self._remove_pods(changed)
        if added:
            self.progress(f"starting {len(added)} pod(s)")
            self._add_pods(added)
            if self.dual_stack:
                self._resolve_neighbours(added)
        self.store.write_manifests(manifest_text(paths, st.nodes))
        written = time.time()
        self.progress("waiting for the proxies to follow")
        took = self._wait_programmed(written, gone, timeout)
        still = [p for p in removed if p not in changed]
        if still:
            self.progress(f"removing {len(still)} pod(s)")
            self._remove_pods(still)
        return ApplyResult(tuple(p.name for p in added), tuple(p.name for p in removed), took, plan.warnings)

    # -- probing -------------------------------------------------------------------------------
    def probe(self, where: str, target: str, port: int, *, udp: bool = False, count: int = 1,
              timeout: float = 1.0, source: str | None = None) -> list[Probe]:
        """count real connections (or datagrams) from where (pod, node or 'outside') to target:port."""
        ns, _ = self.namespace_of(where)
        argv = [sys.executable, str(CLIENT), "--target", f"{target}:{port}", "-n", str(count),
                "--timeout", str(timeout)]
        if udp:
            argv.append("--udp")
        if source:
            argv += ["--source", source]
        out = netns.exec_in(ns, argv, timeout=count * (timeout + 1) + 10)
        return [Probe(**json.loads(line)) for line in out.splitlines() if line.strip()]

    # -- removing ------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Remove everything this lab made: processes (by recorded pid and by namespace), then
        namespaces, then its directory. Works from the state file alone, and without it from the
        namespace names. Returns the namespaces removed."""
        st = self._state
        present = set(netns.list_namespaces())
        namespaces = [ns for ns in dict.fromkeys([*(st.namespaces if st else []), *sorted(present)])
                      if self.names.owns(ns) and ns in present]
        pids = [pid for pid in (st.pids.values() if st else [])
                if netns.pid_is(pid, "svcproxy") or netns.pid_is(pid, "server.py")]
        for ns in namespaces:
            pids += netns.namespace_pids(ns)
        netns.stop_processes(pids)
        for ns in reversed(namespaces):  # pods before nodes before the LAN
            netns.delete_namespace(ns)
        left = [ns for ns in netns.list_namespaces() if self.names.owns(ns)]
        if left:
            raise LabError(f"could not remove namespace(s) {', '.join(left)}; try `ip netns delete NAME`")
        shutil.rmtree(self.store.dir, ignore_errors=True)
        self._state = None
        return namespaces
