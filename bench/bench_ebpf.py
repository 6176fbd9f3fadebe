"""ebpf mode beside the nftables maps layout and iptables mode, in one run: a one-endpoint change at 10,000
services x 10 endpoints (the BPF map writes alone, and the whole sync with its nftables part),
a cold full sync, connect+request latency and connections per second from a process in the
cgroup (through the Service, and straight to the pod for comparison), and RSS.

Run as root: `.venv/bin/python bench/bench_ebpf.py [--services N] [--endpoints M]`. Each mode
runs in a fresh network namespace ("ebx-bench-*"); the BPF programs attach to a child cgroup
made for the run and removed after it, with their own pin directory, also removed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_nftables import CFG, peak_rss_mb, synthetic_service, synthetic_state  # noqa: E402

from svcproxy.state import ProxyState  # noqa: E402

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
POD = "10.250.0.10"  # the latency bench's one endpoint, on the namespace's loopback
LAT_VIP = "172.31.255.1"

CLIENT = r"""
import socket, sys, time, json
ip, n = sys.argv[1], int(sys.argv[2])
lat = []
t0 = time.perf_counter()
for _ in range(n):
    s0 = time.perf_counter()
    with socket.create_connection((ip, 80 if ip != sys.argv[3] else 8080), timeout=3) as c:
        c.recv(10)
    lat.append(time.perf_counter() - s0)
print(json.dumps({"lat": lat, "total": time.perf_counter() - t0}))
"""

def serve_pod() -> None:
    """One TCP server at POD:8080 answering "ok", for the latency runs."""
    srv = socket.create_server((POD, 8080), backlog=512)

    def loop() -> None:
        while True:
            c, _ = srv.accept()
            c.sendall(b"ok")
            c.close()

    threading.Thread(target=loop, daemon=True).start()


def latency(cgroup: str, target: str, n: int) -> dict:
    """connect+request n times from a process in the cgroup (this namespace)."""
    cmd = f"echo $$ > {cgroup}/cgroup.procs && exec {sys.executable} -c '{CLIENT}' {target} {n} {POD}"
    out = subprocess.run(["sh", "-c", cmd], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def compare(cgroup: str, n: int, rounds: int = 6) -> dict:
    """Through the Service and straight to the pod, in alternating rounds (this machine's
    speed swings from one second to the next), pooled: p50, p99 and connections per second."""
    runs: dict[str, list[dict]] = {"via_service": [], "direct": []}
    for r in range(rounds):
        order = [("via_service", LAT_VIP), ("direct", POD)]
        for name, target in order if r % 2 == 0 else order[::-1]:
            runs[name].append(latency(cgroup, target, max(1, n // rounds)))
    out = {}
    for name, rs in runs.items():
        lat = sorted(x for r in rs for x in r["lat"])
        out[name] = {"p50_us": 1e6 * lat[len(lat) // 2], "p99_us": 1e6 * lat[int(len(lat) * 0.99)],
                     "cps": len(lat) / sum(r["total"] for r in rs)}
    return out


def enable_bpf_stats() -> int:
    """BPF_ENABLE_STATS: the kernel times every program run while the returned fd is open (it
    reverts by itself when the fd closes, unlike the kernel.bpf_stats_enabled sysctl)."""
    import ctypes

    from svcproxy.dataplane.ebpf import bpfsys

    attr = ctypes.create_string_buffer(bpfsys.ATTR_SIZE)  # type 0: BPF_STATS_RUN_TIME
    return bpfsys.bpf(32, attr)


def hook_costs(cgroup: str) -> dict[str, float]:
    """Nanoseconds per run of each program on the cgroup that ran (bpftool's run_time_ns)."""
    out = {}
    progs = json.loads(subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True, text=True,
                                      check=True).stdout)
    for p in progs:
        info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(p["id"])], capture_output=True,
                                         text=True, check=True).stdout)
        if info.get("run_cnt"):
            out[p["name"]] = info["run_time_ns"] / info["run_cnt"]
    return out


