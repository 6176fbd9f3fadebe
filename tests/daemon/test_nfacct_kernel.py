"""kube-proxy's nfacct packet counters in iptables mode, in a network namespace: the daemon
creates the nfacct objects, its rules count into them, and /metrics exports them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .manifests_util import endpoint, endpoint_slice, service
from .netenv import Daemon, NetEnv
from .test_e2e_kernel import write

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


def metrics(env: NetEnv) -> str:
    return env.exec(env.node, "python3", "-c", "import urllib.request;print(urllib.request.urlopen("
                    "'http://127.0.0.1:10249/metrics', timeout=5).read().decode())")


def sample(text: str, family: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(family + " ") or line.startswith(family + "{"):
            return float(line.split()[-1])
    return None


def test_localhost_nodeport_packets_are_counted(env: NetEnv, tmp_path: Path) -> None:
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("tcp", ["10.0.1.30"], 8080)
    np = service("np", "172.30.0.20", type="NodePort")
    np["spec"]["ports"][0]["nodePort"] = 30080
    write(m / "np.json", np, endpoint_slice("np-1", "np", [endpoint("10.0.1.30", "node-a")]))
    daemon = Daemon(env, m, "iptables", tmp_path / "daemon.log").start()
    daemon.wait_sync(0)
    try:
        saved = env.exec(env.node, "iptables-save")
        assert "-m nfacct --nfacct-name  ct_state_invalid_dropped_pkts -j DROP" in saved
        assert "-d 127.0.0.0/8" in saved and "localhost_nps_accepted_pkts" in saved
        before = metrics(env)
        assert sample(before, "kubeproxy_iptables_localhost_nodeports_accepted_packets_total") == 0
        assert sample(before, "kubeproxy_iptables_ct_state_invalid_dropped_packets_total") is not None
        for _ in range(3):
            out = env.exec(env.node, "python3", "-c", "import socket;s=socket.create_connection(('127.0.0.1',"
                           "30080),timeout=5);print(s.recv(100).decode())")
            assert out.strip() == "10.0.1.30", "127.0.0.1:NodePort answers (route_localnet set by the daemon)"
        time.sleep(0.2)
        # a new connection's first packet goes through nat KUBE-NODEPORTS, once per connection
        assert sample(metrics(env), "kubeproxy_iptables_localhost_nodeports_accepted_packets_total") == 3
    finally:
        daemon.stop()


def test_render_counts_only_into_objects_that_exist() -> None:
    from svcproxy.config import NodeConfig
    from svcproxy.dataplane.iptables.render import render_ruleset
    from svcproxy.model.load import load_paths
    from svcproxy.state import build_state

    cfg = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",))
    state = build_state(load_paths([Path(__file__).parents[2] / "examples" / "cluster"]), cfg)
    plain = render_ruleset(state, cfg)
    assert "nfacct" not in plain
    from dataclasses import replace

    counted = render_ruleset(state, replace(cfg, nfacct_counters=("ct_state_invalid_dropped_pkts",
                                                                  "localhost_nps_accepted_pkts")))
    assert "-m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP" in counted
    local = [line for line in counted.splitlines() if "localhost_nps_accepted_pkts" in line]
    assert local and all("-d 127.0.0.0/8" in line and line.startswith("-A KUBE-NODEPORTS") for line in local)
    no_localhost = render_ruleset(state, replace(cfg, localhost_nodeports=False, nfacct_counters=(
        "localhost_nps_accepted_pkts",)))
    assert "localhost_nps_accepted_pkts" not in no_localhost
