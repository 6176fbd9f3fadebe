"""Node setup in network namespaces made for each test: the per-namespace sysctls really written
(conntrack timeouts, tcp_be_liberal, route_localnet) while the host's stay as they were, the
refusal of nf_conntrack_max outside the host namespace, and 127.0.0.1:NodePort answering in
iptables mode because the daemon set route_localnet (the test does not)."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from .manifests_util import endpoint, endpoint_slice, service
from .netenv import NODE_IP, PYTHON, Daemon, NetEnv, sh

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

NF = "/proc/sys/net/netfilter/"
PER_NETNS = ("nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_close_wait",
             "nf_conntrack_tcp_be_liberal", "nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream")
ROUTE_LOCALNET = "/proc/sys/net/ipv4/conf/all/route_localnet"


def host_values() -> dict[str, str]:
    paths = [NF + n for n in (*PER_NETNS, "nf_conntrack_max")]
    paths += [ROUTE_LOCALNET, "/sys/module/nf_conntrack/parameters/hashsize"]
    return {p: Path(p).read_text().strip() for p in paths if Path(p).exists()}


def run_in(env: NetEnv, code: str) -> dict:
    """Run Python in the node namespace; it prints one JSON object."""
    return json.loads(env.exec(env.node, PYTHON, "-c", textwrap.dedent(code)))


def test_per_netns_conntrack_sysctls_and_route_localnet(env: NetEnv) -> None:
    before = host_values()
    got = run_in(env, f"""
        import json
        from svcproxy.config import NodeConfig
        from svcproxy.runtime.daemon import Daemon, DaemonOptions
        from svcproxy.runtime.node_setup import ConntrackSettings
        ct = ConntrackSettings(max_per_core=0, tcp_established_timeout=7200, tcp_close_wait_timeout=1800,
                               tcp_be_liberal=True, udp_timeout=45, udp_stream_timeout=150)
        d = Daemon(DaemonOptions(cfg=NodeConfig(hostname="node-a", node_ips=("{NODE_IP}",)), mode="iptables",
                                 conntrack=ct, oom_score_adj=None))
        lines = d.setup_node()
        vals = {{n: open("{NF}" + n).read().strip() for n in {PER_NETNS!r}}}
        vals["route_localnet"] = open("{ROUTE_LOCALNET}").read().strip()
        print(json.dumps({{"lines": lines, "vals": vals}}))
    """)
    assert got["vals"] == {"nf_conntrack_tcp_timeout_established": "7200",
                           "nf_conntrack_tcp_timeout_close_wait": "1800", "nf_conntrack_tcp_be_liberal": "1",
                           "nf_conntrack_udp_timeout": "45", "nf_conntrack_udp_timeout_stream": "150",
                           "route_localnet": "1"}
    assert "set net.ipv4.conf.all.route_localnet to 1 (was 0)" in got["lines"]
    assert "set net.netfilter.nf_conntrack_udp_timeout_stream to 150 (was 120)" in got["lines"]
    assert host_values() == before  # only the namespace changed


def test_nftables_mode_leaves_route_localnet(env: NetEnv) -> None:
    got = run_in(env, f"""
        import json
        from svcproxy.runtime.node_setup import init_node
        lines = init_node("nftables", (4,), None)
        print(json.dumps({{"lines": lines, "rl": open("{ROUTE_LOCALNET}").read().strip()}}))
    """)
    assert got == {"lines": [], "rl": "0"}


def test_nf_conntrack_max_outside_the_host_namespace_is_refused_with_the_setting(env: NetEnv) -> None:
    mode = env.exec(env.node, "stat", "-c", "%A", NF + "nf_conntrack_max").strip()
    if "w" in mode:  # older kernels: writable, and global; never write it from a test
        pytest.skip("nf_conntrack_max is writable in this namespace on this kernel")
    before = host_values()
    current = int(env.exec(env.node, "cat", NF + "nf_conntrack_max"))
    got = run_in(env, f"""
        import json
        from svcproxy.runtime.node_setup import ConntrackSettings, NodeSetupError, init_node
        # max = max(1 * 2, floor) differs from the kernel's, and max / 4 is below any hashsize
        ct = ConntrackSettings(max_per_core=1, min={current} - 1 if {current} > 1024 else 1024)
        try:
            init_node("nftables", (4,), ct, ncpu=2)
            print(json.dumps({{"error": None}}))
        except NodeSetupError as e:
            print(json.dumps({{"error": str(e), "setting": e.setting}}))
    """)
    assert got["error"].startswith("could not set conntrack parameters from kube-proxy configuration: open "
                                   "/proc/sys/net/netfilter/nf_conntrack_max: permission denied")
    assert "nf_conntrack_max is writable only in the host network namespace" in got["error"]
    assert got["setting"].startswith("conntrack.maxPerCore")
    assert host_values() == before


def nodeport_web(path: Path) -> None:
    svc = service("web", "172.30.0.10", 80, target=8080, type="NodePort")
    svc["spec"]["ports"][0]["nodePort"] = 30080
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        svc, endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a")])]}))


def connect(env: NetEnv, ip: str, port: int) -> str:
    """One TCP connection from the node namespace; the server's reply (its pod IP) or the error."""
    code = (f"import socket\ntry:\n s = socket.create_connection(('{ip}', {port}), timeout=2)\n"
            " print(s.recv(100).decode().strip())\nexcept OSError as e:\n print('error', e)\n")
    return env.exec(env.node, PYTHON, "-c", code).strip()


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_localhost_nodeport_answers_in_iptables_mode(env: NetEnv, tmp_path: Path, mode: str) -> None:
    assert env.exec(env.node, "cat", ROUTE_LOCALNET).strip() == "0"
    env.serve("tcp", ["10.0.1.10"], 8080)
    m = tmp_path / "manifests"
    m.mkdir()
    nodeport_web(m / "web.json")
    daemon = Daemon(env, m, mode, tmp_path / "daemon.log").start()
    try:
        daemon.wait_sync(0)
        assert connect(env, NODE_IP, 30080) == "10.0.1.10"
        if mode == "iptables":
            assert env.exec(env.node, "cat", ROUTE_LOCALNET).strip() == "1"
            assert "node setup: set net.ipv4.conf.all.route_localnet to 1 (was 0)" in daemon.log()
            deadline = time.monotonic() + 5
            while (got := connect(env, "127.0.0.1", 30080)) != "10.0.1.10" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert got == "10.0.1.10"
        else:  # kube-proxy's nftables mode has no localhost NodePorts, and leaves the sysctl alone
            assert env.exec(env.node, "cat", ROUTE_LOCALNET).strip() == "0"
            assert connect(env, "127.0.0.1", 30080).startswith("error")
    finally:
        daemon.stop()


