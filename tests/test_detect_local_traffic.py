"""Each detect-local mode with real pod traffic, in network namespaces (prefix "dl"), in iptables
and nftables (both layouts) modes. The daemon runs in the node namespace with the mode's
NodeConfig and no node IP: its IPs and podCIDRs come from the Node in its manifests.

    outside 192.168.0.100 --- 192.168.0.2 node ------ 10.0.2.1 (dlsv) --- server pod 10.0.2.10:8080
                                          |  |
               bridge dlbr0 10.0.1.1/24 --+  +-- dlpb0 (routed veth, as Calico-style CNIs wire pods)
               pod A 10.0.1.20                   pod B 10.0.3.30

The server answers with the source address it sees: the client's own address (not masqueraded)
or the node's 10.0.2.1 (masqueraded). Node podCIDRs: 10.0.1.0/24; cluster CIDR 10.0.0.0/8.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from svcproxy.lab.netns import (
    exec_in,
    ip_batch,
    namespace_pids,
    run,
    scratch_namespace,
    stop_processes,
    sysctls,
)

pytestmark = pytest.mark.kernel

POD_A, POD_B, SERVER_IP, OUTSIDE, NODE_IP, MASQ = "10.0.1.20", "10.0.3.30", "10.0.2.10", "192.168.0.100", \
    "192.168.0.2", "10.0.2.1"
CLUSTER_IP = "172.30.0.10"

MANIFESTS = [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "test-node"},
     "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"]},
     "status": {"addresses": [{"type": "Hostname", "address": "test-node"},
                              {"type": "InternalIP", "address": NODE_IP}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
     "spec": {"type": "NodePort", "clusterIP": CLUSTER_IP, "externalTrafficPolicy": "Cluster",
              "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
     "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
     "endpoints": [{"addresses": [SERVER_IP], "nodeName": "other-node", "conditions": {"ready": True}}]},
]

# mode -> its NodeConfig fields, and which pod it counts as local
MODES = {
    "ClusterCIDR": ({"cluster_cidrs": ["10.0.0.0/8"]}, {POD_A, POD_B}),
    "NodeCIDR": ({"detect_local_mode": "NodeCIDR", "cluster_cidrs": ["10.0.0.0/8"]}, {POD_A}),
    "BridgeInterface": ({"detect_local_mode": "BridgeInterface", "bridge_interface": "dlbr0"}, {POD_A}),
    "InterfaceNamePrefix": ({"detect_local_mode": "InterfaceNamePrefix", "interface_name_prefix": "dlpb"}, {POD_B}),
}

SERVER = """
import socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((sys.argv[1], 8080)); t.listen(64)
while True:
    c, peer = t.accept(); c.sendall(peer[0].encode()); c.close()
"""

CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.recv(100).decode())
"""

# the daemon as `svcproxy run` would start it, but with the detect-local NodeConfig fields that
# the command line does not take yet; no node IP: the Node gives it (and, for NodeCIDR, its podCIDRs)
DAEMON = """
import json, logging, sys
from svcproxy.config import NodeConfig
from svcproxy.runtime.daemon import DaemonOptions, run_daemon
from svcproxy.sources.manifests import ManifestSource
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
fields = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[3]).items()}
cfg = NodeConfig(hostname="test-node", nodeport_addresses=("primary",), **fields)
run_daemon(DaemonOptions(cfg=cfg, mode=sys.argv[2], sources=[ManifestSource([sys.argv[1]])], min_sync_period=0,
                         healthz_bind_address="", metrics_bind_address="", clear_conntrack=False))
"""


@pytest.fixture
def cluster() -> Iterator[dict[str, str]]:
    """The five namespaces and the server; removed with everything in them."""
    with scratch_namespace("dln") as node, scratch_namespace("dla") as a, scratch_namespace("dlb") as b, \
            scratch_namespace("dls") as srv, scratch_namespace("dlo") as out:
        for end, peer in (("dlva", a), ("dlpb0", b), ("dlsv", srv), ("dllan", out)):
            run(["ip", "link", "add", end, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", peer])
        sysctls(node, {"net.ipv4.ip_forward": "1"})
        ip_batch(node, ["link add dlbr0 type bridge", "addr add 10.0.1.1/24 dev dlbr0", "link set dlbr0 up",
                        "link set dlva master dlbr0", "link set dlva up",
                        "addr add 169.254.1.1/32 dev dlpb0", "link set dlpb0 up", f"route add {POD_B}/32 dev dlpb0",
                        "addr add 10.0.2.1/24 dev dlsv", "link set dlsv up",
                        f"addr add {NODE_IP}/24 dev dllan", "link set dllan up"])
        ip_batch(a, ["link set eth0 up", f"addr add {POD_A}/24 dev eth0", "route add default via 10.0.1.1"])
        ip_batch(b, ["link set eth0 up", f"addr add {POD_B}/32 dev eth0", "route add 169.254.1.1 dev eth0",
                     "route add default via 169.254.1.1"])
        ip_batch(srv, ["link set eth0 up", f"addr add {SERVER_IP}/24 dev eth0", "route add default via 10.0.2.1"])
        ip_batch(out, ["link set eth0 up", f"addr add {OUTSIDE}/24 dev eth0", f"route add 172.30.0.0/16 via {NODE_IP}"])
        server = subprocess.Popen(["ip", "netns", "exec", srv, sys.executable, "-c", SERVER, SERVER_IP])
        try:
            yield {"node": node, "a": a, "b": b, "out": out}
        finally:
            server.kill()
            server.wait()
            for ns in (node, srv):
                stop_processes(namespace_pids(ns))


def seen_from(ns: str, host: str, port: int) -> str:
    """The source address the server saw for one connection from ns."""
    return exec_in(ns, [sys.executable, "-c", CLIENT, host, str(port)], timeout=20).strip()


def wait_programmed(node: str, log: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if " sync: " in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no sync within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("proxy_mode", ["iptables", "nftables", "nftables-maps"])
@pytest.mark.parametrize("detect", list(MODES))
def test_pod_traffic_keeps_its_source_and_other_traffic_is_masqueraded(
        cluster: dict[str, str], tmp_path: Path, proxy_mode: str, detect: str) -> None:
    mode, _, layout = proxy_mode.partition("-")
    fields, local = MODES[detect]
    if layout:
        fields = {**fields, "nftables_layout": layout}
    (tmp_path / "objects.json").write_text("\n---\n".join(json.dumps(o) for o in MANIFESTS))
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", cluster["node"], sys.executable, "-c", DAEMON,
                                 str(tmp_path), mode, json.dumps(fields)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[1])
    try:
        wait_programmed(cluster["node"], log, proc)
        assert f"node IPs from Node test-node: {NODE_IP}" in log.read_text()
        for pod, ip in (("a", POD_A), ("b", POD_B)):
            expected = ip if ip in local else MASQ
            assert seen_from(cluster[pod], CLUSTER_IP, 80) == expected, f"pod {ip} -> ClusterIP ({detect})"
        assert seen_from(cluster["out"], CLUSTER_IP, 80) == MASQ  # not pod traffic: masqueraded
        # eTP=Cluster NodePort, on the node IP the Node object gave (--nodeport-addresses primary)
        assert seen_from(cluster["out"], NODE_IP, 30080) == MASQ
    finally:
        proc.terminate()
        proc.wait(10)
