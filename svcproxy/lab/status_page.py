"""`svcproxy lab status --page NODE`: a lab node's status page, reachable from this machine.

The page listens on the node namespace's own loopback (127.0.0.1:10263, as on a real node), so a
browser here cannot reach it directly. This forwards 127.0.0.1:PORT here to it: each accepted
connection is handed, as stdin and stdout, to a small relay started inside the namespace
(`ip netns exec ... python -m svcproxy.lab.status_page relay`), which connects to the page and
copies bytes both ways. Nothing is routed and no address is added: the host's network is untouched.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading

from ..runtime.status import DEFAULT_PORT

PAGE_ADDRESS = ("127.0.0.1", DEFAULT_PORT)  # svcproxy run's default --status-bind-address


class PageForward:
    """127.0.0.1:port in this namespace -> the status page inside namespace ns."""

    def __init__(self, ns: str, port: int = 0, target: tuple[str, int] = PAGE_ADDRESS) -> None:
        self.ns, self.target = ns, target
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._stopped = False

    def serve_forever(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                relay = [sys.executable, "-m", "svcproxy.lab.status_page", "relay", *map(str, self.target)]
                subprocess.Popen(["ip", "netns", "exec", self.ns, *relay], stdin=conn, stdout=conn,
                                 stderr=subprocess.DEVNULL, close_fds=True)

    def start(self) -> PageForward:
        threading.Thread(target=self.serve_forever, daemon=True, name=f"page forward {self.ns}").start()
        return self

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def relay(host: str, port: int) -> None:
    """Inside the namespace: stdin/stdout (the forwarded connection) <-> the page."""
    outside = socket.socket(fileno=0)
    inside = socket.create_connection((host, port), timeout=10)
    inside.settimeout(None)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=pump, args=(inside, outside), daemon=True)
    t.start()
    pump(outside, inside)
    t.join(60)


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    relay(sys.argv[2], int(sys.argv[3]))