def test_init_only_path_removes_other_modes_leftovers_first(env: NetEnv) -> None:
    """What --init-only does in nftables mode: iptables (and ipvs) mode's leftovers go, then the sysctls."""
    sh("ip", "netns", "exec", env.node, "iptables-restore", "--noflush", input=(
        '*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -m comment --comment "kubernetes service portals" '
        "-j KUBE-SERVICES\nCOMMIT\n"))
    got = run_in(env, """
        import json
        from svcproxy.runtime.node_setup import ConntrackSettings, init_node
        ct = ConntrackSettings(max_per_core=0, tcp_established_timeout=7200, tcp_close_wait_timeout=None)
        print(json.dumps(init_node("nftables", (4,), ct, cleanup_leftovers=True)))
    """)
    assert got == ["removed what modes other than nftables left (a failure there is logged, not fatal)",
                   "set net.netfilter.nf_conntrack_tcp_timeout_established to 7200 (was 432000)"]
    assert "KUBE-" not in env.exec(env.node, "iptables-save", "-t", "nat")


def test_daemon_exits_with_the_setting_when_node_setup_fails(env: NetEnv, tmp_path: Path) -> None:
    mode = env.exec(env.node, "stat", "-c", "%A", NF + "nf_conntrack_max").strip()
    if "w" in mode:
        pytest.skip("nf_conntrack_max is writable in this namespace on this kernel")
    current = int(env.exec(env.node, "cat", NF + "nf_conntrack_max"))
    code = textwrap.dedent(f"""
        import logging
        from svcproxy.config import NodeConfig
        from svcproxy.runtime.daemon import DaemonOptions, run_daemon
        from svcproxy.runtime.node_setup import ConntrackSettings
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        run_daemon(DaemonOptions(cfg=NodeConfig(hostname="node-a"), mode="nftables", healthz_bind_address="",
                                 metrics_bind_address="", conntrack=ConntrackSettings(max_per_core=1, min={max(current - 1, 1024)})))
    """)
    p = env.spawn(env.node, [PYTHON, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1, out
    assert "ERROR could not set conntrack parameters from kube-proxy configuration: open " \
           "/proc/sys/net/netfilter/nf_conntrack_max: permission denied" in out
    assert "conntrack.maxPerCore / conntrack.min (--conntrack-max-per-core, --conntrack-min)" in out
    assert "Traceback" not in out
