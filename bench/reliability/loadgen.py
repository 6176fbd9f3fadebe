"""Steady load on one address: a new TCP connection (or one UDP datagram) every few ms, until stdin closes.

Runs inside a lab namespace as a plain script (stdlib only, so it starts fast):
`python loadgen.py tcp 172.30.0.10 80`. Every attempt must get the lab pod's one-line answer;
a failed attempt is printed at once as a JSON line `{"t": ..., "error": ...}`, and when stdin
closes the totals follow: `{"attempts": N, "failures": F, "lost": L, "served": {pod: count}}`.

A UDP datagram without an answer within 0.5 s is "lost" (`{"t": ..., "lost": true}`) and asked
again once, as a DNS resolver does; the attempt fails only when the second one gets no answer
either. Lost datagrams are reported beside failures, never hidden in them.

UDP keeps one socket (one conntrack flow) as a real client does, so it stays on one endpoint
until the proxy removes that endpoint's conntrack entries.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import Counter

GAP = {"tcp": 0.005, "udp": 0.01}  # seconds between attempts
TIMEOUT = {"tcp": 2.0, "udp": 0.5}  # an answer later than this is a failure


def main() -> None:
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM) if kind == "udp" else None
    if udp:
        udp.settimeout(TIMEOUT["udp"])
    attempts, served = 0, Counter()
    failures = lost = 0
    while not done.is_set():
        t = time.time()
        try:
            if udp:
                try:
                    udp.sendto(b"ping", (host, port))
                    reply = udp.recv(256)
                except TimeoutError:  # one datagram lost: ask again once, as a DNS resolver does
                    lost += 1
                    print(json.dumps({"t": t, "lost": True}), flush=True)
                    udp.sendto(b"ping", (host, port))
                    reply = udp.recv(256)
            else:
                with socket.create_connection((host, port), timeout=TIMEOUT["tcp"]) as s:
                    s.settimeout(TIMEOUT["tcp"])
                    reply = s.recv(256)
            if not reply:
                raise OSError("connection closed without an answer")
            served[reply.split()[0].decode()] += 1
        except OSError as e:
            failures += 1
            print(json.dumps({"t": t, "error": f"{type(e).__name__}: {e}"}), flush=True)
        attempts += 1
        time.sleep(GAP[kind])
    print(json.dumps({"attempts": attempts, "failures": failures, "lost": lost, "served": dict(served)}), flush=True)


if __name__ == "__main__":
    main()
