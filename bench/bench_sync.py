"""The daemon at scale: 10k services x 10 endpoints, fed by the stand-in API server, in a netns.

Prints, in one run:
- startup list of 10k Services + 10k EndpointSlices (100k endpoints): the daemon's own figure,
  and beside it the same list parsed in-process with the fast path vs model.parse's general parser;
- cold-start full sync (every chain new) and a warm periodic full sync (rules already there);
- one EndpointSlice change (one endpoint replaced): end-to-end from the API write to the sync
  being logged as done (rules in the kernel), with the daemon's build/apply split and the
  restore input size, beside the full sync of the same cluster;
- the daemon's RSS.

    sudo .venv/bin/python bench/bench_sync.py [--services 10000] [--endpoints 10] [--mode iptables,nftables,nftables-maps]

Everything runs in a network namespace `dmn-bench-<pid>` that is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "daemon"))
PORT = 18080
SYNC = re.compile(r"(?<=syncer: )(?:IPv\d )?(full|partial) sync: (\d+) service\(s\), (\d+) changed, build ([\d.]+) ms, "
                  r"apply ([\d.]+) ms, input (\d+) bytes")
LISTED = re.compile(r"(\w+): listed (\d+) object\(s\) at resourceVersion \S+ in ([\d.]+)s")


def outside(args: argparse.Namespace) -> int:
    ns = f"dmn-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        env = {**os.environ, "DMN_BENCH_INSIDE": ns}
        argv = ["--services", str(args.services), "--endpoints", str(args.endpoints), "--mode", args.mode,
                "--changes", str(args.changes), "--sync-period", str(args.sync_period),
                *(["--timeline"] if args.timeline else [])]
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, *argv], env=env).returncode
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", ns])


class Lines:
    """A process's stderr, line by line, with the time each line arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.q: queue.Queue[tuple[float, str]] = queue.Queue()
        self.all: list[str] = []
        self.times: list[float] = []  # perf_counter() each line arrived
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.all.append(line)
            self.times.append(time.perf_counter())
            self.q.put((time.perf_counter(), line))

    def wait(self, pattern: re.Pattern, timeout: float) -> tuple[float, re.Match]:
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no {pattern.pattern!r} within {timeout}s; log tail:\n{''.join(self.all[-20:])}")
            try:
                t, line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            m = pattern.search(line)
            if m:
                return t, m


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # noqa: E731
    return get("VmRSS"), get("VmHWM")


