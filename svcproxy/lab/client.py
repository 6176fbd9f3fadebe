"""The lab's client: real TCP/UDP connections from inside one namespace, one JSON line each.

Runs as a plain script inside a pod, node or outside namespace (stdlib only, starts fast):
`python client.py --target 172.30.0.10:80 [--udp] [-n 20] [--timeout 1.0] [--source IP]`.
Every attempt uses a fresh socket (a new source port, so the proxy's random choice is redrawn)
and prints {"ok", "served_by", "pod_ip", "source", "error", "ms"}. A refusal (TCP RST or ICMP
port unreachable: ECONNREFUSED) arrives at once and is reported as "refused"; no answer within
the timeout is a "timeout" (what a DROP looks like). Keeping the two apart is the point.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import time


def _error_name(e: OSError) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, socket.timeout | TimeoutError):
        return "timeout"
    if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(e, ConnectionResetError):
        return "reset"
    return errno.errorcode.get(e.errno or 0, str(e))


def _parse(line: str) -> dict:
    parts = line.split()
    if len(parts) != 3:
        return {"ok": False, "error": f"bad answer {line!r}"}
    return {"ok": True, "served_by": parts[0], "pod_ip": parts[1], "source": parts[2]}


def attempt(host: str, port: int, udp: bool, timeout: float, source: str | None) -> dict:
    """One connection (or datagram) and its answer."""
    start = time.monotonic()
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
            s.settimeout(timeout)
            if source:
                s.bind((source, 0))
            s.connect((host, port))
            if udp:
                s.send(b"hello\n")
                data = s.recv(2048)
            else:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(2048)
                    if not chunk:
                        break
                    data += chunk
        result = _parse(data.decode(errors="replace").strip())
    except OSError as e:
        result = {"ok": False, "error": _error_name(e)}
    result["ms"] = round((time.monotonic() - start) * 1000, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="ip:port")
    p.add_argument("--udp", action="store_true")
    p.add_argument("-n", "--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--source", default=None, help="bind this local address first")
    a = p.parse_args(argv)
    host, _, port = a.target.rpartition(":")
    for _ in range(a.count):
        print(json.dumps(attempt(host.strip("[]"), int(port), a.udp, a.timeout, a.source)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
