"""Runs inside a test's network namespace (`ip netns exec`): drives a UserspaceDataplane in
this process against echo servers on loopback addresses, and prints what it saw as JSON.

Kept as a script so the test process never enters a namespace itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

from svcproxy.config import NodeConfig
from svcproxy.dataplane import dataplane
from svcproxy.model.load import load_text
from svcproxy.state import build_state

CFG = NodeConfig(hostname="n1", node_ips=("10.9.0.1",), cluster_cidrs=("10.0.0.0/16",))
SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec:
  type: NodePort
  clusterIP: 172.30.1.10
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}
  - {name: sig, protocol: SCTP, port: 99, targetPort: 99}
  - {name: busy, protocol: TCP, port: 81, targetPort: 8080, nodePort: 30081}
"""
SLICE = """
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: t, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353},
        {name: sig, protocol: SCTP, port: 99}, {name: busy, protocol: TCP, port: 8080}]
endpoints:
"""
ENDPOINTS = ("10.0.1.10", "10.0.1.11", "10.0.1.12")


def state(ips: tuple[str, ...]):
    text = SERVICES + SLICE + "".join(f"- {{addresses: [{ip}], nodeName: n1}}\n" for ip in ips)
    if not ips:
        text = text.replace("endpoints:\n", "endpoints: []\n")
    return build_state(load_text(text), CFG)


def echo_servers() -> None:
    """TCP: answers each line with '<its ip> <line>' on a kept-open connection; UDP likewise."""
    for ip in ENDPOINTS:
        srv = socket.create_server((ip, 8080))
        threading.Thread(target=_accept, args=(srv, ip), daemon=True).start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((ip, 5353))
        threading.Thread(target=_udp, args=(udp, ip), daemon=True).start()


def _accept(srv: socket.socket, ip: str) -> None:
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve, args=(conn, ip), daemon=True).start()


def _serve(conn: socket.socket, ip: str) -> None:
    with conn, conn.makefile("rwb") as f:
        for line in f:
            f.write(ip.encode() + b" " + line)
            f.flush()


def _udp(sock: socket.socket, ip: str) -> None:
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(ip.encode() + b" " + data, peer)


class Conn:
    def __init__(self, ip: str, port: int) -> None:
        self.sock = socket.create_connection((ip, port), timeout=2)
        self.f = self.sock.makefile("rwb")

    def ask(self, text: str = "hi") -> str:
        self.f.write(text.encode() + b"\n")
        self.f.flush()
        return self.f.readline().decode().split()[0]


def once(ip: str, port: int) -> str:
    c = Conn(ip, port)
    try:
        return c.ask()
    finally:
        c.sock.close()


