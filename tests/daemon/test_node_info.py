"""This node's Node object, as kube-proxy's NodeManager uses it: node IPs when --node-ip is not
given (InternalIPs first, one per family), spec.podCIDRs for detect-local mode NodeCIDR (waited
for; a later change exits the daemon), and the log when --nodeport-addresses primary has no
address to use."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from svcproxy.config import NodeConfig
from svcproxy.model.parse import parse_node
from svcproxy.runtime.daemon import Daemon, DaemonOptions
from svcproxy.runtime.nodeinfo import (
    NodeSetupError,
    RestartRequired,
    node_host_ips,
    setup_warnings,
    wait_for_node,
    with_node,
)
from svcproxy.sources.manifests import ManifestSource
from svcproxy.sources.store import ObjectStore

from .fakes import RecordingDataplane
from .manifests_util import endpoint, endpoint_slice, service
from .test_sync_loop import until, write

pytestmark = pytest.mark.timeout(60)
CFG = NodeConfig(hostname="test-node", cluster_cidrs=("10.0.0.0/8",))
NODE_CIDR = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), detect_local_mode="NodeCIDR")


def node(pod_cidrs: list[str] | None = None, addresses: list[tuple[str, str]] | None = None) -> dict:
    obj: dict = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "test-node"}, "spec": {}, "status": {}}
    if pod_cidrs is not None:
        obj["spec"] = {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs}
    if addresses is not None:
        obj["status"]["addresses"] = [{"type": t, "address": a} for t, a in addresses]
    return obj


def test_node_ips_are_kube_proxys_get_node_host_ips() -> None:
    n = parse_node(node(["10.0.1.0/24", "fd00:10:1::/64"], [
        ("Hostname", "test-node"), ("ExternalIP", "203.0.113.2"), ("InternalIP", "fd00::2"),
        ("InternalIP", "192.168.0.2"), ("ExternalIP", "2001:db8::2")]))
    assert n.pod_cidrs == ("10.0.1.0/24", "fd00:10:1::/64")
    assert n.addresses == ("fd00::2", "192.168.0.2", "203.0.113.2", "2001:db8::2")  # InternalIPs first
    assert node_host_ips(n) == ("fd00::2", "192.168.0.2")  # the first, then the first of the other family
    assert node_host_ips(parse_node(node(addresses=[("ExternalIP", "203.0.113.2"), ("InternalIP", "192.168.0.3")]))) \
        == ("192.168.0.3",)
    assert node_host_ips(parse_node(node())) == () and node_host_ips(None) == ()
    assert parse_node({"kind": "Node", "metadata": {"name": "n"}, "spec": {"podCIDR": "10.0.2.0/24"}}).pod_cidrs \
        == ("10.0.2.0/24",)


def test_with_node_completes_the_config() -> None:
    n = parse_node(node(["10.0.1.0/24"], [("InternalIP", "192.168.0.2")]))
    cfg = with_node(CFG, n, node_ips_given=False)
    assert cfg.node_ips == ("192.168.0.2",) and cfg.primary_ip == "192.168.0.2"
    assert cfg.node_pod_cidrs == ()  # ClusterCIDR mode does not use them
    given = NodeConfig(hostname="test-node", node_ips=("192.168.0.9",), detect_local_mode="NodeCIDR")
    assert with_node(given, n, node_ips_given=True).node_ips == ("192.168.0.9",)  # --node-ip wins
    assert with_node(given, n, node_ips_given=True).node_pod_cidrs == ("10.0.1.0/24",)
    assert with_node(CFG, None, node_ips_given=False) == CFG


def test_setup_warnings_name_what_is_missing() -> None:
    primary = NodeConfig(hostname="test-node", nodeport_addresses=("primary",))
    assert any("--nodeport-addresses primary" in w and "answer on every local address" in w for w in setup_warnings(primary))
    assert not setup_warnings(NodeConfig(hostname="test-node", node_ips=("192.168.0.2",),
                                         nodeport_addresses=("primary",), cluster_cidrs=("10.0.0.0/8",)))
    assert any("NodeCIDR" in w for w in setup_warnings(NODE_CIDR))


def test_wait_for_node_waits_for_pod_cidrs_and_fails_without_them() -> None:
    async def main() -> None:
        store = ObjectStore()
        store.put("m", parse_node(node(addresses=[("InternalIP", "192.168.0.2")])))

        async def later() -> None:
            await asyncio.sleep(0.2)
            store.put("m", parse_node(node(["10.0.1.0/24"], [("InternalIP", "192.168.0.2")])))

        task = asyncio.create_task(later())
        n = await wait_for_node(store, "test-node", NODE_CIDR, live=True, cidrs_timeout=5, poll=0.01)
        await task
        assert n is not None and n.pod_cidrs == ("10.0.1.0/24",)
        with pytest.raises(NodeSetupError, match="timeout waiting for node 'other' to exist"):
            await wait_for_node(store, "other", NODE_CIDR, live=True, cidrs_timeout=0.05, poll=0.01)
        store.put("m", parse_node({**node(), "metadata": {"name": "bare"}}))
        with pytest.raises(NodeSetupError, match="PodCIDR allocation on node 'bare'"):
            await wait_for_node(store, "bare", NODE_CIDR, live=True, cidrs_timeout=0.05, poll=0.01)
        # node IPs are waited for only from an API server (manifests hold what they hold)
        t0 = asyncio.get_running_loop().time()
        assert await wait_for_node(store, "other", CFG, live=False, ips_timeout=5, poll=0.01) is None
        assert asyncio.get_running_loop().time() - t0 < 1

    asyncio.run(main())


def manifests(tmp_path: Path, *objs: dict) -> Path:
    m = tmp_path / "m"
    m.mkdir(exist_ok=True)
    write(m / "objects.json", service("web", "172.30.0.10"),
          endpoint_slice("web", "web", [endpoint("10.0.1.10", "test-node")]), *objs)
    return m


def daemon(m: Path, cfg: NodeConfig, dp: RecordingDataplane) -> Daemon:
    opts = DaemonOptions(cfg=cfg, mode="fake", sources=[ManifestSource([m])], healthz_bind_address="",
                         metrics_bind_address="", clear_conntrack=False, min_sync_period=0, pod_cidrs_timeout=5)
    return Daemon(opts, dp=dp)


def test_node_cidr_mode_takes_pod_cidrs_and_node_ips_from_the_node(tmp_path: Path) -> None:
    async def main() -> None:
        m = manifests(tmp_path, node(["fd00:10:1::/64", "10.0.1.0/24"], [("InternalIP", "192.168.0.2")]))
        cfg = NodeConfig(hostname="test-node", detect_local_mode="NodeCIDR", nodeport_addresses=("primary",))
        dp = RecordingDataplane()
        d = daemon(m, cfg, dp)
        task = asyncio.create_task(d.run())
        await until(lambda: dp.calls, 10)
        resolved = d.syncer.cfg
        assert resolved.node_pod_cidrs == ("fd00:10:1::/64", "10.0.1.0/24")
        assert resolved.node_ips == ("192.168.0.2",) and resolved.nodeport_ips == ("192.168.0.2",)
        from svcproxy.localdetect import local_detector
        assert local_detector(resolved).iptables(negate=True) == "! -s 10.0.1.0/24"
        # a podCIDR change: the daemon exits (to be restarted), as kube-proxy does
        write(m / "objects.json", service("web", "172.30.0.10"),
              node(["10.0.2.0/24"], [("InternalIP", "192.168.0.2")]))
        with pytest.raises(RestartRequired, match=r"PodCIDRs changed for Node test-node"):
            await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_node_cidr_mode_waits_for_the_pod_cidrs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        m = manifests(tmp_path, node(addresses=[("InternalIP", "192.168.0.2")]))
        dp = RecordingDataplane()
        d = daemon(m, NODE_CIDR, dp)
        task = asyncio.create_task(d.run())
        await asyncio.sleep(0.5)
        assert not dp.calls  # nothing programmed without the podCIDRs
        write(m / "objects.json", service("web", "172.30.0.10"), node(["10.0.1.0/24"]))
        await until(lambda: dp.calls, 10)
        assert d.syncer.cfg.node_pod_cidrs == ("10.0.1.0/24",)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert "waiting up to 5 s for Node test-node's spec.podCIDRs" in caplog.text


def test_without_node_ips_primary_nodeports_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        dp = RecordingDataplane()
        d = daemon(manifests(tmp_path), NodeConfig(hostname="test-node", cluster_cidrs=("10.0.0.0/8",),
                                                   nodeport_addresses=("primary",)), dp)
        task = asyncio.create_task(d.run())
        await until(lambda: dp.calls, 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert "Node test-node not found" in caplog.text
    assert "--nodeport-addresses primary: this node has no IPv4 address" in caplog.text


def test_from_an_api_server_the_node_ips_and_pod_cidrs_are_waited_for() -> None:
    """A node that registers before its addresses and podCIDRs are filled in (as a kubelet's
    does): the daemon programs nothing until the Node has them, then uses them; a later
    podCIDR change ends the daemon."""
    from svcproxy.sources.apiclient import ApiConfig
    from svcproxy.sources.kubernetes import ApiSource

    from .apiserver import StandInApiServer

    bare = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "test-node"}}

    async def main(server: StandInApiServer) -> None:
        dp = RecordingDataplane()
        cfg = NodeConfig(hostname="test-node", detect_local_mode="NodeCIDR")
        opts = DaemonOptions(cfg=cfg, mode="fake", sources=[ApiSource(ApiConfig(host=server.url), "test-node")],
                             min_sync_period=0, healthz_bind_address="", metrics_bind_address="",
                             clear_conntrack=False)
        d = Daemon(opts, dp=dp)
        task = asyncio.create_task(d.run())
        await asyncio.sleep(0.5)
        assert not dp.calls
        server.apply(node(["10.0.1.0/24"], [("InternalIP", "192.168.0.2")]))
        await until(lambda: dp.calls, 10)
        assert d.syncer.cfg.node_ips == ("192.168.0.2",)
        assert d.syncer.cfg.node_pod_cidrs == ("10.0.1.0/24",)
        server.apply(node(["10.0.9.0/24"], [("InternalIP", "192.168.0.2")]))
        with pytest.raises(RestartRequired):
            await asyncio.wait_for(task, 10)

    with StandInApiServer() as server:
        server.apply(service("web", "172.30.0.10"), bare)
        asyncio.run(main(server))
