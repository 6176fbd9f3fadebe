"""Programs the end-to-end tests run inside their network namespaces (plain stdlib, no svcproxy).

    python nsprogs.py server              # pod side: reads "tcp IP PORT" / "udp IP PORT" / "stop IP"
    python nsprogs.py tcp-client IP PORT  # node side: connects every few ms, one JSON line per attempt
    python nsprogs.py udp-client IP PORT  # node side: one socket (fixed source port), one JSON line per reply

Servers answer with the address they were reached on, so the client sees which endpoint served it.
Clients run until stdin closes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time


def server() -> None:
    listeners: dict[str, list[socket.socket]] = {}

    def serve_tcp(s: socket.socket, ip: str) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(ip.encode() + b"\n")

    def serve_udp(s: socket.socket, ip: str) -> None:
        while True:
            try:
                _, peer = s.recvfrom(2048)
                s.sendto(ip.encode(), peer)
            except OSError:
                return

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] in ("tcp", "udp"):
            ip, port = words[1], int(words[2])
            kind = socket.SOCK_STREAM if words[0] == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(socket.AF_INET, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            if kind == socket.SOCK_STREAM:
                s.listen(128)
            target = serve_tcp if kind == socket.SOCK_STREAM else serve_udp
            threading.Thread(target=target, args=(s, ip), daemon=True).start()
            listeners.setdefault(ip, []).append(s)
        elif words[0] == "stop":
            for s in listeners.pop(words[1], []):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        print("ok", flush=True)


def _until_stdin_closes() -> threading.Event:
    done = threading.Event()

    def wait() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    return done


def tcp_client(ip: str, port: int) -> None:
    done = _until_stdin_closes()
    while not done.is_set():
        t = time.time()
        try:
            with socket.create_connection((ip, port), timeout=2) as s:
                s.settimeout(2)
                reply = s.recv(64).decode().strip()
            ev = {"t": t, "ok": bool(reply), "ep": reply}
        except OSError as e:
            ev = {"t": t, "ok": False, "error": str(e)}
        print(json.dumps(ev), flush=True)
        time.sleep(0.005)


def udp_client(ip: str, port: int) -> None:
    done = _until_stdin_closes()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    while not done.is_set():
        t = time.time()
        try:
            s.sendto(b"ping", (ip, port))
            reply, _ = s.recvfrom(64)
            ev = {"t": t, "ok": True, "ep": reply.decode()}
        except OSError as e:
            ev = {"t": t, "ok": False, "error": str(e)}
        print(json.dumps(ev), flush=True)
        time.sleep(0.02)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "server":
        server()
    elif cmd == "tcp-client":
        tcp_client(sys.argv[2], int(sys.argv[3]))
    elif cmd == "udp-client":
        udp_client(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
