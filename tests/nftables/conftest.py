"""Network namespaces for nftables-mode kernel tests: created per test, always removed."""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
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
