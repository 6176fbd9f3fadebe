"""The tracer's speed: parse + trace through a kube-proxy style ruleset of 1,000 and 10,000
services, side by side with a naive linear walk (every rule parsed up front, no index).

Run: `.venv/bin/python bench/bench_trace.py [--services 1000,10000] [--endpoints 3]`. Pure
Python, no root, no kernel: rulesets come from svcproxy's own renderers (nft-json: the same
nftables ruleset as the JSON document `nft -j list ruleset` prints).
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import statistics
import time

from svcproxy.config import NodeConfig
from svcproxy.dataplane import renderer
from svcproxy.netfilter import parse_rules, trace_packet, trace_ruleset
from svcproxy.netfilter.core import no_gc
from svcproxy.netfilter.nft_text import parse_nft_document
from svcproxy.state import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName, ServiceState

CFG = NodeConfig(hostname="bench-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))
NODE = "192.168.0.2"


def synthetic_state(services: int, endpoints: int) -> ProxyState:
    """Service i: ClusterIP 172.30.x.y:80 (NodePort for the first 2,000), `endpoints` pods."""
    st = ProxyState()
    for i in range(services):
        spn = ServicePortName(f"ns{i % 100}", f"svc{i}", "http", "TCP")
        cip = str(ipaddress.ip_address("172.30.0.0") + i + 1)
        port = ServicePortInfo(spn, cip, 80, "TCP", 8080, node_port=30000 + i if i < 2000 else 0)
        base = int(ipaddress.ip_address("10.0.0.0")) + i * 16
        eps = tuple(EndpointInfo(str(ipaddress.ip_address(base + j)), 8080, node_name=f"n{j}") for j in range(endpoints))
        st.services[f"{spn.namespace}/{spn.name}"] = ServiceState(f"{spn.namespace}/{spn.name}", (port,), {spn: eps})
    return st


def timed(fn, repeat: int = 5) -> tuple[float, object]:
    """Median wall time of fn(); what it returns is freed outside the timed region."""
    times, out = [], None
    for _ in range(repeat):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out[1]  # type: ignore[index]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--services", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=3)
    args = ap.parse_args()
    print(f"{'mode':9} {'services':>8} {'rules':>7} {'packet':28} {'indexed+lazy':>13} {'naive linear':>13} {'speed-up':>8}")
    for n in (int(x) for x in args.services.split(",")):
        state = synthetic_state(n, args.endpoints)
        last = str(ipaddress.ip_address("172.30.0.0") + n)
        packets = [("pod -> last ClusterIP", "10.200.0.1", last, 80),
                   ("outside -> NodePort", "192.168.0.9", NODE, 30000 + min(n, 2000) - 1),
                   ("pod -> not a service", "10.200.0.1", "8.8.8.8", 53)]
        for mode in ("iptables", "nftables", "nft-json"):
            text = renderer("iptables" if mode == "iptables" else "nftables")(state, CFG)
            if mode == "nft-json":  # the JSON document `nft -j` prints for this ruleset
                doc = parse_nft_document(text)["nftables"]
                text = json.dumps({"nftables": [{k: {a: b for a, b in v.items() if not a.startswith("_")}}
                                                for o in doc for k, v in o.items()]}, separators=(",", ":"))
            rules = sum(1 for line in text.splitlines() if line.startswith("-A ")) if mode == "iptables" else \
                text.count('{"rule"') if mode == "nft-json" else \
                sum(1 for line in text.splitlines() if line.startswith("\t\t") and "type " not in line)
            for label, src, dst, port in packets:
                def fast(src=src, dst=dst, port=port, text=text):  # what the CLI and the lab call
                    return None, trace_packet(text, src, dst, port, "TCP", [NODE])

                def naive(src=src, dst=dst, port=port, text=text):  # same code, no index, all parsed first
                    with no_gc():
                        rs = parse_rules(text, index=False, lazy=False)
                        try:
                            return None, trace_ruleset(rs, src, dst, port, "TCP", [NODE])
                        finally:
                            rs.dispose()

                t_fast, r1 = timed(fast)
                t_naive, r2 = timed(naive, repeat=1 if n >= 10000 else 3)
                assert r1.to_dict()["outcomes"] == r2.to_dict()["outcomes"]  # type: ignore[union-attr]
                print(f"{mode:9} {n:>8} {rules:>7} {label:28} {t_fast * 1000:>10.0f} ms {t_naive * 1000:>10.0f} ms "
                      f"{t_naive / t_fast:>7.1f}x")


if __name__ == "__main__":
    main()
