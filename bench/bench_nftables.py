"""nftables mode beside iptables mode: apply time of a one-endpoint change at 10,000 services,
and a cold full sync of 10,000 services x 10 endpoints (time and peak RSS).

Run as root: `.venv/bin/python bench/bench_nftables.py [--services N] [--endpoints M]`. Every
measurement runs inside a fresh network namespace (prefix "nft"), removed afterwards.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time

from svcproxy.config import NodeConfig
from svcproxy.state import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName, ServiceState

CFG = NodeConfig(hostname="bench-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))


def synthetic_service(i: int, endpoints: int, generation: int = 0) -> ServiceState:
    """Service i: ClusterIP 172.30.x.y:80, NodePort 30000+i (first 2,000), endpoints in 10.x."""
    key = f"ns{i % 100}/svc{i}"
    spn = ServicePortName(f"ns{i % 100}", f"svc{i}", "http", "TCP")
    cluster_ip = str(ipaddress.ip_address("172.30.0.0") + i + 1)
    port = ServicePortInfo(spn, cluster_ip, 80, "TCP", 8080, node_port=30000 + i if i < 2000 else 0)
    base = int(ipaddress.ip_address("10.0.0.0")) + i * 16
    eps = tuple(EndpointInfo(str(ipaddress.ip_address(base + j + generation)), 8080, node_name=f"n{j}")
                for j in range(endpoints))
    eps = tuple(sorted(eps, key=str))
    return ServiceState(key, (port,), {spn: eps})


def synthetic_state(services: int, endpoints: int) -> ProxyState:
    st = ProxyState()
    for i in range(services):
        s = synthetic_service(i, endpoints)
        st.services[s.key] = s
    return st


def in_netns(name: str, argv: list[str]) -> dict:
    """Run this script's --child mode inside a new namespace; return its JSON result."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", name, sys.executable, __file__, *argv],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def peak_rss_mb() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def child(mode: str, services: int, endpoints: int, changes: int) -> dict:
    from svcproxy.dataplane import dataplane

    dp = dataplane(mode, CFG)
    state = synthetic_state(services, endpoints)
    t0 = time.perf_counter()
    dp.sync(state, None)
    full = time.perf_counter() - t0
    rss = peak_rss_mb()
    times = []
    for g in range(1, changes + 1):
        svc = synthetic_service(g * 7 % services, endpoints, generation=g)
        state = ProxyState(services=dict(state.services))
        state.services[svc.key] = svc
        t0 = time.perf_counter()
        dp.sync(state, {svc.key})
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"mode": mode, "full_s": full, "peak_rss_mb": rss,
            "change_median_ms": 1000 * times[len(times) // 2] if times else None,
            "change_p90_ms": 1000 * times[int(len(times) * 0.9)] if times else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--modes", default="nftables,iptables")
    ap.add_argument("--child", default="")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.services, a.endpoints, a.changes)))
        return
    print(f"{a.services} services x {a.endpoints} endpoints; {a.changes} one-endpoint changes")
    print(f"{'mode':10} {'cold full sync':>15} {'peak RSS':>10} {'change median':>14} {'change p90':>11}")
    for mode in a.modes.split(","):
        try:
            r = in_netns(f"nft-bench-{os.getpid()}", ["--child", mode, "--services", str(a.services),
                                                       "--endpoints", str(a.endpoints), "--changes", str(a.changes)])
        except subprocess.CalledProcessError as e:
            print(f"{mode:10} failed: {e.stderr.strip().splitlines()[-1:]}")
            continue
        print(f"{mode:10} {r['full_s']:>13.2f} s {r['peak_rss_mb']:>7.0f} MB "
              f"{r['change_median_ms']:>11.1f} ms {r['change_p90_ms']:>8.1f} ms")


if __name__ == "__main__":
    main()
