"""userspace mode end to end: a lab (svcproxy/lab) whose nodes run `svcproxy run --proxy-mode
userspace`, real TCP/UDP from pods, nodes and outside; no netfilter rule anywhere."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from svcproxy.lab import Lab, Probe
from svcproxy.lab.demo import scaled_down

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "cluster"
PREFIX = "usp"
WEB = ("172.30.0.10", 80)
WEB_READY = {"web-1-10", "web-1-11", "web-2-10"}  # web-2-11 is terminating


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the userspace lab tests need root (network namespaces)")
    lab = Lab.up([EXAMPLES], mode="userspace", prefix=PREFIX)
    try:
        yield lab
    finally:
        lab.down()


def served(probes: list[Probe]) -> list[str]:
    failures = [p.error for p in probes if not p.ok]
    assert not failures, f"some connections failed: {failures}"
    return [p.served_by for p in probes]


def test_cluster_ip_spreads_over_ready_endpoints_from_pod_and_node(lab: Lab):
    for where in ("dns-1-20", "dns-2-20", "test-node", "test-node-2"):
        got = served(lab.probe(where, *WEB, count=12))
        assert set(got) == WEB_READY, (where, got)
        # round-robin: every ready endpoint gets its share
        assert all(got.count(name) == 4 for name in WEB_READY), (where, got)


def test_node_port_from_outside_on_both_nodes(lab: Lab):
    for node_ip in ("192.168.0.2", "192.168.0.3"):
        assert set(served(lab.probe("outside", node_ip, 30080, count=9))) == WEB_READY


def test_load_balancer_and_external_ips_from_outside(lab: Lab):
    assert set(served(lab.probe("outside", "192.168.100.30", 80, count=3))) <= {"sticky-1-40", "sticky-2-40"}
    # guarded admits 192.168.0.0/30 only: the outside client (192.168.0.100) is reset
    probes = lab.probe("outside", "192.168.100.40", 80, count=3)
    assert all(not p.ok for p in probes), probes


def test_external_traffic_policy_local(lab: Lab):
    # local-web's only pod is on test-node-2: its NodePort answers there, test-node refuses outside
    # clients, and a pod on test-node still reaches the service (kube-proxy's short-circuit)
    assert set(served(lab.probe("outside", "192.168.0.3", 30081, count=3))) == {"local-web-2-30"}
    assert all(not p.ok for p in lab.probe("outside", "192.168.0.2", 30081, count=3))
    assert set(served(lab.probe("dns-1-20", "192.168.0.2", 30081, count=3))) == {"local-web-2-30"}


def test_service_without_endpoints_refuses_at_once(lab: Lab):
    for where in ("dns-1-20", "test-node"):
        probes = lab.probe(where, "172.30.0.50", 80, count=5, timeout=2.0)
        assert [p.error for p in probes] == ["refused"] * 5, probes
        assert max(p.ms for p in probes) < 200, probes  # a reset, not a timeout


def test_client_ip_affinity_sticks(lab: Lab):
    for where in ("dns-1-20", "dns-2-20", "test-node"):
        got = served(lab.probe(where, "172.30.0.30", 80, count=10))
        assert len(set(got)) == 1 and got[0] in {"sticky-1-40", "sticky-2-40"}, (where, got)


def test_udp(lab: Lab):
    got = served(lab.probe("web-1-10", "172.30.0.53", 53, udp=True, count=6))
    assert set(got) == {"dns-1-20", "dns-2-20"}, got
    tcp = served(lab.probe("web-1-10", "172.30.0.53", 53, count=4))
    assert set(tcp) == {"dns-1-20", "dns-2-20"}, tcp


def test_no_netfilter_rules(lab: Lab):
    for node in lab.nodes:
        ns = lab.node_ns(node)
        ipt = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True).stdout
        nft = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True,
                             text=True, check=True).stdout
        assert "KUBE" not in ipt and "svcproxy" not in ipt, ipt
        assert nft.strip() == "", nft
        addrs = subprocess.run(["ip", "-n", ns, "-o", "addr", "show", "dev", "svcproxy0"], capture_output=True,
                               text=True, check=True).stdout
        for ip in ("172.30.0.10", "172.30.0.50", "172.30.0.53", "192.168.100.30", "192.168.100.40"):
            assert f" {ip}/32 " in addrs, addrs


def test_scale_down_is_followed(lab: Lab, tmp_path: Path):
    """Last in the module: it changes the lab."""
    scaled_down(EXAMPLES, tmp_path, "web", "10.0.1.11")
    res = lab.apply([tmp_path])
    assert res.removed == ("web-1-11",), res
    # userspace mode shows no rules to wait for: the lab takes the proxy's next sync as the
    # change (see proxies.wait_programmed), so allow the proxy a moment if that sync was older
    deadline = time.monotonic() + 5
    while True:
        probes = lab.probe("dns-2-20", *WEB, count=12)
        got = {p.served_by if p.ok else p.error for p in probes}
        if got == {"web-1-10", "web-2-10"} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == {"web-1-10", "web-2-10"}, probes


def test_cleanup_removes_the_interface(lab: Lab):
    """After everything else: removes the service addresses of one node."""
    ns = lab.node_ns("test-node-2")
    argv = [str(ROOT / ".venv" / "bin" / "svcproxy"), "cleanup", "--proxy-mode", "userspace"]
    out = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True).stdout
    assert "userspace: removed" in out, out
    links = subprocess.run(["ip", "-n", ns, "link"], capture_output=True, text=True, check=True).stdout
    assert "svcproxy0" not in links, links
    # the ClusterIP is no longer this node's: nothing answers it from the node any more
    probes = lab.probe("test-node-2", *WEB, count=1, timeout=0.5)
    assert not probes[0].ok, probes
