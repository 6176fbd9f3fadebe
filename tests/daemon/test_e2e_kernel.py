"""`svcproxy run` end to end: real rules, real traffic, in network namespaces made for each test.

The node namespace runs the daemon and the clients; the pod namespace runs the servers (see
netenv.py). Clients connect every few milliseconds throughout; a single failed connection fails
the test.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import pytest

from .manifests_util import endpoint, endpoint_slice, service
from .netenv import Daemon, NetEnv

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


def _available(mode: str) -> bool:
    module = importlib.import_module(f"svcproxy.dataplane.{mode.partition('-')[0]}")
    return hasattr(module, "IptablesDataplane" if mode == "iptables" else "NftablesDataplane")


MODES = [pytest.param(m, marks=pytest.mark.skipif(not _available(m), reason=f"{m} dataplane not implemented yet"))
         for m in ("iptables", "nftables", "nftables-maps")]
WEB_IP, DNS_IP = "172.30.0.10", "172.30.0.53"


def write(path: Path, *objs: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))
    tmp.rename(path)  # atomic, as a config-management tool would write it


def web(path: Path, *eps: dict) -> None:
    write(path, service("web", WEB_IP, 80, target=8080), endpoint_slice("web-1", "web", list(eps)))


def ready(ip: str) -> dict:
    return endpoint(ip, "node-a")


def terminating(ip: str) -> dict:
    return endpoint(ip, "node-a", ready=False, serving=True, terminating=True)


def settle(daemon: Daemon, n: int) -> int:
    """Wait for the next sync (the manifests change has reached the kernel)."""
    return daemon.wait_sync(n)


@pytest.mark.parametrize("mode", MODES)
def test_scale_and_roll_with_zero_failed_connections(env: NetEnv, tmp_path: Path, mode: str) -> None:
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("tcp", [f"10.0.1.{i}" for i in range(10, 16)], 8080)
    web(m / "web.json", ready("10.0.1.10"), ready("10.0.1.11"))
    daemon = Daemon(env, m, mode, tmp_path / "daemon.log").start()
    n = daemon.wait_sync(0)
    client = env.client("tcp", WEB_IP, 80)
    try:
        time.sleep(0.3)
        # scale up
        web(m / "web.json", *map(ready, ["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"]))
        n = settle(daemon, n)
        time.sleep(0.3)
        # scale down: the endpoint leaves the slice, then its pod goes away
        web(m / "web.json", *map(ready, ["10.0.1.10", "10.0.1.11", "10.0.1.12"]))
        n = settle(daemon, n)
        env.stop_serving("10.0.1.13")
        time.sleep(0.3)
        # roll: new pods ready, old ones terminating, then gone
        web(m / "web.json", terminating("10.0.1.10"), terminating("10.0.1.11"), terminating("10.0.1.12"),
            ready("10.0.1.14"), ready("10.0.1.15"))
        n = settle(daemon, n)
        t_rolled = time.time()
        time.sleep(0.3)
        web(m / "web.json", ready("10.0.1.14"), ready("10.0.1.15"))
        n = settle(daemon, n)
        for ip in ("10.0.1.10", "10.0.1.11", "10.0.1.12"):
            env.stop_serving(ip)
        time.sleep(0.3)
    finally:
        events = client.stop()
        daemon.stop()
    assert len(events) > 100, "the client kept connecting"
    assert client.failures() == [], f"{len(client.failures())} failed connection(s): {client.failures()[:3]}"
    seen = {e["ep"] for e in events}
    assert {"10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13", "10.0.1.14", "10.0.1.15"} <= seen
    after_roll = {e["ep"] for e in events if e["t"] > t_rolled + 0.05}
    assert after_roll == {"10.0.1.14", "10.0.1.15"}, "terminating endpoints get no new connections"


@pytest.mark.parametrize("mode", MODES)
def test_kill9_and_restart_under_load(env: NetEnv, tmp_path: Path, mode: str) -> None:
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("tcp", ["10.0.1.20", "10.0.1.21", "10.0.1.22"], 8080)
    web(m / "web.json", ready("10.0.1.20"), ready("10.0.1.21"))
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, m, mode, log).start()
    daemon.wait_sync(0)
    client = env.client("tcp", WEB_IP, 80)
    try:
        time.sleep(0.3)
        daemon.kill9()
        time.sleep(0.5)  # the rules stay while no daemon runs
        down = len(client.events)
        # a change while the daemon is down is picked up by the next one
        web(m / "web.json", ready("10.0.1.21"), ready("10.0.1.22"))
        log.write_text("")
        daemon = Daemon(env, m, mode, log).start()
        daemon.wait_sync(0)
        t_restarted = time.time()
        env.stop_serving("10.0.1.20")
        time.sleep(0.5)
    finally:
        events = client.stop()
        status = daemon.stop()
    assert down > 20
    assert client.failures() == [], f"{len(client.failures())} failed connection(s): {client.failures()[:3]}"
    assert {e["ep"] for e in events if e["t"] > t_restarted + 0.05} == {"10.0.1.21", "10.0.1.22"}
    assert status == 0, "SIGTERM is a clean stop"
    # after SIGTERM the rules are still there: traffic keeps flowing with no daemon at all
    again = env.client("tcp", WEB_IP, 80)
    time.sleep(0.3)
    events = again.stop()
    assert events and all(e["ok"] for e in events)


DAMAGE = {
    "iptables": [["iptables", "-w", "-t", "nat", "-F", "KUBE-SERVICES"]],
    "nftables": [["nft", "flush", "chain", "ip", "kube-proxy", "services"]],
    "nftables-maps": [["nft", "flush", "chain", "ip", "kube-proxy", "services"]],
}


@pytest.mark.parametrize("mode", MODES)
def test_hand_deleted_rules_restored_within_one_sync_period(env: NetEnv, tmp_path: Path, mode: str) -> None:
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("tcp", ["10.0.1.30"], 8080)
    web(m / "web.json", ready("10.0.1.30"))
    daemon = Daemon(env, m, mode, tmp_path / "daemon.log", "--sync-period", "1s").start()
    daemon.wait_sync(0)
    client = env.client("tcp", WEB_IP, 80)
    try:
        time.sleep(0.3)
        assert client.events and all(e["ok"] for e in client.events)
        for cmd in DAMAGE[mode]:
            env.exec(env.node, *cmd)
        t_damaged = time.time()
        time.sleep(3.5)
    finally:
        events = client.stop()
        daemon.stop()
    broken = [e for e in events if not e["ok"]]
    assert broken, "the damage did break the service (otherwise this test proves nothing)"
    # one sync period (1 s) plus the time the repairing full sync itself takes (reading the
    # kernel back, then writing): up to ~1 s more when the machine is busy
    repaired = [e for e in events if e["t"] > t_damaged + 2.0]
    assert repaired and all(e["ok"] for e in repaired), "a periodic full sync repaired the rules"


@pytest.mark.parametrize("mode", MODES)
def test_udp_clients_move_off_a_removed_endpoint(env: NetEnv, tmp_path: Path, mode: str) -> None:
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("udp", ["10.0.1.40", "10.0.1.41"], 5353)

    def dns(*ips: str) -> None:
        write(m / "dns.json", service("dns", DNS_IP, 53, "UDP", target=5353),
              endpoint_slice("dns-1", "dns", [ready(ip) for ip in ips], 5353, "UDP"))

    dns("10.0.1.40", "10.0.1.41")
    daemon = Daemon(env, m, mode, tmp_path / "daemon.log").start()
    n = daemon.wait_sync(0)
    client = env.client("udp", DNS_IP, 53)
    try:
        time.sleep(0.5)
        stuck = {e.get("ep") for e in client.events if e["ok"]}
        assert len(stuck) == 1, "one socket, one conntrack entry, one endpoint"
        first = stuck.pop()
        other = "10.0.1.41" if first == "10.0.1.40" else "10.0.1.40"
        # the pod behind the flow is removed from the slice (its server still answers, so only
        # the conntrack cleanup can move the client)
        dns(other)
        settle(daemon, n)
        t_removed = time.time()
        time.sleep(0.8)
    finally:
        events = client.stop()
        daemon.stop()
    later = [e.get("ep") for e in events if e["t"] > t_removed + 0.2]
    assert later and set(later) == {other}, f"client still on {first}: {later[:5]}"


@pytest.mark.parametrize("mode", MODES)
def test_api_source_end_to_end_with_restart(env: NetEnv, tmp_path: Path, mode: str) -> None:
    """Fed by the stand-in API server: changes reach the kernel, and a restarted daemon programs
    nothing before its lists are complete (the rules it inherits keep serving meanwhile)."""
    from .netenv import ApiServer

    api = ApiServer(env)
    env.serve("tcp", ["10.0.1.25", "10.0.1.26", "10.0.1.27"], 8080)
    api.apply(service("web", WEB_IP, 80, target=8080),
              endpoint_slice("web-1", "web", [ready("10.0.1.25"), ready("10.0.1.26")]))
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, None, mode, log, "--master", api.url).start()
    n = daemon.wait_sync(0)
    client = env.client("tcp", WEB_IP, 80)
    try:
        time.sleep(0.3)
        api.apply(endpoint_slice("web-1", "web", [ready("10.0.1.26"), ready("10.0.1.27")]))
        n = settle(daemon, n)
        t_changed = time.time()
        env.stop_serving("10.0.1.25")
        time.sleep(0.3)
        daemon.kill9()
        api.slow_lists(1.5)  # the new daemon must not program a half-listed (or empty) state meanwhile
        log.write_text("")
        daemon = Daemon(env, None, mode, log, "--master", api.url).start()
        t_restart = time.time()
        daemon.wait_sync(0)
        assert time.time() - t_restart > 1.5
        time.sleep(0.3)
    finally:
        events = client.stop()
        daemon.stop()
    assert client.failures() == [], f"{len(client.failures())} failed connection(s): {client.failures()[:3]}"
    assert {e["ep"] for e in events if e["t"] > t_changed + 0.05} == {"10.0.1.26", "10.0.1.27"}
    assert "listed" in log.read_text()


@pytest.mark.parametrize("mode", MODES)
def test_udp_flow_blackholed_before_the_service_existed_gets_through(env: NetEnv, tmp_path: Path,
                                                                     mode: str) -> None:
    """A UDP client that sent before the service had endpoints has a conntrack entry without DNAT;
    without cleanup it would stay blackholed as long as it keeps sending."""
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("udp", ["10.0.1.42"], 5353)
    daemon = Daemon(env, m, mode, tmp_path / "daemon.log").start()
    n = daemon.wait_sync(0)
    client = env.client("udp", DNS_IP, 53)
    try:
        time.sleep(0.5)
        assert client.events and not any(e["ok"] for e in client.events), "nothing answers yet"
        assert "udp" in env.exec(env.node, "conntrack", "-L", "-p", "udp", "--orig-dst", DNS_IP, check=False)
        write(m / "dns.json", service("dns", DNS_IP, 53, "UDP", target=5353),
              endpoint_slice("dns-1", "dns", [ready("10.0.1.42")], 5353, "UDP"))
        settle(daemon, n)
        t_added = time.time()
        time.sleep(0.8)
    finally:
        events = client.stop()
        daemon.stop()
    later = [e for e in events if e["t"] > t_added + 0.3]
    assert later and all(e["ok"] and e["ep"] == "10.0.1.42" for e in later), later[:3]


def _leftovers(env: NetEnv) -> dict[str, bool]:
    """Which modes have something of theirs in the node namespace now."""
    return {"iptables": "KUBE-SERVICES" in env.exec(env.node, "iptables-save", "-t", "nat"),
            "nftables": "kube-proxy" in env.exec(env.node, "nft", "list", "tables"),
            "userspace": "svcproxy0" in env.exec(env.node, "ip", "-brief", "link")}


def test_each_mode_removes_the_other_modes_leftovers_before_it_programs(env: NetEnv, tmp_path: Path) -> None:
    """Switching a node's mode (iptables -> nftables -> userspace -> iptables), as kube-proxy
    does: the new daemon removes the old mode's rules or interface before its first sync, and
    the service answers through the new mode alone."""
    m = tmp_path / "manifests"
    m.mkdir()
    env.serve("tcp", ["10.0.1.49"], 8080)
    web(m / "web.json", ready("10.0.1.49"))
    previous = None
    for i, mode in enumerate(("iptables", "nftables", "userspace", "iptables")):
        daemon = Daemon(env, m, mode, tmp_path / f"{i}-{mode}.log").start()
        try:
            daemon.wait_sync(0)
            have = _leftovers(env)
            client = env.client("tcp", WEB_IP, 80)
            time.sleep(0.3)
        finally:
            events = client.stop()
            daemon.stop()  # the rules stay, as they would for the next mode to find
        assert have[mode], f"{mode} programmed the node: {have}"
        if previous is not None:
            assert not have[previous], f"{mode} removed {previous} mode's leftovers"
        assert sum(have.values()) == 1, have
        assert events and all(e["ok"] for e in events), f"{mode}: {[e for e in events if not e['ok']][:3]}"
        previous = mode