def child(mode: str, services: int, endpoints: int, changes: int, cgroup: str, pins: str, conns: int) -> dict:
    from svcproxy.dataplane.ebpf import EbpfDataplane
    from svcproxy.dataplane.nftables import NftablesDataplane
    from svcproxy.state import EndpointInfo, ServicePortInfo, ServicePortName, ServiceState

    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                ["ip", "link", "set", "d0", "up"], ["ip", "addr", "add", "192.168.0.2/24", "dev", "d0"],
                ["ip", "route", "add", "default", "dev", "d0"], ["ip", "addr", "add", f"{POD}/32", "dev", "lo"]):
        subprocess.run(cmd, check=True)
    serve_pod()
    maps_cfg = replace(CFG, nftables_layout="maps")
    if mode == "nftables-maps":
        dp = NftablesDataplane(maps_cfg)
    elif mode == "iptables":
        from svcproxy.dataplane import dataplane

        dp = dataplane("iptables", CFG)
    elif mode == "ebpf":
        dp = EbpfDataplane(CFG, outside=NftablesDataplane(maps_cfg), cgroup=cgroup, pin_root=pins)
    else:  # "bpf-only": the BPF part without its nftables companion, to see each part's share
        dp = EbpfDataplane(CFG, outside=None, cgroup=cgroup, pin_root=pins)
    state = synthetic_state(services, endpoints)
    spn = ServicePortName("bench", "lat", "http", "TCP")
    lat_svc = ServiceState("bench/lat", (ServicePortInfo(spn, LAT_VIP, 80, "TCP", 8080),),
                           {spn: (EndpointInfo(POD, 8080),)})
    state.services[lat_svc.key] = lat_svc
    t0 = time.perf_counter()
    dp.sync(state, None)
    full = time.perf_counter() - t0
    times, kernel, bpf_part = [], [], []
    for g in range(1, changes + 1):
        # exactly one endpoint replaced: generation 1 shifts the addresses by one, so one
        # leaves and one arrives (bench_nftables' generation g replaces up to all ten)
        svc = synthetic_service(g * 7 % services, endpoints, generation=1)
        state = ProxyState(services=dict(state.services))
        state.services[svc.key] = svc
        t0 = time.perf_counter()
        dp.sync(state, {svc.key})
        times.append(time.perf_counter() - t0)
        if hasattr(dp, "last_map_seconds"):
            kernel.append(dp.last_map_seconds)
            bpf_part.append(dp.last_bpf_seconds)
        elif hasattr(dp, "timings"):
            kernel.append(sum(t for _, _, t in dp.timings))
        time.sleep(0.05)
    times.sort()
    kernel.sort()
    bpf_part.sort()
    out = {"mode": mode, "full_s": full, "rss_mb": peak_rss_mb()[0],
           "change_median_ms": 1000 * times[len(times) // 2], "change_p90_ms": 1000 * times[int(len(times) * 0.9)],
           "change_kernel_median_ms": 1000 * kernel[len(kernel) // 2] if kernel else None,
           "change_bpf_median_ms": 1000 * bpf_part[len(bpf_part) // 2] if bpf_part else None}
    if conns and mode != "bpf-only":
        latency(cgroup, POD, 200)  # warm up
        stats = enable_bpf_stats() if mode == "ebpf" else None
        out.update(compare(cgroup, conns))
        if stats is not None:
            out["hook_ns"] = hook_costs(cgroup)
            os.close(stats)
    if hasattr(dp, "close"):
        dp.close()
    return out


def run_mode(mode: str, a: argparse.Namespace) -> dict:
    tag = f"{os.getpid()}-{mode}"
    ns, cg, pins = f"ebx-bench-{tag}", CGROUP_ROOT / f"svcproxy-bench-{tag}", f"/sys/fs/bpf/svcproxy-bench-{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    cg.mkdir()
    try:
        # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup and bpffs mounts
        out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, __file__, "--child", mode,
                              "--services", str(a.services), "--endpoints", str(a.endpoints),
                              "--changes", str(a.changes), "--connections", str(a.connections),
                              "--cgroup", str(cg), "--pins", pins], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        from svcproxy.dataplane.ebpf import loader

        loader.remove(Path(pins))
        for _ in range(100):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.05)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--modes", default="ebpf,bpf-only,nftables-maps,iptables")
    ap.add_argument("--child", default="")
    ap.add_argument("--cgroup", default="")
    ap.add_argument("--pins", default="")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.services, a.endpoints, a.changes, a.cgroup, a.pins, a.connections)))
        return
    print(f"{a.services} services x {a.endpoints} endpoints; {a.changes} one-endpoint changes; "
          f"{a.connections} connections")
    for mode in a.modes.split(","):
        try:
            r = run_mode(mode, a)
        except subprocess.CalledProcessError as e:
            print(f"{mode:14} failed: {e.stderr.strip().splitlines()[-3:]}")
            continue
        k = r["change_kernel_median_ms"]
        kernel = f"; in the kernel {k:.3f} ms" if k is not None else ""
        print(f"{mode:14} cold {r['full_s']:.2f} s; change median {r['change_median_ms']:.2f} ms "
              f"(p90 {r['change_p90_ms']:.2f}{kernel}); RSS {r['rss_mb']:.0f} MB")
        if r.get("change_bpf_median_ms") is not None:
            print(f"{'':14} change: BPF maps current after {r['change_bpf_median_ms']:.3f} ms (median; plan + bpf())")
        if "via_service" in r:
            v, d = r["via_service"], r["direct"]
            print(f"{'':14} connect+request via Service p50 {v['p50_us']:.0f} us p99 {v['p99_us']:.0f} us "
                  f"{v['cps']:.0f}/s; direct to the pod p50 {d['p50_us']:.0f} us p99 {d['p99_us']:.0f} us {d['cps']:.0f}/s")
        if r.get("hook_ns"):
            print(f"{'':14} BPF programs per run: " + ", ".join(f"{k} {v:.0f} ns" for k, v in r["hook_ns"].items()))


if __name__ == "__main__":
    main()
