"""Failure detection, end to end in network namespaces (issue 27): the canary watch repairs a
foreign flush long before the next periodic sync, and the UDP conntrack reconcile clears flows
to pods removed while no daemon ran."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .manifests_util import endpoint_slice, service
from .netenv import PYTHON, Daemon, NetEnv
from .test_e2e_kernel import MODES, WEB_IP, ready, web, write

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]
DNS_IP = "172.30.0.53"

# what a firewall reload or a cleanup script does to the tables, per mode
FLUSH = {
    "iptables": [["iptables", "-w", "-t", table, flag] for table in ("mangle", "nat", "filter") for flag in ("-F", "-X")],
    "iptables-rules": [["iptables", "-w", "-t", "nat", "-F"]],  # the rules go, the (empty) canary stays
    "nftables": [["nft", "delete", "table", "ip", "kube-proxy"]],
    "nftables-maps": [["nft", "flush", "table", "ip", "kube-proxy"]],
    "nftables-ruleset": [["nft", "flush", "ruleset"]],
}
CASES = [pytest.param(damage.removesuffix("-rules").removesuffix("-ruleset"), damage, id=damage) for damage in FLUSH]

def scrape(env: NetEnv, sample: str) -> float:
    """One sample of the daemon's /metrics (0 when absent), read from inside the node namespace."""
    code = ("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:10249/metrics', timeout=5)"
            ".read().decode())")
    text = env.exec(env.node, PYTHON, "-c", code)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


@pytest.mark.parametrize(("mode", "damage"), CASES)
def test_foreign_flush_repaired_long_before_the_sync_period(env: NetEnv, tmp_path: Path, mode: str,
                                                            damage: str) -> None:
    """--sync-period 60s: only the canary watch (every 5 s here) can bring the rules back in time."""
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("tcp", ["10.0.1.30"], 8080)
    web(m / "web.json", ready("10.0.1.30"))
    daemon = Daemon(env, m, mode, tmp_path / "daemon.log", "--sync-period", "60s").start()
    daemon.wait_sync(0)
    client = env.client("tcp", WEB_IP, 80)
    try:
        time.sleep(0.5)
        assert client.events and all(e["ok"] for e in client.events)
        for cmd in FLUSH[damage]:
            env.exec(env.node, *cmd)
        t_flushed = time.time()
        deadline = t_flushed + 12
        while time.time() < deadline:
            recent = client.since(time.time() - 0.5)
            if time.time() > t_flushed + 1 and recent and all(e["ok"] for e in recent):
                break
            time.sleep(0.1)
        t_seen = time.time()
        time.sleep(0.5)
        resyncs = scrape(env, 'svcproxy_canary_resyncs_total{ip_family="IPv4"}')
    finally:
        events = client.stop()
        daemon.stop()
    assert any(not e["ok"] for e in events if e["t"] > t_flushed), "the flush broke the service"
    assert t_seen - t_flushed < 8, f"repaired only after {t_seen - t_flushed:.1f}s:\n{daemon.log()[-2000:]}"
    after = [e for e in events if e["t"] > t_seen]
    assert after and all(e["ok"] for e in after)
    assert resyncs >= 1
    assert "canary gone" in daemon.log()


@pytest.mark.parametrize("mode", MODES)
def test_udp_flow_to_a_pod_removed_while_down_is_cleared_at_the_first_sync(env: NetEnv, tmp_path: Path,
                                                                           mode: str) -> None:
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("udp", ["10.0.1.40", "10.0.1.41"], 5353)

    def dns(*ips: str) -> None:
        write(m / "dns.json", service("dns", DNS_IP, 53, "UDP", target=5353),
              endpoint_slice("dns-1", "dns", [ready(ip) for ip in ips], 5353, "UDP"))

    dns("10.0.1.40", "10.0.1.41")
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, m, mode, log).start()
    daemon.wait_sync(0)
    client = env.client("udp", DNS_IP, 53)
    try:
        time.sleep(0.5)
        stuck = {e.get("ep") for e in client.events if e["ok"]}
        assert len(stuck) == 1, "one socket, one conntrack entry, one endpoint"
        first = stuck.pop()
        other = "10.0.1.41" if first == "10.0.1.40" else "10.0.1.40"
        assert daemon.stop() == 0
        dns(other)  # the pod behind the flow goes while no proxy runs (its server still answers)
        time.sleep(0.5)
        assert {e.get("ep") for e in client.since(time.time() - 0.3)} == {first}, "the entry outlives the daemon"
        log.write_text("")
        daemon = Daemon(env, m, mode, log).start()
        daemon.wait_sync(0)
        t_synced = time.time()
        time.sleep(0.6)
        deleted = scrape(env, 'kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family="IPv4"}')
        observed = scrape(env, 'kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family="IPv4"}')
    finally:
        events = client.stop()
        daemon.stop()
    later = [e.get("ep") for e in events if e["t"] > t_synced + 0.1]
    assert later and set(later) == {other}, f"client still on {first}: {later[:5]}"
    assert deleted >= 1 and observed >= 1
