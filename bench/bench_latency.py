"""First-packet connect latency to one Service with 10, 1,000 and 10,000 Services programmed,
nftables mode beside iptables mode, in one run.

A "node" namespace routes between a client pod namespace and a server pod namespace and holds
the proxy's rules. The client opens fresh TCP connections to the target Service's ClusterIP
(each a new conntrack entry, so its SYN walks the nat rules) and times connect(). The target
Service sorts last, so iptables' linear KUBE-SERVICES walk passes every other service first.

Run as root: `.venv/bin/python bench/bench_latency.py [--sizes 10,1000,10000] [--samples 2000]`.
Namespaces and links are prefixed "nft" and removed at the end, also on failure.
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

P = f"nftl{os.getpid() % 10000}"
NODE, POD, SRV = f"{P}n", f"{P}p", f"{P}s"
TARGET_IP = "172.29.255.1"
SERVER_IP = "10.0.2.2"
CFG = NodeConfig(hostname="bench-node", node_ips=("10.0.1.1",), cluster_cidrs=("10.0.0.0/16",))

CLIENT = r"""
import socket, sys, time, json
n = int(sys.argv[1]); warm = 100; out = []
for i in range(n + warm):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    t = time.perf_counter_ns(); s.connect((sys.argv[2], int(sys.argv[3]))); d = time.perf_counter_ns() - t
    s.close()
    if i >= warm: out.append(d / 1000)
print(json.dumps(out))
"""

SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
"""


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def state(services: int) -> ProxyState:
    """services-1 filler Services (2 endpoints each, nowhere) plus the target, sorting last."""
    st = ProxyState()
    for i in range(services - 1):
        spn = ServicePortName(f"ns{i % 100}", f"svc{i}", "http", "TCP")
        ip = str(ipaddress.ip_address("172.30.0.0") + i + 1)
        eps = tuple(EndpointInfo(str(ipaddress.ip_address("10.1.0.0") + 2 * i + j), 8080) for j in range(2))
        st.services[f"ns{i % 100}/svc{i}"] = ServiceState(spn.service_key, (ServicePortInfo(spn, ip, 80, "TCP", 8080),),
                                                          {spn: eps})
    spn = ServicePortName("zzz-bench", "target", "http", "TCP")
    st.services["zzz-bench/target"] = ServiceState(
        "zzz-bench/target", (ServicePortInfo(spn, TARGET_IP, 80, "TCP", 8080),), {spn: (EndpointInfo(SERVER_IP, 8080),)})
    return st


def setup() -> subprocess.Popen:
    for ns in (NODE, POD, SRV):
        sh("ip", "netns", "add", ns)
    for side, ns, net in (("p", POD, "10.0.1"), ("s", SRV, "10.0.2")):
        a, b = f"{P}{side}0", f"{P}{side}1"
        sh("ip", "link", "add", a, "netns", NODE, "type", "veth", "peer", "name", b, "netns", ns)
        sh("ip", "addr", "add", f"{net}.1/24", "dev", a, ns=NODE)
        sh("ip", "link", "set", a, "up", ns=NODE)
        sh("ip", "addr", "add", f"{net}.2/24", "dev", b, ns=ns)
        sh("ip", "link", "set", b, "up", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "route", "add", "default", "via", f"{net}.1", ns=ns)
    sh("ip", "link", "set", "lo", "up", ns=NODE)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=NODE)
    return subprocess.Popen(["ip", "netns", "exec", SRV, sys.executable, "-c", SERVER])


def teardown(server: subprocess.Popen | None) -> None:
    if server is not None:
        server.kill()
        server.wait()
    for ns in (NODE, POD, SRV):
        sh("ip", "netns", "del", ns, check=False)


def cfg_code(mode: str) -> str:
    """Python for this mode's (dataplane name, node config); "nftables-maps" is nftables with
    --nftables-layout maps."""
    name, _, layout = mode.partition("-")
    cfg = f"dataclasses.replace(b.CFG, nftables_layout={layout!r})" if layout else "b.CFG"
    return f"import dataclasses; dp = dataplane({name!r}, {cfg}); "


def program(mode: str, services: int) -> float:
    """Program the node namespace (in a child process inside it); returns seconds taken."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys, time; sys.path.insert(0, {here!r}); import bench_latency as b; "
            "from svcproxy.dataplane import dataplane; t = time.time(); " + cfg_code(mode) +
            f"dp.sync(b.state({services})); print(time.time() - t)")
    return float(sh(sys.executable, "-c", code, ns=NODE).stdout.split()[-1])


def clear(mode: str) -> None:
    code = "from svcproxy.dataplane import dataplane; import bench_latency as b; " + cfg_code(mode) + "dp.cleanup()"
    subprocess.run(["ip", "netns", "exec", NODE, sys.executable, "-c", code], check=True,
                   cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True)


def measure(samples: int, target: str = TARGET_IP) -> list[float]:
    port = "8080" if target == SERVER_IP else "80"
    out = sh(sys.executable, "-c", CLIENT, str(samples), target, port, ns=POD).stdout
    return sorted(json.loads(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--modes", default="nftables,nftables-maps,iptables",
                    help="nftables = kube-proxy layout, nftables-maps = --nftables-layout maps")
    ap.add_argument("--rounds", type=int, default=2, help="repeat the whole sweep (evens out machine noise)")
    a = ap.parse_args()
    server = None
    samples: dict[tuple[str, int], list[float]] = {}
    try:
        server = setup()
        time.sleep(0.3)
        measure(2000, SERVER_IP)  # warm up (straight to the server): caches, CPU frequency, the server
        for rnd in range(a.rounds):
            modes = a.modes.split(",")
            for size in (int(s) for s in a.sizes.split(",")):
                for mode in modes if rnd % 2 == 0 else reversed(modes):
                    took = program(mode, size)
                    lat = measure(a.samples)
                    clear(mode)
                    samples.setdefault((mode, size), []).extend(lat)
                    print(f"round {rnd + 1} {mode:9} {size:>6} services: median {lat[len(lat) // 2]:7.1f} us  "
                          f"p99 {lat[int(len(lat) * 0.99)]:7.1f} us  (programmed in {took:.1f} s)", flush=True)
    finally:
        teardown(server)
    print("\n| services | mode | median (us) | p99 (us) | samples |\n|---:|---|---:|---:|---:|")
    for (mode, size), lat in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lat.sort()
        print(f"| {size} | {mode} | {lat[len(lat) // 2]:.1f} | {lat[int(len(lat) * 0.99)]:.1f} | {len(lat)} |")


if __name__ == "__main__":
    main()