def put(obj: dict) -> None:
    from apiserver import item_url

    req = urllib.request.Request(item_url(f"http://127.0.0.1:{PORT}", obj), data=json.dumps(obj).encode(),
                                 method="PUT", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def list_in_process(fast: bool) -> float:
    """List the same cluster in this process, with the fast or the general EndpointSlice parser."""
    from svcproxy.model.parse import parse_endpoint_slice_general
    from svcproxy.sources import kubernetes as k
    from svcproxy.sources.apiclient import ApiConfig
    from svcproxy.sources.store import ObjectStore

    saved = k.parse_endpoint_slice
    if not fast:
        k.parse_endpoint_slice = parse_endpoint_slice_general
    try:
        async def main() -> float:
            store = ObjectStore(["api"])
            src = k.ApiSource(ApiConfig(host=f"http://127.0.0.1:{PORT}"), "node-0")
            t0 = time.perf_counter()
            task = asyncio.create_task(src.run(store))
            while not (src.reflectors and store.synced):
                await asyncio.sleep(0.005)
            took = time.perf_counter() - t0
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return took

        return asyncio.run(main())
    finally:
        k.parse_endpoint_slice = saved


def inside(args: argparse.Namespace) -> None:
    from manifests_util import endpoint, endpoint_slice

    py = sys.executable
    print(f"svcproxy daemon benchmark: {args.services} services x {args.endpoints} endpoints, "
          f"{args.mode} mode, in netns {os.environ['DMN_BENCH_INSIDE']}", flush=True)
    server = subprocess.Popen([py, str(ROOT / "tests/daemon/apiserver.py"), "--port", str(PORT),
                               "--services", str(args.services), "--endpoints", str(args.endpoints)],
                              stdout=subprocess.PIPE, text=True)
    daemon = None
    try:
        assert server.stdout is not None
        print(" ", server.stdout.readline().strip(), flush=True)
        fast = list_in_process(True)
        slow = list_in_process(False)
        t_start = time.perf_counter()
        daemon = subprocess.Popen(
            [str(Path(py).with_name("svcproxy")), "run", "--master", f"http://127.0.0.1:{PORT}", "--proxy-mode",
             *mode_args(args.mode), "--hostname-override", "node-0", "--node-ip", "10.0.0.1", "--ip-family", "IPv4",
             "--min-sync-period", "0",
             "--sync-period", f"{args.sync_period}s", "--healthz-bind-address", "127.0.0.1:10256",
             "--metrics-bind-address", "127.0.0.1:10249", "--conntrack-max-per-core=0"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
        log = Lines(daemon)
        listed = {}
        while len(listed) < 2:
            _, m = log.wait(LISTED, 120)
            if m.group(1) in ("Service", "EndpointSlice"):
                listed[m.group(1)] = float(m.group(3))
        t_cold, cold = log.wait(SYNC, 1800)
        rss_cold, _ = rss_mb(daemon.pid)
        print(f"startup list (daemon): Services {listed['Service']:.2f} s, EndpointSlices "
              f"{listed['EndpointSlice']:.2f} s (listed concurrently)", flush=True)
        print(f"startup list (in-process, all three resources): fast parser {fast:.2f} s | "
              f"model.parse {slow:.2f} s", flush=True)
        print(f"cold start: first full sync apply {float(cold.group(5)) / 1e3:.2f} s, build "
              f"{float(cold.group(4)):.0f} ms, input {int(cold.group(6)) / 1e6:.1f} MB; daemon start to rules "
              f"in the kernel {t_cold - t_start:.2f} s", flush=True)
        if args.timeline:
            print("cold start timeline (log lines as they arrived, seconds since the daemon was started):")
            for t, line in zip(log.times, log.all, strict=False):
                if t > t_cold:
                    break
                print(f"  {t - t_start:6.3f}  {line.strip()[:150]}")

        e2e, builds, applies, sizes = [], [], [], []
        for i in range(args.changes):
            svc = f"svc-{(i * 997) % args.services}"
            base = ((i * 997) % args.services) * args.endpoints
            ips = [f"10.{1 + (n >> 16)}.{n >> 8 & 255}.{n & 255}" for n in range(base, base + args.endpoints)]
            ips[0] = f"10.200.{i // 256}.{i % 256}"  # one endpoint replaced
            sl = endpoint_slice(f"{svc}-abc", svc, [endpoint(ip, f"node-{j % 3}") for j, ip in enumerate(ips)])
            t0 = time.perf_counter()
            put(sl)
            t1, m = log.wait(SYNC, 60)
            assert m.group(1) == "partial", m.group(0)
            e2e.append((t1 - t0) * 1e3)
            builds.append(float(m.group(4)))
            applies.append(float(m.group(5)))
            sizes.append(int(m.group(6)))
            time.sleep(0.2)
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        print(f"one-endpoint change, {args.changes} runs (median / max): API write -> in the kernel "
              f"{med(e2e):.0f} / {max(e2e):.0f} ms; daemon build {med(builds):.1f} ms + apply "
              f"{med(applies):.0f} ms; restore input {med(sizes)} / {max(sizes)} bytes", flush=True)
        print("waiting for the periodic full sync ...", flush=True)
        _, found = log.wait(re.compile(r"syncer: (?:IPv\d )?(full sync|sync failed)"), args.sync_period + 600)
        warm = SYNC.search(found.string)
        if warm is None:
            raise SystemExit(f"the periodic full sync failed: {found.string}")
        rss, hwm = rss_mb(daemon.pid)
        print(f"warm full sync (periodic, rules already there): apply {float(warm.group(5)) / 1e3:.2f} s, "
              f"input {int(warm.group(6)) / 1e6:.1f} MB", flush=True)
        print(f"side by side, same cluster: partial sync {med(applies):.0f} ms / {med(sizes)} B | full sync "
              f"{float(warm.group(5)):.0f} ms / {int(warm.group(6))} B", flush=True)
        print(f"daemon RSS: {rss_cold:.0f} MB after the first sync, {rss:.0f} MB now, peak {hwm:.0f} MB", flush=True)
    finally:
        for p in (daemon, server):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


def mode_args(mode: str) -> list[str]:
    name, _, layout = mode.partition("-")
    return [name, "--nftables-layout", layout] if layout else [name]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--mode", default="iptables",
                    help="iptables, nftables or nftables-maps (nftables mode with --nftables-layout maps); "
                    "several, comma-separated, run one after the other")
    ap.add_argument("--changes", type=int, default=9)
    ap.add_argument("--timeline", action="store_true", help="print the cold start's log lines with their times")
    ap.add_argument("--sync-period", type=int, default=60, help="seconds; the warm full sync comes this long "
                    "after the first")
    args = ap.parse_args()
    if os.environ.get("DMN_BENCH_INSIDE"):
        inside(args)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("bench_sync.py needs root (it creates a network namespace)")
    modes = args.mode.split(",")
    if unknown := [m for m in modes if m not in ("iptables", "nftables", "nftables-maps")]:
        raise SystemExit(f"--mode: unknown mode(s) {', '.join(unknown)}; use iptables, nftables or nftables-maps")
    rc = 0
    for mode in modes:
        args.mode = mode
        rc = rc or outside(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
