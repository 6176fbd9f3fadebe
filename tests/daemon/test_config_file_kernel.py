"""The daemon configured by a kubeadm-style KubeProxyConfiguration file, in a network namespace:
the active mode's section is what reaches the kernel, and a changed file stops the daemon."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from svcproxy.cli.render import render

from .netenv import Daemon, NetEnv
from .test_e2e_kernel import WEB_IP, ready, web

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]
KUBEADM = Path(__file__).parents[1] / "config" / "kubeadm-config.conf"


def kubeadm_file(path: Path, mode: str) -> Path:
    """kubeadm's file, with both mode sections set differently (as a hand-edited one may be)."""
    doc = yaml.safe_load(KUBEADM.read_text())
    doc.update(mode=mode, clusterCIDR="10.0.1.0/24", healthzBindAddress="127.0.0.1:10256",
               metricsBindAddress="127.0.0.1:10249")
    doc["clientConnection"]["kubeconfig"] = ""
    doc["conntrack"]["maxPerCore"] = 0  # nf_conntrack_max is the host's in a namespace (kind's file does this)
    doc["iptables"].update(masqueradeAll=True, masqueradeBit=3, minSyncPeriod="0s")
    doc["nftables"].update(masqueradeAll=False, masqueradeBit=7, minSyncPeriod="0s")
    path.write_text(yaml.safe_dump(doc))
    return path


def kernel_rules(env: NetEnv, mode: str) -> str:
    if mode == "iptables":
        return env.exec(env.node, "iptables-save", "-t", "nat")
    return env.exec(env.node, "nft", "list", "table", "ip", "kube-proxy")


def masq_jumps(text: str, mode: str) -> int:
    """Masquerade jumps not limited to off-cluster sources (masqueradeAll writes those)."""
    words = ("-j KUBE-MARK-MASQ",) if mode == "iptables" else ("mark set mark or ", "meta mark set meta mark | ")
    return sum(any(w in line for w in words) and "! -s" not in line and "saddr !=" not in line
               for line in text.splitlines())


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kubeadm_file_with_both_sections_programs_the_active_one(env: NetEnv, tmp_path: Path, mode: str) -> None:
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("tcp", ["10.0.1.30"], 8080)
    web(m / "web.json", ready("10.0.1.30"))
    cfg = kubeadm_file(tmp_path / "config.conf", mode)
    # --proxy-mode (given by Daemon) is overridden by the file, as kube-proxy does
    other = "nftables" if mode == "iptables" else "iptables"
    daemon = Daemon(env, m, other, tmp_path / "daemon.log", "--config", str(cfg)).start()
    daemon.wait_sync(0)
    client = env.client("tcp", WEB_IP, 80)
    try:
        time.sleep(0.5)
    finally:
        events = client.stop()
        daemon.stop()
    assert events and all(e["ok"] for e in events), "the Service answers"
    assert "--proxy-mode is ignored because --config is given" in daemon.log()
    rules = kernel_rules(env, mode)
    mark, other_mark = ("0x8", "0x80") if mode == "iptables" else ("0x00000080", "0x00000008")
    assert mark in rules and other_mark not in rules, "the active section's masqueradeBit"
    # masqueradeAll: the kernel holds what the renderer makes of the same file (whose own
    # tests check masquerade-all rules), and it is the active section's value
    args = ["-f", str(m), "--config", str(cfg), "--hostname-override", "node-a", "--node-ip", "10.0.1.1"]
    rendered = CliRunner().invoke(render, args).stdout
    assert masq_jumps(rules, mode) == masq_jumps(rendered, mode)
    flipped = yaml.safe_load(cfg.read_text())
    flipped[mode]["masqueradeAll"] = not flipped[mode]["masqueradeAll"]
    (tmp_path / "flipped.conf").write_text(yaml.safe_dump(flipped))
    args[3] = str(tmp_path / "flipped.conf")
    with_all, without = (masq_jumps(rendered, mode), masq_jumps(CliRunner().invoke(render, args).stdout, mode))
    if mode == "nftables":
        with_all, without = without, with_all
    assert with_all > without, "masqueradeAll true (iptables section) adds masquerade jumps"


def test_daemon_exits_when_its_configmap_file_changes(env: NetEnv, tmp_path: Path) -> None:
    """A ConfigMap volume swaps a symlink (..data); kube-proxy exits so its pod restarts."""
    m = tmp_path / "manifests"
    m.mkdir()
    web(m / "web.json", ready("10.0.1.30"))
    vol = tmp_path / "vol"
    (vol / "v1").mkdir(parents=True)
    kubeadm_file(vol / "v1" / "config.conf", "iptables")
    os.symlink("v1", vol / "..data")
    os.symlink("..data/config.conf", vol / "config.conf")
    daemon = Daemon(env, m, "iptables", tmp_path / "daemon.log", "--config", str(vol / "config.conf")).start()
    daemon.wait_sync(0)
    assert daemon.proc is not None and daemon.proc.poll() is None
    (vol / "v2").mkdir()
    kubeadm_file(vol / "v2" / "config.conf", "nftables")
    os.symlink("v2", vol / "..data.tmp")
    os.rename(vol / "..data.tmp", vol / "..data")
    daemon.proc.wait(10)
    assert daemon.proc.returncode == 1
    assert "configuration file" in daemon.log() and "was updated" in daemon.log()
    daemon.stop()


def test_init_only_sets_the_node_up_and_exits(env: NetEnv, tmp_path: Path) -> None:
    """kube-proxy's init container: `--init-only` writes the per-namespace sysctls and exits 0,
    programming no rules."""
    svcproxy = str(Path(__import__("sys").executable).with_name("svcproxy"))
    out = env.exec(env.node, svcproxy, "run", "--init-only", "--conntrack-max-per-core=0",
                   "--conntrack-tcp-timeout-established=2h", "--conntrack-tcp-be-liberal",
                   "--conntrack-udp-timeout=45s", "--hostname-override=node-a", "--node-ip=10.0.1.1")
    read = lambda key: env.exec(env.node, "sysctl", "-n", key).strip()  # noqa: E731
    assert read("net.netfilter.nf_conntrack_tcp_timeout_established") == "7200"
    assert read("net.netfilter.nf_conntrack_tcp_be_liberal") == "1"
    assert read("net.netfilter.nf_conntrack_udp_timeout") == "45"
    assert read("net.ipv4.conf.all.route_localnet") == "1", "iptables mode, localhost NodePorts on"
    assert "KUBE-SERVICES" not in env.exec(env.node, "iptables-save"), out


def test_init_only_names_the_setting_it_cannot_write(env: NetEnv) -> None:
    import subprocess
    import sys

    svcproxy = str(Path(sys.executable).with_name("svcproxy"))
    done = subprocess.run(["ip", "netns", "exec", env.node, svcproxy, "run", "--init-only",
                           "--conntrack-max-per-core=1000000", "--hostname-override=node-a"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "nf_conntrack_max" in done.stderr and "conntrack" in done.stderr
