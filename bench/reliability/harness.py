"""What the reliability scenarios share: steady load, rule snapshots, the web Service's manifests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

LOADGEN = Path(__file__).with_name("loadgen.py")
WEB_IP = "172.30.0.10"
TCP_PORT, UDP_PORT = 80, 53
TCP_NODEPORT, UDP_NODEPORT = 30080, 30053
TCP_TARGET, UDP_TARGET = 8080, 5353


class Load:
    """A loadgen.py process in a namespace; stop() returns its totals and its failures."""

    def __init__(self, ns: str, kind: str, host: str, port: int) -> None:
        self.label = f"{kind} {host}:{port} from {ns}"
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(LOADGEN), kind, host, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self) -> dict:
        assert self.proc.stdin and self.proc.stdout
        if self.proc.poll() is None:
            self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(15)
        lines = [json.loads(x) for x in out.splitlines() if x.strip()]
        if not lines or "attempts" not in lines[-1]:
            raise RuntimeError(f"load {self.label} ended without its totals: {out[-500:]}")
        totals = lines[-1]
        return {**totals, "label": self.label, "errors": [x for x in lines[:-1] if "error" in x],
                "lost_at": [x["t"] for x in lines[:-1] if x.get("lost")]}


def stop_all(loads: Iterable[Load]) -> dict:
    """Totals over several loads: attempts, failures, the first few errors, per-load rows."""
    rows = [load.stop() for load in loads]
    return {"attempts": sum(r["attempts"] for r in rows), "failures": sum(r["failures"] for r in rows),
            "udp_lost": sum(r.get("lost", 0) for r in rows),
            "errors": [f"{r['label']}: {e['error']}" for r in rows for e in r["errors"]][:5], "loads": rows}


# -- manifests ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pod:
    ip: str
    node: str
    condition: str = "ready"  # ready | terminating


def web_docs(pods: Iterable[Pod], node_port: bool = True) -> list[dict]:
    """The web Service (TCP 80 and UDP 53, as NodePorts) and one EndpointSlice of these pods."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": WEB_IP, "clusterIPs": [WEB_IP],
                    "ports": [{"name": "http", "protocol": "TCP", "port": TCP_PORT, "targetPort": TCP_TARGET,
                               **({"nodePort": TCP_NODEPORT} if node_port else {})},
                              {"name": "dns", "protocol": "UDP", "port": UDP_PORT, "targetPort": UDP_TARGET,
                               **({"nodePort": UDP_NODEPORT} if node_port else {})}]}}
    conditions = {"ready": {"ready": True, "serving": True, "terminating": False},
                  "terminating": {"ready": False, "serving": True, "terminating": True}}
    eps = [{"addresses": [p.ip], "nodeName": p.node, "conditions": conditions[p.condition]} for p in pods]
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
          "ports": [{"name": "http", "protocol": "TCP", "port": TCP_TARGET},
                    {"name": "dns", "protocol": "UDP", "port": UDP_TARGET}],
          "endpoints": eps}
    return [svc, sl]


def write_docs(path: Path, docs: list[dict]) -> Path:
    """Write atomically, as a config-management tool would (a watcher never reads half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.rename(path)
    return path


# -- the kernel's rules ------------------------------------------------------------------------

COUNTERS = re.compile(r" \[\d+:\d+\]$", re.M)


def rules_snapshot(ns: str, mode: str) -> str:
    """The node's proxy rules as the kernel lists them, without what changes by itself (packet
    counters, iptables-save's timestamps). nftables lists with handles: a table or chain that
    was deleted and made again has new handles (see rewritten_chains)."""
    if mode == "userspace":
        return ""
    if mode.startswith("nftables"):
        return _run(ns, "nft", "-a", "list", "table", "ip", "kube-proxy")
    text = "".join(_run(ns, "iptables-save", "-t", t) for t in ("nat", "filter"))
    return COUNTERS.sub("", "\n".join(x for x in text.splitlines() if not x.startswith("#")))


HANDLE = re.compile(r" # handle \d+$", re.M)


def without_handles(rules: str) -> str:
    return HANDLE.sub("", rules)


def rewritten_chains(before: str, after: str) -> list[str]:
    """nftables: the chains whose rules got new handles (rewritten in place) between two
    snapshots of the same content; [] when everything was adopted as it was."""
    def rule_handles(text: str) -> dict[str, list[str]]:
        chains: dict[str, list[str]] = {}
        chain = ""
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["chain"]:
                chain = words[1]
            elif chain and (m := HANDLE.search(line)):
                chains.setdefault(chain, []).append(m.group())
        return chains
    b, a = rule_handles(before), rule_handles(after)
    return sorted(c for c in set(a) | set(b) if a.get(c) != b.get(c))


def _run(ns: str, *argv: str) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)
    if p.returncode:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {p.stderr.strip()}")
    return p.stdout


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def summary(values: list[float]) -> dict:
    """min / median / p95 / max of a list of seconds, in ms."""
    if not values:
        return {}
    v = sorted(values)
    return {"n": len(v), "min_ms": round(v[0] * 1000, 1), "median_ms": round(v[len(v) // 2] * 1000, 1),
            "p95_ms": round(v[min(len(v) - 1, int(len(v) * 0.95))] * 1000, 1), "max_ms": round(v[-1] * 1000, 1)}
