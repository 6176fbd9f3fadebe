"""Rolling updates and kill -9 of the proxy, under steady TCP and UDP load, in a two-node lab.

The web Service has three replicas spread over the two nodes. Load runs the whole time from
two places: from outside through node 1's NodePorts (PREROUTING, masqueraded, to pods on either
node) and from node 2 itself to the ClusterIP (OUTPUT). A single failed connection or datagram
counts.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from svcproxy.lab import Lab

from .harness import (
    TCP_NODEPORT,
    TCP_PORT,
    UDP_NODEPORT,
    UDP_PORT,
    WEB_IP,
    Load,
    Pod,
    rewritten_chains,
    rules_snapshot,
    stop_all,
    summary,
    web_docs,
    without_handles,
    write_docs,
)

REPLICAS = 3
NODES = ("test-node", "test-node-2")
Progress = Callable[[str], None]


def pods(generation: int) -> list[Pod]:
    """Generation g's replicas: replica k on node k % 2; four address blocks in turn, so a new
    pod never takes the address of one just gone (a real cluster would not promise that either)."""
    block = (generation % 4) * REPLICAS
    return [Pod(f"10.0.{k % 2 + 1}.{10 + block + k}", NODES[k % 2]) for k in range(REPLICAS)]


def rollout_steps(generation: int) -> Iterator[list[Pod]]:
    """A Deployment's rolling update from generation g to g+1 with maxSurge 1, maxUnavailable 0
    (the defaults, for 3 replicas): per replica, the new pod is ready and the old one
    terminating; the next step the old one is gone."""
    old, new = pods(generation), pods(generation + 1)
    for k in range(REPLICAS):
        terminating = Pod(old[k].ip, old[k].node, "terminating")
        yield new[:k + 1] + [terminating] + old[k + 1:]
    yield new


@contextlib.contextmanager
def web_lab(mode: str, progress: Progress, prefix: str = "rel") -> Iterator[tuple[Lab, Path]]:
    """A two-node lab serving the web Service (generation 0) under svcproxy run in this mode
    ("nftables-maps" is nftables with the maps layout); removed afterwards."""
    base, _, layout = mode.partition("-")
    with tempfile.TemporaryDirectory(prefix="svcproxy-rel-") as tmp:
        manifest = write_docs(Path(tmp) / "web.yaml", web_docs(pods(0)))
        lab = Lab.up([manifest], mode=base, prefix=prefix, root=Path(tmp) / "labs", progress=progress,
                     **({"nftables_layout": layout} if layout else {}))
        try:
            yield lab, manifest
        finally:
            lab.down()


def start_load(lab: Lab) -> list[Load]:
    """TCP and UDP from outside to node 1's NodePorts, and from node 2 to the ClusterIP."""
    node1, node2 = lab.nodes[0], lab.nodes[1]
    outside, on_node2 = lab.names.outside_ns, lab.node_ns(node2)
    loads = [Load(outside, "tcp", node1.ip, TCP_NODEPORT), Load(outside, "udp", node1.ip, UDP_NODEPORT),
             Load(on_node2, "tcp", WEB_IP, TCP_PORT), Load(on_node2, "udp", WEB_IP, UDP_PORT)]
    time.sleep(0.5)  # every generator is sending before anything changes
    return loads


def rolling_updates(mode: str, rollouts: int, progress: Progress = print) -> dict:
    """`rollouts` rolling updates of the 3-replica web Service, each step through `lab apply`
    (new pods start, the manifest changes, every node's rules follow, then the old pods go)."""
    with web_lab(mode, progress) as (lab, manifest):
        loads = start_load(lab)
        took: list[float] = []
        steps: list[tuple[float, float, int]] = []  # (start, end, which step of its rollout)
        try:
            for g in range(rollouts):
                for i, step in enumerate(rollout_steps(g)):
                    t = time.time()
                    took.append(lab.apply([write_docs(manifest, web_docs(step))]).follow_seconds)
                    steps.append((t, time.time(), i))
                if (g + 1) % 10 == 0 or g + 1 == rollouts:
                    progress(f"{mode}: {g + 1}/{rollouts} rolling updates, worst apply {max(took) * 1000:.0f} ms")
            time.sleep(0.3)
        finally:
            traffic = stop_all(loads)
    return {"scenario": "rolling", "mode": mode, "rollouts": rollouts, "applies": len(took),
            "manifest_to_every_node": summary(took), "failures_by_step": by_step(traffic, steps), **traffic}


def by_step(traffic: dict, steps: list[tuple[float, float, int]]) -> dict[str, int]:
    """Which step of a rollout each failed attempt was made in ("k-terminating": replica k's new
    pod ready and old one terminating, the step before removed; "all-new": the last)."""
    names = [f"{k}-terminating" for k in range(REPLICAS)] + ["all-new"]
    out: dict[str, int] = {}
    for row in traffic["loads"]:
        for what, times in (("failed", [e["t"] for e in row["errors"]]), ("lost", row["lost_at"])):
            for t in times:
                where = next((names[i] for t0, t1, i in steps if t0 <= t <= t1), "between steps")
                key = f"{row['label'].split()[0]} {what} {where}"
                out[key] = out.get(key, 0) + 1
    return out


def kill9_restarts(mode: str, kills: int, progress: Progress = print) -> dict:
    """kill -9 of one node's proxy under load, `kills` times (the nodes in turn), each restarted:
    the rules must stay while no proxy runs, and the new proxy must adopt them as they are."""
    with web_lab(mode, progress) as (lab, _):
        loads = start_load(lab)
        adopt: list[float] = []
        changed: list[str] = []
        rewritten: set[str] = set()
        try:
            for i in range(kills):
                node = lab.nodes[i % len(lab.nodes)]
                ns = lab.node_ns(node)
                before = rules_snapshot(ns, mode)
                lab.kill_proxy(node)
                time.sleep(0.2)  # no proxy at all for a moment: the kernel's rules carry the traffic
                adopt.append(lab.start_proxy(node))
                after = rules_snapshot(ns, mode)
                if without_handles(after) != without_handles(before):
                    changed.append(f"kill {i + 1} on {node.name}")
                rewritten.update(rewritten_chains(before, after))
                if (i + 1) % 5 == 0 or i + 1 == kills:
                    progress(f"{mode}: {i + 1}/{kills} kill -9 and restart, {len(changed)} changed the rules")
            time.sleep(0.3)
        finally:
            traffic = stop_all(loads)
    return {"scenario": "kill9", "mode": mode, "kills": kills, "restart_to_synced": summary(adopt),
            "rules_changed": changed, "chains_rewritten_in_place": sorted(rewritten), **traffic}
