"""A pod's workload in the lab: answers every TCP connection and UDP datagram with one line.

The line is `<pod-name> <pod-ip> <source-ip>:<source-port>`: who served, and which source the
pod saw (the client's own address, or a node's address where the proxy masqueraded).

Runs inside the pod's network namespace as a plain script (stdlib only, no package import, so
it starts fast): `python server.py --name web-1-10 --ip 10.0.1.10 --tcp 8080 --udp 5353
--ready-file PATH`. It binds every port first, then writes the ready file, so the lab knows
the pod is serving.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import sys


def answer(name: str, ip: str, peer: tuple) -> bytes:
    return f"{name} {ip} {peer[0]}:{peer[1]}\n".encode()


def _socket(family: int, kind: int, port: int) -> socket.socket:
    s = socket.socket(family, kind)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 has its own socket
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        s.listen(512)
    s.setblocking(False)
    return s


def serve(name: str, ip: str, tcp_ports: list[int], udp_ports: list[int], ready_file: str | None,
          ip6: str = "") -> None:
    """ip6: a dual-stack pod's IPv6 address; then every port answers on both families, each
    answer naming the pod's address of the family it came in on."""
    sel = selectors.DefaultSelector()
    families = [(socket.AF_INET, ip), *([(socket.AF_INET6, ip6)] if ip6 else [])]
    for family, addr in families:
        for port in tcp_ports:
            sel.register(_socket(family, socket.SOCK_STREAM, port), selectors.EVENT_READ, ("tcp", addr))
        for port in udp_ports:
            sel.register(_socket(family, socket.SOCK_DGRAM, port), selectors.EVENT_READ, ("udp", addr))
    if ready_file:
        with open(ready_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(ready_file + ".tmp", ready_file)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            kind, addr = key.data
            try:
                if kind == "tcp":
                    conn, peer = sock.accept()
                    with conn:
                        conn.setblocking(True)
                        conn.settimeout(1.0)
                        conn.sendall(answer(name, addr, peer))
                else:
                    _, peer = sock.recvfrom(2048)
                    sock.sendto(answer(name, addr, peer), peer)
            except OSError:
                continue  # a client that went away must not stop the pod


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--ip", required=True)
    p.add_argument("--ip6", default="", help="the pod's IPv6 address (dual-stack labs)")
    p.add_argument("--tcp", type=int, action="append", default=[])
    p.add_argument("--udp", type=int, action="append", default=[])
    p.add_argument("--ready-file")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(a.name, a.ip, sorted(set(a.tcp)), sorted(set(a.udp)), a.ready_file, a.ip6)


if __name__ == "__main__":
    main()
