"""A client run in the test cgroup (and namespace): connects or sends to an address N times
and prints, as JSON, what each attempt saw. Its own process, since the BPF hooks act on the
processes of a cgroup and the test process must stay outside it."""

from __future__ import annotations

import errno
import json
import socket
import sys
import time


def family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def tcp(ip: str, port: int) -> dict:
    with socket.socket(family(ip), socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect((ip, port))
        peer = s.getpeername()[:2]
        return {"served": s.recv(200).decode(), "peer": list(peer)}


def udp(ip: str, port: int) -> dict:
    with socket.socket(family(ip), socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"query", (ip, port))
        data, src = s.recvfrom(200)
        return {"served": data.decode(), "source": list(src[:2])}


def udp_connected(ip: str, port: int) -> dict:
    with socket.socket(family(ip), socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect((ip, port))
        s.send(b"query")
        data, src = s.recvfrom(200)
        return {"served": data.decode(), "source": list(src[:2]), "peer": list(s.getpeername()[:2])}


def main() -> None:
    kind, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    fn = {"tcp": tcp, "udp": udp, "udpc": udp_connected}[kind]
    out = []
    for _ in range(n):
        try:
            out.append(fn(ip, port))
        except OSError as e:
            out.append({"error": errno.errorcode.get(e.errno or 0, str(e))})
        if pause:
            time.sleep(pause)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
