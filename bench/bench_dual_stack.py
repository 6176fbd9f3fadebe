"""What dual-stack costs: one daemon programming IPv4 and IPv6 against one programming IPv4 alone.

The same cluster both times: N dual-stack Services (clusterIPs 172.30.x.y and fd00:172:30::x:y),
each with E endpoints per family (an IPv4 and an IPv6 EndpointSlice), as manifests the daemon
watches. For each mode, in one run, side by side:
- cold start: every family's first full sync (apply time, from the daemon's log) and the wall
  time from daemon start until the last family's rules are in the kernel;
- one endpoint replaced in both families' slices of one Service (the manifest rewritten): each
  family's partial sync apply time, and the wall time from the write until the last family's
  sync is logged as done (includes the manifest watch's notice);
- the daemon's peak RSS.

    sudo .venv/bin/python bench/bench_dual_stack.py [--services 1000] [--endpoints 10] \
        [--mode iptables,nftables,nftables-maps,userspace] [--changes 9]

Each daemon runs in a network namespace `ds-bench-<pid>` that is removed after it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_sync import Lines, mode_args, rss_mb  # noqa: E402

SYNC = re.compile(r"syncer: (IPv\d) (full|partial) sync: (\d+) service\(s\), (\d+) changed, build ([\d.]+) ms, "
                  r"apply ([\d.]+) ms")
NODE_IPS = {4: "192.168.0.2", 6: "fd00:192::2"}


def v4(n: int) -> str:
    return f"10.{1 + (n >> 16)}.{n >> 8 & 255}.{n & 255}"


def v6(n: int) -> str:
    return f"fd00:10::{n >> 16:x}:{n & 0xffff:x}"


def service_docs(i: int, endpoints: int, replaced: int | None = None) -> list[dict]:
    """Service i with its two slices; replaced: change endpoint 0 of both (a new pod)."""
    name = f"svc-{i}"
    ips = {4: f"172.30.{i >> 8}.{i & 255}", 6: f"fd00:172:30::{i >> 8:x}:{i & 255:x}"}
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                         "spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
                                  "clusterIP": ips[4], "clusterIPs": [ips[4], ips[6]],
                                  "ports": [{"name": "p", "protocol": "TCP", "port": 80, "targetPort": 8080}]}}]
    for fam, addr in ((4, v4), (6, v6)):
        base = i * endpoints
        addrs = [addr(n) for n in range(base, base + endpoints)]
        if replaced is not None:
            addrs[0] = addr(5_000_000 + replaced)
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-v{fam}", "namespace": "default",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": f"IPv{fam}", "ports": [{"name": "p", "protocol": "TCP", "port": 8080}],
                     "endpoints": [{"addresses": [a], "nodeName": f"node-{j % 3}", "conditions": {"ready": True}}
                                   for j, a in enumerate(addrs)]})
    return docs


def write(path: Path, docs: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n---\n".join(json.dumps(d) for d in docs))
    tmp.rename(path)


def run_one(mode: str, families: tuple[int, ...], manifests: Path, args: argparse.Namespace) -> dict:
    """One daemon in a fresh namespace: cold start, then args.changes endpoint changes."""
    ns = f"ds-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    daemon = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        fam_args = ["--ip-family", f"IPv{families[0]}"] if len(families) == 1 else []
        for f in families:
            fam_args += ["--node-ip", NODE_IPS[f]]
        t_start = time.perf_counter()
        daemon = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(Path(sys.executable).with_name("svcproxy")), "run", "-f", str(manifests),
             "--proxy-mode", *mode_args(mode), "--hostname-override", "node-0", *fam_args,
             "--no-detect-local-addresses", "--min-sync-period", "0", "--sync-period", "600s",
             "--healthz-bind-address", "", "--metrics-bind-address", "", "--status-bind-address", "",
             "--conntrack-max-per-core=0"],
            stderr=subprocess.PIPE, text=True)
        log = Lines(daemon)
        cold: dict[str, float] = {}
        t_cold = t_start
        while len(cold) < len(families):
            t_cold, m = log.wait(SYNC, 1200)
            assert m.group(2) == "full", m.group(0)
            cold[m.group(1)] = float(m.group(6))
        applies: dict[str, list[float]] = {f"IPv{f}": [] for f in families}
        e2e = []
        for k in range(args.changes):
            i = (k * 97) % args.services
            t0 = time.perf_counter()
            write(manifests / f"svc-{i}.json", service_docs(i, args.endpoints, replaced=k))
            seen: set[str] = set()
            t1 = t0
            while len(seen) < len(families):
                t1, m = log.wait(SYNC, 60)
                if m.group(2) == "partial" and int(m.group(4)) >= 1:
                    seen.add(m.group(1))
                    applies[m.group(1)].append(float(m.group(6)))
            e2e.append((t1 - t0) * 1e3)
            time.sleep(0.3)
        _, hwm = rss_mb(_svcproxy_pid(ns))
        return {"cold": cold, "cold_wall": t_cold - t_start, "applies": applies, "e2e": e2e, "rss": hwm}
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        if daemon is not None:
            daemon.wait(10)
        subprocess.run(["ip", "netns", "delete", ns])
        for k in range(args.changes):  # back to the original cluster for the next daemon
            i = (k * 97) % args.services
            write(manifests / f"svc-{i}.json", service_docs(i, args.endpoints))


def _svcproxy_pid(ns: str) -> int:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    return int(pids[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--mode", default="iptables,nftables,nftables-maps,userspace")
    ap.add_argument("--changes", type=int, default=9)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_dual_stack.py needs root (it creates network namespaces)")
    med = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="ds-bench-") as tmp:
        manifests = Path(tmp)
        for i in range(args.services):
            write(manifests / f"svc-{i}.json", service_docs(i, args.endpoints))
        print(f"dual-stack cost: {args.services} services x {args.endpoints} endpoints per family, "
              f"{args.changes} one-endpoint changes each", flush=True)
        print("| mode | daemon | cold: full sync apply per family | cold: start to all rules in | "
              "one-endpoint change: apply per family (median) | write to all families done (median) | peak RSS |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for mode in args.mode.split(","):
            for families in ((4,), (4, 6)):
                r = run_one(mode, families, manifests, args)
                label = "IPv4 only" if len(families) == 1 else "dual-stack"
                cold = ", ".join(f"{f} {v / 1e3:.2f} s" for f, v in r["cold"].items())
                change = ", ".join(f"{f} {med(v):.1f} ms" for f, v in r["applies"].items())
                print(f"| {mode} | {label} | {cold} | {r['cold_wall']:.2f} s | {change} | {med(r['e2e']):.0f} ms | "
                      f"{r['rss']:.0f} MB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
