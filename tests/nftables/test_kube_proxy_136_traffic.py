"""kube-proxy 1.36's shape with real TCP traffic in network namespaces: the numgen map DNAT
spreads a ClusterIP over its endpoints, and a pod reaching itself through its own service
is masqueraded by @hairpin-connections (it sees the node's address, not its own)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from svcproxy.dataplane.nftables import NftablesDataplane
from svcproxy.lab.netns import scratch_namespace

from .conftest import Netns, fetch
from .helpers import CFG, service, state_of

pytestmark = pytest.mark.kernel

POD, NODE_SIDE = "10.0.5.20", "10.0.5.1"
SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 8080))
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
CLIENT = """
import socket
with socket.create_connection(("172.30.0.7", 80), timeout=3) as c:
    print(c.recv(100).decode())
"""


def test_cluster_ip_spreads_over_endpoints(inside: Netns, backends: None) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(service("a", "172.30.0.1", ["10.0.1.10", "10.0.1.11"])))
    assert "dnat ip to numgen random mod 2 map" in inside.nft("list", "table", "ip", "kube-proxy").stdout
    seen = [fetch("172.30.0.1") for _ in range(40)]
    assert set(seen) == {"10.0.1.10", "10.0.1.11"}
    assert min(seen.count(ip) for ip in set(seen)) >= 5  # both drawn, roughly evenly (p < 1e-6 to fail)


@pytest.fixture
def pod(inside: Netns) -> Iterator[str]:
    """A pod namespace on a veth of the node (inside), with a server answering with its peer."""
    with scratch_namespace("hp136") as ns:
        inside.run("ip", "link", "add", "hpn0", "type", "veth", "peer", "name", "hpp0", "netns", ns)
        for cmd in (["ip", "addr", "add", f"{NODE_SIDE}/24", "dev", "hpn0"], ["ip", "link", "set", "hpn0", "up"],
                    ["ip", "link", "set", "lo", "up"], ["sysctl", "-qw", "net.ipv4.ip_forward=1"]):
            inside.run(*cmd)
        for cmd in (["ip", "addr", "add", f"{POD}/24", "dev", "hpp0"], ["ip", "link", "set", "hpp0", "up"],
                    ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", NODE_SIDE]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER])
        try:
            time.sleep(0.3)
            yield ns
        finally:
            server.kill()
            server.wait()


def from_pod(ns: str) -> str:
    """What the server saw as the client's address; "" when the connection failed."""
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT], capture_output=True,
                         text=True, timeout=10)
    return out.stdout.strip() if out.returncode == 0 else ""


def test_hairpin_is_masqueraded_through_the_set(inside: Netns, pod: str) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(service("h", "172.30.0.7", [POD], local=(POD,))))
    listing = inside.nft("list", "table", "ip", "kube-proxy").stdout
    assert f"{POD} . {POD} . tcp . 8080" in listing  # @hairpin-connections
    assert from_pod(pod) == NODE_SIDE  # masqueraded: the pod sees the node, not itself
    # without the element the pod answers itself directly (never un-DNATed): the connection
    # fails, so it is the set that made it work
    inside.nft("delete", "element", "ip", "kube-proxy", "hairpin-connections", f"{{ {POD} . {POD} . tcp . 8080 }}")
    assert from_pod(pod) == ""
