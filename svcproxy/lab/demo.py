"""`svcproxy lab demo`: what a Service proxy does, shown with real packets in about a minute."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from rich.console import Console
from rich.rule import Rule

from ..netfilter import render_text
from . import report
from .lab import Lab
from .plan import OUTSIDE_IP, LabError
from .tracing import trace_live

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"


def examples_dir() -> Path:
    if not (EXAMPLES / "web.yaml").exists():
        raise LabError(f"the bundled examples are not at {EXAMPLES}; run the demo from a source checkout "
                       "(git clone ... && pip install -e .)")
    return EXAMPLES


def scaled_down(src: Path, dst: Path, service: str, drop_ip: str) -> None:
    """Copy the example manifests to dst, minus one endpoint of one service (a scale-down)."""
    for f in sorted(src.glob("*.yaml")):
        docs = list(yaml.safe_load_all(f.read_text()))
        for d in docs:
            if (d or {}).get("kind") == "EndpointSlice" and \
                    d["metadata"].get("labels", {}).get("kubernetes.io/service-name") == service:
                d["endpoints"] = [e for e in d["endpoints"] if drop_ip not in e["addresses"]]
        (dst / f.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def run_demo(console: Console, mode: str, prefix: str) -> None:
    src = examples_dir()
    with console.status("building a two-node lab from examples/cluster") as status:
        lab = Lab.up([src], nodes=2, mode=mode, prefix=prefix, progress=lambda m: status.update(m))
    try:
        _tour(console, lab, src)
    finally:
        with console.status("removing the lab"):
            lab.down()
        console.print(f"[dim]lab {prefix!r} removed[/dim]")


def _curl(console: Console, lab: Lab, title: str, where: str, service: str, count: int = 30,
          via: str | None = None, node: str | None = None, timeout: float = 1.0) -> list:
    _, client_ip = lab.namespace_of(where)
    t = lab.target(service, where, via=via, node=node)
    probes = lab.probe(where, t.ip, t.port, count=count, timeout=timeout)
    report.show(console, f"{title}: {where} ({client_ip}) -> {t.ip}:{t.port}", probes, client_ip)
    return probes


def _tour(console: Console, lab: Lab, src: Path) -> None:
    n1, n2 = lab.nodes[0], lab.nodes[1]
    console.print(Rule(f"1. A ClusterIP spreads over its ready pods ({lab.mode} mode)"))
    console.print("web has three ready pods and one terminating pod (10.0.2.11): new connections skip it.")
    _curl(console, lab, "web ClusterIP", "dns-1-20", "web", 30)

    console.print(Rule("2. A NodePort from outside the cluster"))
    console.print(f"The outside client ({OUTSIDE_IP}) connects to {n2.name}'s NodePort; with "
                  "externalTrafficPolicy=Cluster the node masquerades, so pods see a node address.")
    _curl(console, lab, "web NodePort", "outside", "web", 20, via="nodeport", node=n2.name)

    console.print(Rule("3. externalTrafficPolicy=Local keeps the client's address"))
    console.print(f"local-web's only pod runs on {n2.name}: its NodePort there answers and the pod sees "
                  f"{OUTSIDE_IP}; {n1.name} has no local pod and drops (a timeout, not a refusal).")
    _curl(console, lab, f"local-web NodePort on {n2.name}", "outside", "local-web", 10, via="nodeport",
          node=n2.name)
    _curl(console, lab, f"local-web NodePort on {n1.name}", "outside", "local-web", 2, via="nodeport",
          node=n1.name, timeout=0.5)

    console.print(Rule("4. Scale down: the proxies follow"))
    with tempfile.TemporaryDirectory(prefix="svcproxy-demo-") as tmp:
        scaled_down(src, Path(tmp), "web", "10.0.1.11")
        with console.status("removing pod web-1-11 from web's EndpointSlice"):
            res = lab.apply([tmp])
    console.print(f"Endpoint 10.0.1.11 removed from the manifests; every node's rules dropped it within "
                  f"[bold]{res.follow_seconds * 1000:.0f} ms[/bold]; then its pod was deleted.")
    _curl(console, lab, "web ClusterIP after the scale-down", "dns-1-20", "web", 30)

    console.print(Rule("5. Where does one packet go? The tracer reads the node's live rules"))
    target = lab.target("web", "dns-1-20")
    result = trace_live(lab, n1, "10.0.1.20", target.ip, target.port, "TCP")
    console.print(f"trace of 10.0.1.20 -> {target.ip}:{target.port}/TCP through {n1.name}'s "
                  f"{'iptables-save' if lab.mode == 'iptables' else 'nft list ruleset'}:")
    console.print(render_text(result), markup=False, highlight=False)
    console.print("The same answer the traffic gave in step 4: the two remaining pods, the pod's address kept.")
