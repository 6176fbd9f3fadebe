"""Which IP families `svcproxy run` proxies by default, in a node namespace: kube-proxy's rule
(platformCheckSupported), dual-stack whenever the host can, even with one IPv4 node IP; IPv4
alone once the namespace's kernel has IPv6 disabled. Seen in the kernel's rules and in /healthz."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .netenv import PYTHON, Daemon, NetEnv

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

WEB = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
       "spec": {"clusterIP": "172.30.0.10", "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}
HEALTHZ = ("import urllib.request, urllib.error\n"
           "try: print(urllib.request.urlopen('http://127.0.0.1:10256/healthz', timeout=2).read().decode())\n"
           "except urllib.error.HTTPError as e: print(e.read().decode())\n")


def families_synced(daemon: Daemon, timeout: float = 20) -> set[str]:
    """The families whose first sync the daemon logged, once /healthz answers for every one."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        log = daemon.log()
        synced = {f for f in ("IPv4", "IPv6") if f"{f} full sync" in log}
        if "svcproxy run: mode" in log and synced:
            doc = json.loads(daemon.env.exec(daemon.env.node, PYTHON, "-c", HEALTHZ, check=False) or "{}")
            if set(doc.get("status", {})) == synced and all(s["healthy"] for s in doc["status"].values()):
                return synced
        if daemon.proc and daemon.proc.poll() is not None:
            raise AssertionError(f"svcproxy run exited:\n{log[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"families never settled:\n{daemon.log()[-3000:]}")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_dual_stack_wherever_the_host_can_and_ipv4_when_ipv6_is_off(env: NetEnv, tmp_path: Path, mode: str) -> None:
    m = tmp_path / "m"
    m.mkdir()
    (m / "web.json").write_text(json.dumps(WEB))

    daemon = Daemon(env, m, mode, tmp_path / "dual.log")
    daemon.one_family = False  # run's own default: one IPv4 --node-ip, nothing else said
    daemon.start()
    try:
        assert families_synced(daemon) == {"IPv4", "IPv6"}
        assert "IPv4 + IPv6 dual-stack" in daemon.log()
        if mode == "iptables":
            assert ":KUBE-SERVICES" in env.exec(env.node, "ip6tables-save", "-t", "nat")
        else:
            assert "table ip6 kube-proxy" in env.exec(env.node, "nft", "list", "tables")
    finally:
        daemon.stop()
    env.exec(env.node, str(Path(PYTHON).with_name("svcproxy")), "cleanup", "--proxy-mode", mode, check=False)

    env.exec(env.node, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    daemon = Daemon(env, m, mode, tmp_path / "single.log")
    daemon.one_family = False
    daemon.start()
    try:
        assert families_synced(daemon) == {"IPv4"}
        assert "IPv6 is disabled in the kernel" in daemon.log()
        if mode == "iptables":
            assert "KUBE-SERVICES" not in env.exec(env.node, "ip6tables-save", "-t", "nat")
        else:
            assert "table ip6 kube-proxy" not in env.exec(env.node, "nft", "list", "tables")
    finally:
        daemon.stop()
        env.exec(env.node, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