def udp_ask(ip: str, port: int, source: str = "") -> tuple[str, str]:
    """(endpoint that answered, address the reply came from)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    if source:
        s.bind((source, 0))
    s.sendto(b"q", (ip, port))
    data, peer = s.recvfrom(2048)
    s.close()
    return data.decode().split()[0], peer[0]


def error_of(fn, *args) -> str:
    try:
        fn(*args)
    except OSError as e:
        return type(e).__name__
    return "none"


def main() -> None:
    logs: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: logs.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger("svcproxy").addHandler(handler)
    logging.getLogger("svcproxy").setLevel(logging.INFO)
    echo_servers()
    dp = dataplane("userspace", CFG)
    out: dict = {}
    blocker = socket.create_server(("0.0.0.0", 30081))  # another program holds busy's NodePort

    dp.sync(state(ENDPOINTS[:2]), None)
    out["listening"] = sorted(map(list, dp.listening))
    out["spread"] = sorted(once("172.30.1.10", 80) for _ in range(4))
    kept = Conn("172.30.1.10", 80)
    first = kept.ask()
    out["nodeport_tcp"] = once("10.9.0.1", 30080)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(300):  # both ends close: the proxy's sockets to both must close too
        once("172.30.1.10", 80)
    time.sleep(0.2)
    out["fds_gained_after_300"] = len(os.listdir("/proc/self/fd")) - fds
    # a wildcard UDP NodePort answers from the address the client wrote to
    out["nodeport_udp"] = [udp_ask("127.0.0.1", 30053), udp_ask("10.9.0.1", 30053, source="10.9.0.1")]

    # the endpoint the kept connection uses stays, the other goes, a new one comes: synced from
    # another thread while clients connect, as the daemon does
    remaining = (first, ENDPOINTS[2])
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                once("172.30.1.10", 80)
            except OSError as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        syncer = threading.Thread(target=dp.sync, args=(state(remaining), ["t/web"]))
        syncer.start()
        syncer.join()
    stop.set()
    for t in threads:
        t.join()
    out["failures_during_syncs"] = failures
    out["kept_after_change"] = [first, kept.ask(), kept.ask()]
    out["after_change"] = sorted(set(once("172.30.1.10", 80) for _ in range(6)))
    out["expected_after_change"] = sorted(remaining)

    # UDP: a session to an endpoint that left moves to one that remains
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    u.sendto(b"a", ("172.30.1.10", 53))
    before = u.recvfrom(100)[0].decode().split()[0]
    dp.sync(state((ENDPOINTS[2],)), ["t/web"])
    u.sendto(b"b", ("172.30.1.10", 53))
    out["udp_session"] = [before, u.recvfrom(100)[0].decode().split()[0]]

    # no endpoints: nothing listens, the kernel refuses at once
    dp.sync(state(()), ["t/web"])
    t0 = time.monotonic()
    out["empty_tcp"] = error_of(once, "172.30.1.10", 80)
    out["empty_ms"] = (time.monotonic() - t0) * 1000
    out["kept_after_empty"] = kept.ask()  # established connections outlive their listener

    out["busy_logs"] = [m for m in logs if "30081" in m]
    # someone removes a service address by hand: the next full sync puts it back
    subprocess.run(["ip", "addr", "del", "172.30.1.10/32", "dev", "svcproxy0"], check=True)
    dp.sync(state(ENDPOINTS), None)
    out["repaired"] = once("172.30.1.10", 80)
    blocker.close()
    dp.sync(state(ENDPOINTS), None)
    out["busy_after_release"] = ("TCP", "0.0.0.0", 30081) in dp.listening
    out["sctp_logs"] = [m for m in logs if "SCTP" in m]
    dp.cleanup()
    out["listening_after_cleanup"] = sorted(dp.listening)
    out["nodeport_after_cleanup"] = error_of(once, "10.9.0.1", 30080)
    print(json.dumps(out))
    sys.stdout.flush()


V6 = """
apiVersion: v1
kind: Service
metadata: {name: web6, namespace: t}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  clusterIP: fd00:30::10
  clusterIPs: [fd00:30::10]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web6-1, namespace: t, labels: {kubernetes.io/service-name: web6}}
addressType: IPv6
ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]
endpoints:
- {addresses: ["fd00:1::10"], nodeName: n1}
"""


def main_ipv6() -> None:
    """The same paths in IPv6: a /128 on svcproxy0, [::] NodePorts answering from the right address."""
    srv = socket.create_server(("fd00:1::10", 8080), family=socket.AF_INET6)
    threading.Thread(target=_accept, args=(srv, "fd00:1::10"), daemon=True).start()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("fd00:1::10", 5353))
    threading.Thread(target=_udp, args=(udp, "fd00:1::10"), daemon=True).start()
    cfg = NodeConfig(hostname="n1", ip_family=6, node_ips=("fd00:9::1",))
    dp = dataplane("userspace", cfg)
    dp.sync(build_state(load_text(V6), cfg), None)
    out = {"listening": sorted(map(list, dp.listening)), "cluster_tcp": once("fd00:30::10", 80),
           "nodeport_tcp": once("fd00:9::1", 30080)}
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.bind(("fd00:9::1", 0))
    s.sendto(b"q", ("fd00:9::1", 30053))
    data, peer = s.recvfrom(100)
    out["nodeport_udp"] = [data.decode().split()[0], peer[0]]
    dp.cleanup()
    print(json.dumps(out))


if __name__ == "__main__":
    main_ipv6() if sys.argv[1:] == ["ipv6"] else main()
