"""`svcproxy run --proxy-mode ebpf` end to end, in the test's namespace, cgroup and pin
directory: local clients balanced at connect() with no NAT, a client outside the cgroup served
by nftables, the status page counting connections from the BPF counters, the programs staying
after SIGTERM, and `svcproxy cleanup --proxy-mode ebpf` removing everything.

The daemon runs under nsenter --net (not `ip netns exec`, which remounts /sys and would hide
the cgroup and bpffs mounts), with --bpf-cgroup and SVCPROXY_BPF_PIN_ROOT pointing at the
test's own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ENDPOINTS, TCP_PORT, Node
from .helpers import VIP
from .test_lifecycle import programs

pytestmark = pytest.mark.kernel

SVCPROXY = str(Path(sys.executable).with_name("svcproxy"))
STATUS = "127.0.0.1:10263"

MANIFESTS = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: ns1}}
spec:
  type: ClusterIP
  clusterIP: {VIP}
  clusterIPs: [{VIP}]
  ports: [{{name: http, port: 80, targetPort: {TCP_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: ns1
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: {TCP_PORT}, protocol: TCP}}]
endpoints:
""" + "".join(f"  - addresses: [{ip}]\n    conditions: {{ready: true}}\n    nodeName: test-node\n" for ip in ENDPOINTS)


def in_node(node: Node, *argv: str, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "SVCPROXY_BPF_PIN_ROOT": str(node.pins)}
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{node.ns}", *argv], env=env, **kw)  # type: ignore[call-overload]


def status(node: Node) -> dict:
    code = f"import urllib.request;print(urllib.request.urlopen('http://{STATUS}/api/status',timeout=5).read().decode())"
    return json.loads(node.run(sys.executable, "-c", code).stdout)


def wait_for(what, timeout: float = 20.0) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    while not what():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)


def test_run_in_ebpf_mode_then_cleanup(node: Node, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "web.yaml").write_text(MANIFESTS)
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 - closed below
    daemon = in_node(node, SVCPROXY, "run", "-f", str(tmp_path / "m"), "--proxy-mode", "ebpf",
                     "--hostname-override", "test-node", "--node-ip", "10.0.0.1", "--ip-family", "IPv4",
                     "--min-sync-period", "0",
                     "--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249",
                     "--status-bind-address", STATUS, "--bpf-cgroup", str(node.cgroup),
                     "--conntrack-max-per-core=0",  # the host's nf_conntrack_max is read-only here
                     stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(programs(node.cgroup)) == 4 and "kube-proxy" in node.run("nft", "list", "tables").stdout)
        wait_for(lambda: " sync: " in (tmp_path / "daemon.log").read_text())
        got = node.client("tcp", VIP, 80, 30)
        assert {r.get("served") for r in got} == set(ENDPOINTS), got
        assert node.run("conntrack", "-L", "-p", "tcp", "-d", VIP, check=False).stdout.count("dport=80") == 0
        outside = node.client("tcp", VIP, 80, 5, in_cgroup=False)
        assert {r.get("served") for r in outside} <= set(ENDPOINTS), outside
        # the page counts the hooks' connections (since it first looked) and conntrack's DNATs
        status(node)
        node.client("tcp", VIP, 80, 12)
        time.sleep(0.6)
        eps = [e for s in status(node)["services"] for p in s["ports"] for e in p["endpoints"]]
        assert 12 <= sum(e["connections"] for e in eps) <= 17, eps  # 12 by BPF, up to 5 DNATed before
    finally:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(15)
        log.close()
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-2000:]
    # no daemon: the pinned programs keep balancing
    assert {r.get("served") for r in node.client("tcp", VIP, 80, 10)} <= set(ENDPOINTS)
    assert len(programs(node.cgroup)) == 4
    cleanup = in_node(node, SVCPROXY, "cleanup", "--proxy-mode", "ebpf", stdout=subprocess.PIPE, text=True)
    assert cleanup.wait(30) == 0
    assert programs(node.cgroup) == []
    assert not node.pins.exists()
    assert "kube-proxy" not in node.run("nft", "list", "tables").stdout
