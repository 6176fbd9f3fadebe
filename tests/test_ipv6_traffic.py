"""IPv6 end to end: `svcproxy run --ip-family IPv6` on a node namespace, real TCP and UDP packets.

The lab is IPv4 only, so this builds its own three namespaces (prefix "v6"):

    client  fd00:192::100 ---- fd00:192::2  node (runs svcproxy)  fd00:10:1::1 ---- pod
                                                                      fd00:10:1::10, fd00:10:1::11

Both proxy modes, from one test definition: a ClusterIP from outside and from the node itself,
a NodePort, masquerading, UDP, and a service without endpoints that refuses at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from svcproxy.dataplane import MODES
from svcproxy.lab.netns import (
    exec_in,
    ip_batch,
    namespace_pids,
    run,
    scratch_namespace,
    spawn,
    stop_processes,
    sysctls,
)
from tests.test_dual_stack_traffic import SERVER, connect  # its servers and client speak either family

pytestmark = pytest.mark.kernel

SVCPROXY = str(Path(sys.executable).with_name("svcproxy"))

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  clusterIP: fd00:172:30::10
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]
endpoints:
- {addresses: ["fd00:10:1::10"], nodeName: test-node, conditions: {ready: true}}
- {addresses: ["fd00:10:1::11"], nodeName: test-node, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  ipFamilies: [IPv6]
  clusterIP: fd00:172:30::50
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
"""

@pytest.fixture(scope="module", params=[*MODES, "nftables-maps"])
def v6(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The three namespaces, servers in the pod, svcproxy run on the node; all removed after."""
    mode, _, layout = request.param.partition("-")  # "nftables-maps": nftables, maps layout
    tmp = tmp_path_factory.mktemp(f"v6{mode}{layout}")
    (tmp / "services.yaml").write_text(MANIFESTS)
    with scratch_namespace("v6c") as client, scratch_namespace("v6n") as node, scratch_namespace("v6p") as pod:
        run(["ip", "link", "add", "v6cn0", "netns", client, "type", "veth", "peer", "name", "v6cn1", "netns", node])
        run(["ip", "link", "add", "v6np0", "netns", node, "type", "veth", "peer", "name", "v6np1", "netns", pod])
        for ns in (client, node, pod):
            sysctls(ns, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})
        sysctls(node, {"net.ipv6.conf.all.forwarding": "1"})
        ip_batch(client, ["link set v6cn0 up", "addr add fd00:192::100/64 dev v6cn0 nodad",
                          "route add default via fd00:192::2"])
        ip_batch(node, ["link set v6cn1 up", "addr add fd00:192::2/64 dev v6cn1 nodad",
                        "link set v6np0 up", "addr add fd00:10:1::1/64 dev v6np0 nodad",
                        # the node's own way out (an uplink of its own, as on a real node)
                        "link add v6up type veth peer name v6up1", "link set v6up up", "link set v6up1 up", "addr add fd00:99::2/64 dev v6up nodad",
                        "route add default via fd00:99::1 dev v6up"])
        ip_batch(pod, ["link set v6np1 up", "addr add fd00:10:1::10/64 dev v6np1 nodad",
                       "addr add fd00:10:1::11/64 dev v6np1 nodad", "route add default via fd00:10:1::1"])
        for addr in ("fd00:10:1::10", "fd00:10:1::11"):
            spawn(pod, [sys.executable, "-c", SERVER, addr], tmp / f"server-{addr.replace(':', '_')}.log")
        daemon = spawn(node, [SVCPROXY, "run", "-f", str(tmp / "services.yaml"), "--proxy-mode", mode,
                              *(["--nftables-layout", layout] if layout else []),
                              "--ip-family", "IPv6", "--node-ip", "fd00:192::2", "--cluster-cidr", "fd00:10::/48",
                              "--hostname-override", "test-node", "--healthz-bind-address", "",
                              "--metrics-bind-address", "", "--min-sync-period", "0s", "--conntrack-max-per-core=0"],
                       tmp / "svcproxy.log")
        try:
            deadline = time.monotonic() + 60
            while "KUBE-SVC-" not in _rules(node, mode) and "service-" not in _rules(node, mode):
                assert daemon.poll() is None, (tmp / "svcproxy.log").read_text()
                assert time.monotonic() < deadline, "svcproxy did not program IPv6 rules within 60 s"
                time.sleep(0.2)
            yield {"client": client, "node": node, "pod": pod, "mode": mode}
        finally:
            stop_processes([*namespace_pids(node), *namespace_pids(pod)])


def _rules(node: str, mode: str) -> str:
    if mode == "iptables":
        return exec_in(node, ["ip6tables-save", "-t", "nat"], check=False)
    return exec_in(node, ["nft", "list", "table", "ip6", "kube-proxy"], check=False)


def test_clusterip_from_outside_is_spread_and_masqueraded(v6: dict[str, str]) -> None:
    seen = connect(v6["client"], "fd00:172:30::10", 80, n=30)
    # both endpoints answer; the client is outside the cluster CIDR, so the pod sees the node
    assert seen == {"fd00:10:1::10 fd00:10:1::1": seen.get("fd00:10:1::10 fd00:10:1::1", 0),
                    "fd00:10:1::11 fd00:10:1::1": seen.get("fd00:10:1::11 fd00:10:1::1", 0)}, seen
    assert all(count >= 3 for count in seen.values()) and len(seen) == 2, seen


def test_clusterip_from_the_node_itself(v6: dict[str, str]) -> None:
    seen = connect(v6["node"], "fd00:172:30::10", 80, n=20)
    assert sum(seen.values()) == 20 and {k.split()[0] for k in seen} == {"fd00:10:1::10", "fd00:10:1::11"}, seen


def test_nodeport_tcp_and_udp(v6: dict[str, str]) -> None:
    tcp = connect(v6["client"], "fd00:192::2", 30080, n=20)
    assert sum(tcp.values()) == 20 and all(k.endswith(" fd00:10:1::1") for k in tcp), tcp
    udp = connect(v6["client"], "fd00:192::2", 30053, "udp", n=10)
    assert sum(udp.values()) == 10 and all(k.split()[1] == "fd00:10:1::1" for k in udp), udp
    udp_cluster = connect(v6["client"], "fd00:172:30::10", 53, "udp", n=10)
    assert sum(udp_cluster.values()) == 10 and all(k.split()[1] == "fd00:10:1::1" for k in udp_cluster), udp_cluster


def test_service_without_endpoints_is_refused(v6: dict[str, str]) -> None:
    # "refused" is the REJECT's ICMPv6 port-unreachable; a DROP would time out instead. (The
    # first SYN's answer can reach the client while connect() still holds the socket, which
    # makes it a soft error, so a refusal may take one SYN retry: ~1 s here, not a timeout.)
    assert connect(v6["client"], "fd00:172:30::50", 80, n=2) == {"refused": 2}
