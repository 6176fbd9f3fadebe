"""Network namespaces for nftables-mode kernel tests: created per test, always removed."""

from __future__ import annotations

import ctypes
import itertools
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

_ids = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    """os.setns arrived in Python 3.12; call libc's directly."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=check, capture_output=True,
                              text=True, input=input)

    def nft(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return self.run("nft", *args, check=check, input=input)

    def enter(self) -> None:
        """Move this (test) process into the namespace; the fixture moves it back."""
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            setns(fd)
        finally:
            os.close(fd)


def make_netns(tag: str) -> Netns:
    name = f"nfx-{tag}-{os.getpid()}-{next(_ids)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return Netns(name)


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = make_netns("t")
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


@pytest.fixture
def inside(netns: Netns) -> Iterator[Netns]:
    """Run the test body inside the namespace (so NftablesDataplane's nft calls land there)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        netns.enter()
        yield netns
    finally:
        setns(home)
        os.close(home)


BACKENDS = ("10.0.1.10", "10.0.1.11", "fd00:10::10", "fd00:10::11")


@pytest.fixture
def backends(inside: Netns) -> Iterator[None]:
    """TCP servers on BACKENDS port 8080 (on a veth) that answer with their address."""
    inside.run("ip", "link", "add", "nftd0", "type", "veth", "peer", "name", "nftd1")
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "nftd0", "up"], ["ip", "link", "set", "nftd1", "up"],
                ["ip", "route", "add", "172.30.0.0/16", "dev", "nftd0"]):
        inside.run(*cmd)
    for ip in BACKENDS:
        inside.run("ip", "addr", "add", f"{ip}/{24 if '.' in ip else 64}", "dev", "nftd0", "nodad")
    inside.run("ip", "-6", "route", "add", "fd00:30::/64", "dev", "nftd0")
    socks, stop = [], threading.Event()
    for ip in BACKENDS:
        s = socket.create_server((ip, 8080), family=socket.AF_INET6 if ":" in ip else socket.AF_INET)
        s.settimeout(0.2)
        socks.append(s)

    def serve(s: socket.socket) -> None:
        while not stop.is_set():
            try:
                c, _ = s.accept()
            except OSError:
                continue
            c.sendall(s.getsockname()[0].encode())
            c.close()

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s in socks:
            s.close()


def fetch(ip: str, port: int = 80) -> str:
    with socket.create_connection((ip, port), timeout=2) as c:
        return c.recv(100).decode()
