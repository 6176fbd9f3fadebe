"""userspace mode beside iptables mode (and no proxy at all) for the same Service, in one run.

Three namespaces, no loopback on the path: a client pod, a node running `svcproxy run`, and a
server pod, routed through the node. The client measures
- connect+request latency: a fresh TCP connection, one small request, the reply, close
  (sequential; p50/p99 and connections per second);
- parallel rate: 8 such clients at once, connections per second;
- throughput: one connection streaming 256 MiB from the server, MiB/s.
The same Service (ClusterIP 172.31.0.10:80 -> pod 10.78.0.2:8080) is served by iptables mode,
then by userspace mode, and the pod is also reached directly as the baseline; every run gets
freshly made namespaces, and the runs are interleaved over a few rounds (median reported).

It also times userspace mode's own sync (open the listeners, put the addresses on svcproxy0)
for 1,000 and 10,000 services, first and after a one-endpoint change.

Run as root: `.venv/bin/python bench/bench_userspace.py [--samples 2000] [--mib 256] [--rounds 3]
[--sync-sizes 1000,10000]`.
Namespaces are prefixed "uspb" and removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVCPROXY = str(ROOT / ".venv" / "bin" / "svcproxy")
P = "uspb"
CLIENT_NS, NODE_NS, POD_NS = f"{P}-c", f"{P}-n", f"{P}-p"
CLIENT_IP, NODE_IP, NODE_POD_GW, POD_IP = "10.77.0.2", "10.77.0.1", "10.78.0.1", "10.78.0.2"
CLUSTER_IP, PORT, TARGET_PORT = "172.31.0.10", 80, 8080
MANIFEST = f"""
apiVersion: v1
kind: Service
metadata: {{name: bench, namespace: default}}
spec:
  clusterIP: {CLUSTER_IP}
  ports: [{{name: http, protocol: TCP, port: {PORT}, targetPort: {TARGET_PORT}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: bench-1, namespace: default, labels: {{kubernetes.io/service-name: bench}}}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: {TARGET_PORT}}}]
