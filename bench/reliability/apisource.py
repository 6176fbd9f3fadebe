"""The API source under faults, with traffic flowing: `svcproxy run --master` against the
stand-in API server (tests/daemon/apiserver.py, the real list/watch protocol) in a node
namespace, pods in another (tests/daemon/netenv.py).

Three faults, each with a change made while it lasts; the figure is how long after the fault
the change reached the kernel's rules, and whether any connection failed meanwhile:
- an outage: the API server refuses connections for `outage` seconds, then comes back;
- a 410: the history is compacted and the watches cut, so the resume is refused and the
  daemon must list again;
- dropped watches: every open watch is cut every few seconds, for `drops` rounds.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from svcproxy.lab.proxies import mentions, rule_lines
from tests.daemon.netenv import ApiServer, Daemon, NetEnv

from .harness import (
    HANDLE,
    TCP_PORT,
    TCP_TARGET,
    UDP_PORT,
    UDP_TARGET,
    WEB_IP,
    Load,
    Pod,
    rules_snapshot,
    stop_all,
    summary,
    web_docs,
)

SETS = (("10.0.1.10", "10.0.1.11"), ("10.0.1.12", "10.0.1.13"))  # the endpoint sets changes toggle between
NODE = "node-a"  # netenv's node name


def _landed(env: NetEnv, mode: str, want: tuple[str, ...], since: float, timeout: float) -> float:
    """Seconds from `since` until the node's rules name exactly the endpoint set `want`."""
    other = next(s for s in SETS if s != want)
    while True:
        # without chain declarations: nftables keeps a stale chain (named after its endpoint)
        # empty for a while before deleting it, as kube-proxy does
        rules = rule_lines(HANDLE.sub("", rules_snapshot(env.node, mode)))
        if all(mentions(rules, ip) for ip in want) and not any(mentions(rules, ip) for ip in other):
            return time.time() - since
        if time.time() - since > timeout:
            raise AssertionError(f"the change to {want} did not reach the rules within {timeout:.0f}s")
        time.sleep(0.02)


def api_faults(mode: str, outage: float, drops: int, progress: Callable[[str], None] = print) -> dict:
    env = NetEnv()
    try:
        with tempfile.TemporaryDirectory(prefix="svcproxy-rel-") as tmp:
            return _run(env, mode, outage, drops, Path(tmp), progress)
    finally:
        env.close()


def _run(env: NetEnv, mode: str, outage: float, drops: int, tmp: Path, progress: Callable[[str], None]) -> dict:
    every = [ip for s in SETS for ip in s]
    env.serve("tcp", every, TCP_TARGET)
    env.serve("udp", every, UDP_TARGET)
    api = ApiServer(env)
    current = 0

    def toggle() -> tuple[str, ...]:
        nonlocal current
        current = 1 - current
        api.apply(*web_docs([Pod(ip, NODE) for ip in SETS[current]], node_port=False))
        return SETS[current]

    api.apply(*web_docs([Pod(ip, NODE) for ip in SETS[0]], node_port=False))
    log = tmp / "daemon.log"
    daemon = Daemon(env, None, mode, log, "--master", api.url).start()
    daemon.wait_sync(0)
    loads = [Load(env.node, "tcp", WEB_IP, TCP_PORT), Load(env.node, "udp", WEB_IP, UDP_PORT)]
    time.sleep(0.5)
    figures: dict = {}
    try:
        progress(f"{mode}: API server unreachable for {outage:.0f}s, a change made meanwhile")
        api.reachable(False)
        time.sleep(outage / 2)
        want = toggle()
        time.sleep(outage / 2)
        back = time.time()
        api.reachable(True)
        figures["outage_change_landed_after_back_s"] = round(_landed(env, mode, want, back, 120), 2)

        progress(f"{mode}: history compacted and watches cut (410 Gone), a change made meanwhile")
        api.compact()
        api.drop_watches()
        t = time.time()
        want = toggle()
        figures["relist_change_landed_s"] = round(_landed(env, mode, want, t, 60), 2)

        progress(f"{mode}: watches dropped every 1-4 s, {drops} times, a change after each")
        landed = []
        for _ in range(drops):
            time.sleep(random.uniform(1, 4))
            api.drop_watches()
            t = time.time()
            landed.append(_landed(env, mode, toggle(), t, 60))
        figures["change_after_drop"] = summary(landed)
        time.sleep(0.3)
    finally:
        traffic = stop_all(loads)
        status = daemon.stop()
    text = log.read_text()
    return {"scenario": "api", "mode": mode, "outage_s": outage, "drops": drops, **figures,
            "relists": text.count("listed"), "daemon_exit": status,
            "retries_logged": text.count("retrying in"), **traffic}
