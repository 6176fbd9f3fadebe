"""Dual-stack in one daemon, without the kernel: one syncer per family on its own feed, a
family that keeps failing reported by /healthz while the other goes on, per-family metrics,
and the choice of families `svcproxy run` makes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from svcproxy.config import NodeConfig
from svcproxy.runtime.addresses import node_address_families, platform_families, run_families
from svcproxy.runtime.daemon import Daemon, DaemonOptions
from svcproxy.sources.manifests import ManifestSource
from svcproxy.sources.store import ObjectStore

from .fakes import RecordingDataplane, running
from .manifests_util import endpoint, endpoint_slice, service
from .test_health_metrics import free_port, get
from .test_sync_loop import until, write

pytestmark = pytest.mark.timeout(60)
CFG = NodeConfig(hostname="node-a", node_ips=("192.168.0.2", "fd00::2"))


def dual_service() -> dict:
    return service("web", "172.30.0.10", ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack",
                   clusterIPs=["172.30.0.10", "fd00:172:30::10"])


def v6_slice(ips: list[str], name: str = "web-v6") -> dict:
    sl = endpoint_slice(name, "web", [endpoint(ip, "node-a") for ip in ips])
    sl["addressType"] = "IPv6"
    return sl


def test_each_feed_sees_every_change_and_taking_one_leaves_the_other() -> None:
    store = ObjectStore(["m"])
    second = store.subscribe()
    store.feed.take(), second.take()  # the initial full rebuilds
    store.put("m", _parsed_service())
    assert store.feed.changed.is_set() and second.changed.is_set()
    assert store.feed.take().services == {"default/web"}
    assert not store.feed.changed.is_set()
    assert second.changed.is_set() and second.pending.services == {"default/web"}
    assert second.take().service_events == 1


def _parsed_service():
    from svcproxy.model.parse import parse_service
    return parse_service(dual_service())


def test_run_families() -> None:
    # --ip-family: single-stack whatever else is known
    assert run_families(6, 6, ["192.168.0.2", "fd00::2"]) == (6,)
    # a dual pair of node IPs: both, the primary (first --node-ip) first
    assert run_families(None, 6, ["fd00::2", "192.168.0.2"]) == (6, 4)
    assert run_families(None, 4, ["192.168.0.2", "10.0.0.0/8", "fd00:10::/64"]) == (4, 6)
    # one family given: that one, whatever the node has
    assert run_families(None, 4, ["192.168.0.2"], kernel=(4, 6)) == (4,)
    # nothing given: the node's global addresses decide; nothing at all: IPv4
    assert run_families(None, 4, [], kernel=(4, 6)) == (4, 6)
    assert run_families(None, 4, []) == (4,)
    # kube-proxy's rule (every mode it has): whatever the platform supports, the primary first
    assert run_families(None, 4, ["192.168.0.2"], supported={4, 6}) == (4, 6)
    assert run_families(None, 6, ["fd00::2"], supported={4, 6}) == (6, 4)
    assert run_families(None, 4, ["192.168.0.2", "fd00::2"], supported={4}) == (4,)
    assert run_families(4, 4, [], supported={4, 6}) == (4,)
    with pytest.raises(ValueError, match="no support for the primary IP family IPv6"):
        run_families(None, 6, ["fd00::2"], supported={4})
    links = [{"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "scope": "host"}, {"local": "::1", "scope": "host"}]},
             {"ifname": "eth0", "addr_info": [{"local": "192.168.0.2", "scope": "global"},
                                              {"local": "fe80::1", "scope": "link"}]},
             {"ifname": "svcproxy0", "addr_info": [{"local": "fd00:172:30::10", "scope": "global"}]}]
    assert node_address_families(links) == (4,), "loopback, link-local and service links do not count"


def test_a_failing_family_is_reported_and_the_other_keeps_programming(tmp_path: Path) -> None:
    async def main() -> None:
        m = tmp_path / "m"
        m.mkdir()
        write(m / "web.json", dual_service(), endpoint_slice("web-v4", "web", [endpoint("10.0.1.10", "node-a")]),
              v6_slice(["fd00:10::10"]))
        v4, v6 = RecordingDataplane(), RecordingDataplane()
        hz, mp = free_port(), free_port()
        # iptables mode's metric families (the dataplanes are fakes: nothing touches the kernel)
        opts = DaemonOptions(cfg=CFG, mode="iptables", sources=[ManifestSource([m])], families=(4, 6),
                             healthz_bind_address=f"127.0.0.1:{hz}", metrics_bind_address=f"127.0.0.1:{mp}",
                             min_sync_period=0.0, sync_period=0.2, clear_conntrack=False)
        daemon = Daemon(opts, dps={4: v4, 6: v6})
        assert [s.cfg.ip_family for s in daemon.syncers.values()] == [4, 6]
        async with running(daemon):
            await until(lambda: v4.calls and v6.calls)
            assert v4.endpoints("default/web") == ["10.0.1.10:8080"]
            assert v6.endpoints("default/web") == ["[fd00:10::10]:8080"]
            assert v4.last.services["default/web"].ports[0].cluster_ip == "172.30.0.10"
            assert v6.last.services["default/web"].ports[0].cluster_ip == "fd00:172:30::10"
            status, _ = await get(f"http://127.0.0.1:{hz}/healthz")
            assert status == 200

            # IPv6 cannot be programmed any more: IPv4 changes still land, /healthz turns 503
            v6.fail_next = 10**6
            write(m / "web.json", dual_service(), endpoint_slice("web-v4", "web", [endpoint("10.0.1.11", "node-a")]),
                  v6_slice(["fd00:10::11"]))
            await until(lambda: v4.endpoints("default/web") == ["10.0.1.11:8080"])
            assert v6.endpoints("default/web") == ["[fd00:10::10]:8080"], "IPv6 keeps its last good rules"
            for _ in range(300):
                status, body = await get(f"http://127.0.0.1:{hz}/healthz")
                if status == 503:
                    break
                await asyncio.sleep(0.02)
            doc = json.loads(body)
            assert status == 503 and doc["healthy"] is False
            assert {f: st["healthy"] for f, st in doc["status"].items()} == {"IPv4": True, "IPv6": False}
            # lastUpdated: the most recent family's update (kube-proxy's backward-compatible field)
            assert doc["lastUpdated"] == doc["status"]["IPv4"]["lastUpdated"]
            assert daemon.health.failing() == ["IPv6"]
            # IPv4 is still answered at once while IPv6 backs off
            write(m / "web.json", dual_service(), endpoint_slice("web-v4", "web", [endpoint("10.0.1.12", "node-a")]),
                  v6_slice(["fd00:10::11"]))
            await until(lambda: v4.endpoints("default/web") == ["10.0.1.12:8080"], timeout=2)

            _, text = await get(f"http://127.0.0.1:{mp}/metrics")
            assert 'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}' in text
            assert 'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"}' in text
            failures = {ln.split("{")[1].split('"')[1]: float(ln.split()[-1]) for ln in text.splitlines()
                        if ln.startswith("kubeproxy_sync_proxy_rules_iptables_restore_failures_total{")}
            assert failures["IPv4"] == 0 and failures["IPv6"] >= 1

            # IPv6 recovers: its rules catch up, /healthz is 200 again
            v6.fail_next = 0
            await until(lambda: v6.endpoints("default/web") == ["[fd00:10::11]:8080"], timeout=10)
            await until(lambda: daemon.health.healthy(), timeout=5)
            status, _ = await get(f"http://127.0.0.1:{hz}/healthz")
            assert status == 200

    asyncio.run(main())


def test_status_snapshot_lists_both_families_ports() -> None:
    from dataclasses import replace

    from svcproxy.model.load import load_paths
    from svcproxy.runtime.status import EndpointCounters, SyncLog, snapshot
    from svcproxy.state import build_state

    dual = Path(__file__).resolve().parents[2] / "examples" / "dual-stack"
    objects = load_paths([dual])
    cfg = NodeConfig(hostname="test-node", node_ips=("192.168.0.2", "fd00:192:168::2"))
    states = [build_state(objects, cfg), build_state(objects, replace(cfg, ip_family=6))]
    log = SyncLog()
    log.record(True, 0.01, [], 3, "IPv6")
    snap = snapshot(states, EndpointCounters(dump=lambda: []), log, {}, "iptables", "test-node")
    web = next(s for s in snap["services"] if s["key"] == "default/web")
    assert {p["cluster_ip"] for p in web["ports"]} == {"172.30.0.10", "fd00:172:30::10"}
    v6 = [p for p in web["ports"] if p["cluster_ip"] == "fd00:172:30::10" and p["protocol"] == "TCP"]
    assert {e["ip"] for e in v6[0]["endpoints"]} == {"fd00:10:0:1::10", "fd00:10:0:2::10"}
    assert snap["syncs"][0]["family"] == "IPv6"


def test_platform_families(tmp_path: Path) -> None:
    """kube-proxy's platformCheckSupported: the binaries for iptables mode, the kernel's IPv6."""
    (tmp_path / "net").mkdir()
    (tmp_path / "sys/net/ipv6/conf/all").mkdir(parents=True)
    (tmp_path / "net/if_inet6").write_text("")
    knob = tmp_path / "sys/net/ipv6/conf/all/disable_ipv6"
    knob.write_text("0\n")
    every = lambda tool: None  # noqa: E731 - each tool works
    assert platform_families("iptables", str(tmp_path), every) == ({4, 6}, [])
    assert platform_families("nftables", str(tmp_path), lambda tool: "broken") == ({4, 6}, [])
    fams, why = platform_families("iptables", str(tmp_path),
                                  lambda t: "ip6tables is not installed" if t == "ip6tables" else None)
    assert fams == {4} and why == ["no IPv6 support: ip6tables is not installed"]
    knob.write_text("1\n")
    fams, why = platform_families("nftables", str(tmp_path), every)
    assert fams == {4} and "disable_ipv6=1" in why[0]
    (tmp_path / "net/if_inet6").unlink()
    fams, why = platform_families("ebpf", str(tmp_path), every)
    assert fams == {4} and "no /proc/net/if_inet6" in why[0]


def test_run_takes_ip_family_from_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """--ip-family reaches run's choice of families (the resolved Settings carry it); without
    it a host that can do both runs both, as kube-proxy does, even with one node IP."""
    from svcproxy.cli.run import _node
    from svcproxy.proxyconfig.resolve import OwnFlags, resolve
    from svcproxy.runtime import addresses

    monkeypatch.setattr(addresses, "platform_families", lambda mode: ({4, 6}, []))
    cfg, fams = _node(resolve({}, OwnFlags(node_ips=("fd00::2",))), detect_local_addresses=False)
    assert fams == (6, 4) and cfg.ip_family == 6
    monkeypatch.setattr(addresses, "platform_families", lambda mode: ({4}, ["IPv6 is disabled"]))
    with pytest.raises(SystemExit):
        _node(resolve({}, OwnFlags(node_ips=("fd00::2",))), detect_local_addresses=False)
    monkeypatch.setattr(addresses, "platform_families", lambda mode: ({4, 6}, []))

    dual = ("192.168.0.2", "fd00::2")
    cfg, fams = _node(resolve({}, OwnFlags(ip_family=6, node_ips=dual)), detect_local_addresses=False)
    assert fams == (6,) and cfg.ip_family == 6
    cfg, fams = _node(resolve({}, OwnFlags(node_ips=dual)), detect_local_addresses=False)
    assert fams == (4, 6) and cfg.ip_family == 4


def test_iptables_present_runs_the_tool() -> None:
    """Present() as kube-proxy checks it: the tool lists nat's POSTROUTING, else why not."""
    from svcproxy.runtime.addresses import iptables_present

    assert iptables_present("no-such-iptables-tool") == "no-such-iptables-tool is not installed"
    assert iptables_present("false") == "false -t nat fails: exit status 1"