endpoints:
- {{addresses: [{POD_IP}], nodeName: other-node, conditions: {{ready: true}}}}
"""


# -- the two ends (run inside their namespaces as `bench_userspace.py server|client`) ---------
def server() -> None:
    """'r\\n' -> a short reply then close; 'bulk N\\n' -> N bytes."""
    srv = socket.create_server(("0.0.0.0", TARGET_PORT), backlog=4096)
    chunk = memoryview(b"x" * (1 << 20))

    def handle(conn: socket.socket) -> None:
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                data = conn.recv(64)
                if not data:
                    return
                line += data
            if line.startswith(b"bulk"):
                left = int(line.split()[1])
                while left > 0:
                    left -= conn.send(chunk[:min(left, len(chunk))])
            else:
                conn.sendall(b"ok\n")

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def request(ip: str, port: int, source: str) -> float:
    t = time.perf_counter()
    with socket.create_connection((ip, port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(b"r\n")
        if not s.recv(16):
            raise OSError("empty reply")
    return time.perf_counter() - t


def client(ip: str, port: int, samples: int, mib: int, source: str) -> None:
    for _ in range(100):  # warm-up
        request(ip, port, source)
    lat = [request(ip, port, source) for _ in range(samples)]
    parallel, per = 8, max(samples // 8, 50)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda: [request(ip, port, source) for _ in range(per)])
               for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    par_rate = parallel * per / (time.perf_counter() - t0)
    size = mib << 20
    with socket.create_connection((ip, port), timeout=10, source_address=(source, 0)) as s:
        t0 = time.perf_counter()
        s.sendall(f"bulk {size}\n".encode())
        got = 0
        buf = bytearray(1 << 20)
        while got < size:
            n = s.recv_into(buf)
            if not n:
                raise OSError(f"stream ended after {got} bytes")
            got += n
        bulk_s = time.perf_counter() - t0
    lat.sort()
    print(json.dumps({"p50_ms": statistics.median(lat) * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
                      "seq_rate": len(lat) / sum(lat), "par_rate": par_rate, "mib_s": mib / bulk_s}))


def sync_times(services: int) -> None:
    """Inside a namespace: UserspaceDataplane.sync for `services` ClusterIP+NodePort services
    (3 endpoints each): the first sync, then a one-endpoint change."""
    from dataclasses import replace

    from svcproxy.config import NodeConfig
    from svcproxy.dataplane import dataplane
    from svcproxy.state import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName, ServiceState

    cfg = NodeConfig(hostname="bench-node", node_ips=(NODE_IP,))
    st = ProxyState()
    for i in range(services):
        name = ServicePortName("bench", f"s{i}", "http", "TCP")
        port = ServicePortInfo(name, f"172.31.{i // 250}.{i % 250 + 1}", 80, "TCP", 8080,
                               node_port=30000 + i if i < 2000 else 0)
        eps = tuple(EndpointInfo(f"10.78.{i // 250}.{i % 250 + j}", 8080) for j in range(3))
        st.services[name.service_key] = ServiceState(name.service_key, (port,), {name: eps})
    dp = dataplane("userspace", cfg)
    t0 = time.perf_counter()
    dp.sync(st, None)
    first = time.perf_counter() - t0
    key = "bench/s0"
    svc = st.services[key]
    (spn, eps), = svc.endpoints.items()
    changed = ProxyState(services={**st.services, key: replace(svc, endpoints={spn: eps[:2]})})
    t0 = time.perf_counter()
    dp.sync(changed, [key])
    one = time.perf_counter() - t0
    print(json.dumps({"services": services, "listeners": len(dp.listening), "first_s": first, "one_ms": one * 1e3,
                      "fds": len(os.listdir("/proc/self/fd"))}))
    dp.cleanup()


# -- the harness ------------------------------------------------------------------------------
def sh(*cmd: str, ns: str | None = None, check: bool = True, input: str | None = None) -> str:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(argv, check=check, capture_output=True, text=True, input=input).stdout


def build() -> None:
    """The three namespaces, their links and routes, and the pod's server."""
    for ns in (CLIENT_NS, NODE_NS, POD_NS):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", NODE_NS, "-batch", "-", input="\n".join([
        f"link add {P}-c type veth peer name eth0 netns {CLIENT_NS}",
        f"link add {P}-p type veth peer name eth0 netns {POD_NS}",
        f"addr add {NODE_IP}/24 dev {P}-c", f"addr add {NODE_POD_GW}/24 dev {P}-p",
        f"link set {P}-c up", f"link set {P}-p up"]) + "\n")
    for ns, ip, gw in ((CLIENT_NS, CLIENT_IP, NODE_IP), (POD_NS, POD_IP, NODE_POD_GW)):
        sh("ip", "-n", ns, "-batch", "-", input=f"addr add {ip}/24 dev eth0\nlink set eth0 up\n"
                                                 f"route add default via {gw}\n")
    sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", ns=NODE_NS)
    subprocess.Popen(["ip", "netns", "exec", POD_NS, sys.executable, __file__, "server"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code = f"import socket; socket.create_connection(({POD_IP!r}, {TARGET_PORT}), timeout=0.3).close()"
    for _ in range(100):
        if subprocess.run(["ip", "netns", "exec", CLIENT_NS, sys.executable, "-c", code],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("the pod's server did not start")


def teardown() -> None:
    for ns in (CLIENT_NS, NODE_NS, POD_NS):
        for pid in sh("ip", "netns", "pids", ns, check=False).split():
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def wait_answer(timeout: float = 15.0) -> None:
    code = f"import socket; socket.create_connection(({CLUSTER_IP!r}, {PORT}), timeout=0.3).close()"
    deadline = time.monotonic() + timeout
    while subprocess.run(["ip", "netns", "exec", CLIENT_NS, sys.executable, "-c", code],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not answer")
        time.sleep(0.1)


def measure(ip: str, port: int, samples: int, mib: int) -> dict:
    out = sh(sys.executable, __file__, "client", ip, str(port), str(samples), str(mib), CLIENT_IP, ns=CLIENT_NS)
    return json.loads(out)


def with_proxy(mode: str, manifest: Path, samples: int, mib: int) -> dict:
    # the log is not beside the manifest: the daemon watches the manifest's directory
    log = open(manifest.parent.parent / f"{mode}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(["ip", "netns", "exec", NODE_NS, SVCPROXY, "run", "-f", str(manifest),
                             "--proxy-mode", mode, "--hostname-override", "bench-node", "--node-ip", NODE_IP,
                             "--cluster-cidr", "10.78.0.0/24", "--healthz-bind-address", "",
                             "--metrics-bind-address", "", "--conntrack-max-per-core=0"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_answer()
        return measure(CLUSTER_IP, PORT, samples, mib)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="each figure is the median over the rounds")
    ap.add_argument("--sync-sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1000, 10000],
                    help="service counts for the sync timing (comma-separated)")
    args = ap.parse_args()
    teardown()
    work = Path(tempfile.mkdtemp(prefix=f"{P}-"))
    manifest = work / "manifests" / "bench.yaml"
    manifest.parent.mkdir()
    manifest.write_text(MANIFEST)
    try:
        runs: dict[str, list[dict]] = {"direct to the pod": [], "iptables": [], "userspace": []}
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits every path alike
            for name in runs:
                # fresh namespaces for every run: what one run leaves in the kernel (TIME_WAIT
                # sockets, conntrack entries) must not slow the next one down
                build()
                try:
                    if name == "direct to the pod":
                        runs[name].append(measure(POD_IP, TARGET_PORT, args.samples, args.mib))
                    else:
                        runs[name].append(with_proxy(name, manifest, args.samples, args.mib))
                finally:
                    teardown()
        rows = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    finally:
        teardown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'path':<18} {'p50 ms':>7} {'p99 ms':>7} {'conn/s seq':>11} {'conn/s x8':>10} {'MiB/s':>8}")
    for name, r in rows.items():
        print(f"{name:<18} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['seq_rate']:11.0f} {r['par_rate']:10.0f} "
              f"{r['mib_s']:8.0f}")
    print(f"({args.samples} sequential connect+request+close, 8 parallel clients, one {args.mib} MiB stream; "
          f"median of {args.rounds} rounds)")
    print("\nuserspace sync (listeners opened/closed, service addresses on svcproxy0):")
    for n in args.sync_sizes:
        sh("ip", "netns", "add", NODE_NS)
        try:
            r = json.loads(sh(sys.executable, __file__, "sync-in-netns", str(n), ns=NODE_NS))
        finally:
            teardown()
        print(f"  {n:>6} services, {r['listeners']:>6} listeners: first sync {r['first_s']:.2f} s, "
              f"one-endpoint change {r['one_ms']:.1f} ms, {r['fds']} open files")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sync-in-netns":
        sync_times(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "server":
        server()
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
