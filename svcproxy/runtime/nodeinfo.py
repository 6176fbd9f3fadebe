"""What the daemon learns from its own Node object, as kube-proxy's NodeManager (pkg/proxy/node.go).

- Without --node-ip, the node's IPs are the Node's (GetNodeHostIPs: InternalIPs before
  ExternalIPs, the first address, then the first one of the other family); kube-proxy waits up
  to 30 s for them and goes on without them.
- In detect-local mode NodeCIDR the local-traffic detector needs the Node's spec.podCIDRs:
  kube-proxy waits up to 5 minutes for them and fails if they never come, and exits when they
  change afterwards (the restarted proxy picks the new ones up); node IP changes are only logged.

The decisions are pure functions of (NodeConfig, Node); wait_for_node and NodeWatch do the
waiting and watching against the object store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from ..config import NodeConfig, ip_family
from ..localdetect import missing_input
from ..model.objects import Node
from ..sources.store import ObjectStore

log = logging.getLogger("svcproxy.runtime.node")

NODE_IPS_TIMEOUT = 30.0  # kube-proxy's nodeIPsTimeout
POD_CIDRS_TIMEOUT = 300.0  # kube-proxy's podCIDRsTimeout
POLL_INTERVAL = 0.1  # kube-proxy polls every second; the store is local, so look more often


class NodeSetupError(Exception):
    """The Node never gave what this configuration cannot run without (NodeCIDR's podCIDRs)."""


class RestartRequired(Exception):
    """The Node changed in a way the running proxy cannot follow: exit, to be restarted."""


def node_host_ips(node: Node | None) -> tuple[str, ...]:
    """kube-proxy's GetNodeHostIPs: the first address (InternalIPs come before ExternalIPs),
    then the first address of the other family, if any."""
    if node is None or not node.addresses:
        return ()
    first = node.addresses[0]
    other = next((a for a in node.addresses if ip_family(a) != ip_family(first)), None)
    return (first,) if other is None else (first, other)


def wants_node_ips(cfg: NodeConfig) -> bool:
    """No --node-ip: the node's IPs come from its Node object."""
    return not cfg.node_ips


def wants_pod_cidrs(cfg: NodeConfig) -> bool:
    return cfg.detect_local_mode == "NodeCIDR"


def with_node(cfg: NodeConfig, node: Node | None, node_ips_given: bool) -> NodeConfig:
    """cfg completed from the Node: its IPs when none were given, its podCIDRs in NodeCIDR mode."""
    if node is None:
        return cfg
    changes: dict[str, object] = {}
    if not node_ips_given and node_host_ips(node):
        changes["node_ips"] = node_host_ips(node)
    if wants_pod_cidrs(cfg):
        changes["node_pod_cidrs"] = node.pod_cidrs
    return replace(cfg, **changes) if changes else cfg  # type: ignore[arg-type]


def setup_warnings(cfg: NodeConfig, primary: bool = True) -> list[str]:
    """What the resolved configuration of one family leaves out, worded for the log (a no-op
    detector only for the primary family, as kube-proxy's getLocalDetectors logs it)."""
    out = []
    if primary and (why := missing_input(cfg)):
        out.append(why)
    if "primary" in cfg.nodeport_addresses and not cfg.primary_ip:
        out.append(f"--nodeport-addresses primary: this node has no IPv{cfg.ip_family} address (no --node-ip, "
                   f"and its Node object gives none), so IPv{cfg.ip_family} NodePorts answer on every local "
                   f"address, as kube-proxy's do; give --node-ip to narrow them")
    return out


async def wait_for_node(store: ObjectStore, name: str, cfg: NodeConfig, live: bool,
                        ips_timeout: float = NODE_IPS_TIMEOUT, cidrs_timeout: float = POD_CIDRS_TIMEOUT,
                        poll: float = POLL_INTERVAL) -> Node | None:
    """The Node once it has what cfg needs from it, as kube-proxy's newNodeManager waits.

    live: the store follows an API server, where a new node's IPs and podCIDRs are filled in a
    little after it registers; manifests (-f) hold what they hold, so node IPs are not waited
    for there (podCIDRs are, as NodeCIDR mode cannot work without them)."""
    node = store.node(name)
    if wants_node_ips(cfg) and live and not node_host_ips(node):
        log.info("waiting up to %s s for Node %s and its addresses (no --node-ip given)", ips_timeout, name)
        node = await _poll(store, name, lambda n: bool(node_host_ips(n)), ips_timeout, poll)
    if wants_pod_cidrs(cfg) and not (node and node.pod_cidrs):
        log.info("detect-local mode NodeCIDR: waiting up to %s s for Node %s's spec.podCIDRs", cidrs_timeout, name)
        node = await _poll(store, name, lambda n: bool(n and n.pod_cidrs), cidrs_timeout, poll)
        if not (node and node.pod_cidrs):
            what = f"node {name!r} to exist" if node is None else f"PodCIDR allocation on node {name!r}"
            raise NodeSetupError(f"timeout waiting for {what} (detect-local mode NodeCIDR needs spec.podCIDRs)")
    if wants_node_ips(cfg) and not node_host_ips(node):
        if node is None:
            log.error("Node %s not found: this node's IPs are unknown (give --node-ip)", name)
        else:
            log.error("Node %s has no InternalIP or ExternalIP address: this node's IPs are unknown "
                      "(give --node-ip)", name)
    elif wants_node_ips(cfg):
        log.info("node IPs from Node %s: %s", name, ", ".join(node_host_ips(node)))
    return node


async def _poll(store: ObjectStore, name: str, ready, timeout: float, poll: float) -> Node | None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    node = store.node(name)
    while not ready(node) and time.monotonic() < deadline:
        await asyncio.sleep(poll)
        node = store.node(name)
    return node


class NodeWatch:
    """kube-proxy's NodeManager.OnNodeChange: a podCIDR change in NodeCIDR mode means exit
    (RestartRequired); a node IP change is logged."""

    def __init__(self, name: str, cfg: NodeConfig, node: Node | None) -> None:
        self.name, self.cfg = name, cfg
        self.pod_cidrs = node.pod_cidrs if node else ()
        self.ips = node_host_ips(node)

    def check(self, node: Node | None) -> None:
        if node is None:
            return  # kube-proxy 1.36 only logs a deleted Node; /healthz reports it (store.node_eligible)
        if wants_pod_cidrs(self.cfg) and node.pod_cidrs != self.pod_cidrs:
            raise RestartRequired(f"PodCIDRs changed for Node {self.name}: {list(self.pod_cidrs)} -> "
                                  f"{list(node.pod_cidrs)}; exiting so that the restarted proxy uses them "
                                  "(detect-local mode NodeCIDR; kube-proxy does the same)")
        ips = node_host_ips(node)
        if ips != self.ips:
            log.info("NodeIPs changed for Node %s: %s -> %s (used after a restart)", self.name, list(self.ips),
                     list(ips))
            self.ips = ips
