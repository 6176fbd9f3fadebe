"""nftables mode (both table layouts) beside iptables mode: apply time of a one-endpoint change at 10,000 services,
and a cold full sync of 10,000 services x 10 endpoints (time and peak RSS).

Run as root: `.venv/bin/python bench/bench_nftables.py [--services N] [--endpoints M]`. Every
measurement runs inside a fresh network namespace (prefix "nfx"), removed afterwards.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

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


def peak_rss_mb() -> tuple[float, float]:
    """Peak RSS of this process and of its largest child (nft, iptables-restore), in MB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 1024, kids / 1024


def phases(dp: object) -> str:
    """Where an nftables sync spent its time, from NftablesDataplane.timings."""
    timings = getattr(dp, "timings", None)
    if not timings:
        return ""
    by: dict[str, list[float]] = {}
    other = []
    for path, _commands, seconds in timings:
        if path in ("nft", "netlink"):
            by.setdefault(path, []).append(seconds)
        else:  # render (in the worker thread), wait (the kernel idle, waiting for the worker)
            other.append(f"{path} {seconds:.2f} s")
    return ", ".join([f"{path}: {len(v)} transaction(s) {sum(v):.2f} s" for path, v in by.items()] + other)


NFT_RSS_LOG = "/tmp/svcproxy-bench-nft-rss.log"


def child(mode: str, services: int, endpoints: int, changes: int) -> dict:
    from svcproxy.dataplane import dataplane
    from svcproxy.dataplane.nftables import NftablesDataplane

    if mode.startswith("nftables"):  # "nftables" (kube-proxy layout) or "nftables-maps"
        cfg = replace(CFG, nftables_layout="maps" if mode == "nftables-maps" else "kube-proxy")
        # run nft under /usr/bin/time to learn each nft process's own peak RSS (a forked child's
        # ru_maxrss otherwise includes the parent's pages)
        if os.path.exists(NFT_RSS_LOG):
            os.unlink(NFT_RSS_LOG)
        dp = NftablesDataplane(cfg, nft=("/usr/bin/time", "-a", "-o", NFT_RSS_LOG, "-f", "%M", "nft"))
    else:
        dp = dataplane(mode, CFG)
    state = synthetic_state(services, endpoints)
    t0, c0 = time.perf_counter(), time.process_time()
    dp.sync(state, None)
    full, full_cpu = time.perf_counter() - t0, time.process_time() - c0
    own, child_rss = peak_rss_mb()
    if mode.startswith("nftables") and os.path.exists(NFT_RSS_LOG):
        with open(NFT_RSS_LOG) as f:
            child_rss = max(int(x) for x in f.read().split()) / 1024
    full_phases = phases(dp)
    steps = [(path, n, round(t, 3)) for path, n, t in getattr(dp, "timings", [])]
    t0 = time.perf_counter()
    dp.sync(state, None)  # a periodic (warm) full sync: nothing changed
    warm = time.perf_counter() - t0
    warm_phases = phases(dp)
    times, kernel = [], []
    for g in range(1, changes + 1):
        svc = synthetic_service(g * 7 % services, endpoints, generation=g)
        state = ProxyState(services=dict(state.services))
        state.services[svc.key] = svc
        t0 = time.perf_counter()
        dp.sync(state, {svc.key})
        times.append(time.perf_counter() - t0)
        if hasattr(dp, "timings"):
            kernel.append(sum(t for _, _, t in dp.timings))
        time.sleep(0.2)
    times.sort()
    kernel.sort()
    return {"mode": mode, "full_s": full, "full_cpu_s": full_cpu, "peak_rss_mb": own, "own_rss_mb": own,
            "child_rss_mb": child_rss, "full_phases": full_phases, "full_steps": steps,
            "warm_full_s": warm, "warm_phases": warm_phases,
            "change_tx_median_ms": 1000 * kernel[len(kernel) // 2] if kernel else None,
            "change_median_ms": 1000 * times[len(times) // 2] if times else None,
            "change_p90_ms": 1000 * times[int(len(times) * 0.9)] if times else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--modes", default="nftables,nftables-maps,iptables",
                    help="nftables = kube-proxy layout, nftables-maps = --nftables-layout maps")
    ap.add_argument("--child", default="")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.services, a.endpoints, a.changes)))
        return
    print(f"{a.services} services x {a.endpoints} endpoints; {a.changes} one-endpoint changes")
    print(f"{'mode':10} {'cold full sync':>15} {'svcproxy RSS':>12} {'change median':>14} {'change p90':>11}")
    for mode in a.modes.split(","):
        try:
            r = in_netns(f"nfx-bench-{os.getpid()}", ["--child", mode, "--services", str(a.services),
                                                       "--endpoints", str(a.endpoints), "--changes", str(a.changes)])
        except subprocess.CalledProcessError as e:
            print(f"{mode:10} failed: {e.stderr.strip().splitlines()[-1:]}")
            continue
        print(f"{mode:13} {r['full_s']:>13.2f} s {r['peak_rss_mb']:>9.0f} MB "
              f"{r['change_median_ms']:>11.1f} ms {r['change_p90_ms']:>8.1f} ms")
        child_note = "largest nft run" if mode.startswith("nftables") else "largest child (includes svcproxy's pages at fork)"
        print(f"{'':10} peak RSS: svcproxy {r['own_rss_mb']:.0f} MB; {child_note} {r['child_rss_mb']:.0f} MB")
        if r["full_phases"]:
            print(f"{'':10} cold sync transactions: {r['full_phases']}")
        print(f"{'':10} warm full sync (nothing changed): {r['warm_full_s']:.2f} s {r['warm_phases']}")
        if r["change_tx_median_ms"] is not None:
            print(f"{'':10} change: median {r['change_tx_median_ms']:.1f} ms in the kernel transaction(s)")


if __name__ == "__main__":
    main()
