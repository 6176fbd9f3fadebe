"""kube-proxy's nfacct counter families, read from the kernel in a network namespace of the test's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

SCRAPE = """
import socket, struct
from prometheus_client import generate_latest
from svcproxy.runtime.metrics import Metrics
from svcproxy.runtime.nfacct import _attr
if CREATE:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    s.bind((0, 0))
    payload = struct.pack("BBH", 0, 0, 0) + _attr(1, b"ct_state_invalid_dropped_pkts\\0")
    s.send(struct.pack("IHHII", 16 + len(payload), 7 << 8, 0x1 | 0x4 | 0x400, 1, 0) + payload)  # NFNL_MSG_ACCT_NEW
    s.recv(4096)
    subprocess.run(["iptables", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "-m", "nfacct", "--nfacct-name",
                    "ct_state_invalid_dropped_pkts"], check=True)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        u.sendto(b"x", ("127.0.0.1", 9))
print(generate_latest(Metrics(MODE, process=False).registry).decode())
"""


def scrape_in_netns(create: bool, mode: str = "iptables") -> str:
    ns = f"nfa-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        code = f"import subprocess\nCREATE = {create}\nMODE = {mode!r}\n" + SCRAPE
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True, cwd=ROOT,
                              capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_nfacct_counter_exported_while_the_object_exists() -> None:
    text = scrape_in_netns(create=True)
    assert "kubeproxy_iptables_ct_state_invalid_dropped_packets_total 5.0" in text
    assert "# TYPE kubeproxy_iptables_ct_state_invalid_dropped_packets_total counter" in text
    assert "kubeproxy_iptables_localhost_nodeports_accepted_packets" not in text  # no such object


def test_no_nfacct_object_no_family() -> None:
    assert "kubeproxy_iptables_" not in scrape_in_netns(create=False).replace("kubeproxy_sync_proxy_rules_iptables", "")
    assert "ct_state_invalid" not in scrape_in_netns(create=True, mode="nftables")
