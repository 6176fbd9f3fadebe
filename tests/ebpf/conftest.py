"""ebpf-mode kernel tests: a network namespace, a child cgroup of the cgroup v2 hierarchy and
a pin directory, each made per test and always removed. The BPF programs attach only to the
test's cgroup; clients run as processes placed in it (or, to test the nftables path, not)."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from svcproxy.config import NodeConfig
from svcproxy.dataplane.ebpf import EbpfDataplane, loader
from svcproxy.dataplane.nftables import NftablesDataplane

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
CLIENT = Path(__file__).with_name("client.py")
NODE_IP, NODE_IP6 = "10.0.0.1", "fd00::1"
ENDPOINTS = ("10.0.1.10", "10.0.1.11", "10.0.1.12")
ENDPOINTS6 = ("fd00:1::10", "fd00:1::11", "fd00:1::12")
TCP_PORT, UDP_PORT = 8080, 5353
CFG = NodeConfig(hostname="test-node", node_ips=(NODE_IP,), cluster_cidrs=("10.0.0.0/8",))
CFG6 = replace(CFG, ip_family=6, node_ips=(NODE_IP6,), cluster_cidrs=("fd00::/48",))

_ids = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def _tag() -> str:
    return f"{os.getpid()}-{next(_ids)}"


def setns(fd: int) -> None:
    if _libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns")


@dataclass
class Node:
    """The test's node: a namespace with endpoint servers, a cgroup, a pin directory."""

    ns: str
    cgroup: Path
    pins: Path
    made: list[EbpfDataplane] = field(default_factory=list)  # closed when the test ends

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], check=check, capture_output=True, text=True)

    def client(self, kind: str, ip: str, port: int, n: int = 1, *, in_cgroup: bool = True,
               pause: float = 0.0) -> list[dict]:
        """Run the client n times against ip:port, in the cgroup unless told otherwise."""
        cmd = f"exec ip netns exec {self.ns} {sys.executable} {CLIENT} {kind} {ip} {port} {n} {pause}"
        if in_cgroup:
            cmd = f"echo $$ > {self.cgroup}/cgroup.procs && {cmd}"
        done = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def dataplane(self, cfg: NodeConfig = CFG) -> EbpfDataplane:
        """An ebpf dataplane on this node's cgroup and pins, its nftables part in the namespace
        (the calling thread must be inside it: see the `inside` fixture)."""
        outside = NftablesDataplane(replace(cfg, nftables_layout="maps"))
        dp = EbpfDataplane(cfg, outside=outside, cgroup=self.cgroup, pin_root=self.pins)
        self.made.append(dp)
        return dp


def _serve(stop: threading.Event, socks: list[socket.socket]) -> None:
    """TCP: answer each connection with the server's own address. UDP: answer each datagram so."""
    while not stop.is_set():
        for s in socks:
            try:
                if s.type == socket.SOCK_STREAM:
                    c, _ = s.accept()
                    c.sendall(s.getsockname()[0].encode())
                    c.close()
                else:
                    _, src = s.recvfrom(200)
                    s.sendto(s.getsockname()[0].encode(), src)
            except (BlockingIOError, TimeoutError):
                continue
            except OSError:
                if stop.is_set():
                    return
        time.sleep(0.001)


def _setup_namespace(ns: str) -> None:
    def run(*a: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, *a], check=True, capture_output=True)

    run("ip", "link", "set", "lo", "up")
    run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")  # the node's "uplink"
    run("ip", "link", "set", "d0", "up")
    run("ip", "link", "set", "d1", "up")
    run("ip", "addr", "add", f"{NODE_IP}/24", "dev", "d0")
    run("ip", "addr", "add", f"{NODE_IP6}/64", "dev", "d0", "nodad")
    run("ip", "route", "add", "default", "dev", "d0")
    run("ip", "-6", "route", "add", "default", "dev", "d0")
    for ip in ENDPOINTS:
        run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
    for ip in ENDPOINTS6:
        run("ip", "addr", "add", f"{ip}/128", "dev", "lo", "nodad")


@pytest.fixture
def node() -> Iterator[Node]:
    if not CGROUP_ROOT.is_dir():
        pytest.skip(f"no cgroup v2 hierarchy at {CGROUP_ROOT}")
    tag = _tag()
    n = Node(f"ebx-{tag}", CGROUP_ROOT / f"svcproxy-test-{tag}", Path(f"/sys/fs/bpf/svcproxy-test-{tag}"))
    subprocess.run(["ip", "netns", "add", n.ns], check=True)
    n.cgroup.mkdir()
    stop = threading.Event()
    socks: list[socket.socket] = []
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        _setup_namespace(n.ns)
        fd = os.open(f"/run/netns/{n.ns}", os.O_RDONLY)
        setns(fd)
        os.close(fd)
        try:
            for ip in (*ENDPOINTS, *ENDPOINTS6):
                fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
                t = socket.create_server((ip, TCP_PORT), family=fam)
                u = socket.socket(fam, socket.SOCK_DGRAM)
                u.bind((ip, UDP_PORT))
                for s in (t, u):
                    s.setblocking(False)
                    socks.append(s)
        finally:
            setns(home)
        server = threading.Thread(target=_serve, args=(stop, socks), daemon=True)
        server.start()
        yield n
    finally:
        stop.set()
        for s in socks:
            s.close()
        os.close(home)
        for dp in n.made:
            dp.close()
        loader.remove(n.pins)
        _remove_cgroup(n.cgroup)
        subprocess.run(["ip", "netns", "del", n.ns], check=False)


def _remove_cgroup(cg: Path) -> None:
    """Kill what is left in the test's cgroup, then remove it (its programs go with it)."""
    for _ in range(50):
        pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()] if cg.exists() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    shutil.rmtree(cg, ignore_errors=True)


@pytest.fixture
def inside(node: Node) -> Iterator[Node]:
    """The test body runs inside the node's namespace (nftables calls land there)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{node.ns}", os.O_RDONLY)
    try:
        setns(fd)
        yield node
    finally:
        setns(home)
        os.close(home)
        os.close(fd)
