"""Memory under churn: `svcproxy run` in each mode (side by side, one namespace pair each) while
the manifests change several times a second for `duration` seconds, its RSS sampled throughout.

200 Services of 5 endpoints; every `every` seconds one Service's endpoints move, and every tenth
change a Service is deleted and another added, so every cache and record in the daemon sees
entries come and go. Periodic full syncs run every 10 s (--sync-period). A TCP load on one
Service checks that nothing breaks meanwhile. The figure is RSS growth after the warm-up (the
first fifth, at least 30 s): the median of the last third of the samples against the median of
the first third.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.daemon.netenv import Daemon, NetEnv

from .harness import TCP_TARGET, Load, rss_kib, write_docs

SERVICES, ENDPOINTS = 200, 5


def docs(i: int, generation: int) -> list[dict]:
    ip = f"172.30.{1 + i // 250}.{i % 250 + 1}"
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "soak"},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "NodePort" if i % 10 == 0 else "ClusterIP",
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": TCP_TARGET},
                              {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}]}}
    eps = [{"addresses": [f"10.0.1.{10 + (i + generation + k) % 40}"], "nodeName": "node-a",
            "conditions": {"ready": True}} for k in range(ENDPOINTS)]
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": f"s{i}-x", "namespace": "soak", "labels": {"kubernetes.io/service-name": f"s{i}"}},
          "ports": [{"name": "http", "protocol": "TCP", "port": TCP_TARGET}, {"name": "dns", "protocol": "UDP", "port": 5353}],
          "endpoints": eps}
    return [svc, sl]


def memory_soak(modes: tuple[str, ...], duration: float, every: float = 0.25,
                progress: Callable[[str], None] = print) -> list[dict]:
    envs = {m: NetEnv() for m in modes}
    try:
        with tempfile.TemporaryDirectory(prefix="svcproxy-rel-") as tmp:
            return _run(envs, duration, every, Path(tmp), progress)
    finally:
        for e in envs.values():
            e.close()


def _run(envs: dict[str, NetEnv], duration: float, every: float, tmp: Path, progress: Callable[[str], None]) -> list[dict]:
    generation = {i: 0 for i in range(SERVICES)}
    present = set(range(SERVICES))
    daemons, loads, dirs = {}, {}, {}
    for mode, env in envs.items():
        env.serve("tcp", [f"10.0.1.{i}" for i in range(10, 50)], TCP_TARGET)
        d = dirs[mode] = tmp / mode
        d.mkdir()
        for i in present:
            write_docs(d / f"s{i}.yaml", docs(i, 0))
        daemons[mode] = Daemon(env, d, mode, tmp / f"{mode}.log", "--sync-period", "10s",
                               "--min-sync-period", "100ms").start()
    for mode, dmn in daemons.items():
        dmn.wait_sync(0, timeout=60)
        loads[mode] = Load(envs[mode].node, "tcp", "172.30.1.1", 80)
    samples: dict[str, list[tuple[float, int]]] = {m: [] for m in envs}
    t0 = time.monotonic()
    changes, next_sample, next_report = 0, 0.0, 60.0
    rng = random.Random(14)
    try:
        while (elapsed := time.monotonic() - t0) < duration:
            changes += 1
            if changes % 10 == 0 and len(present) > SERVICES // 2:
                gone = rng.choice(sorted(present - {0}))
                present.discard(gone)
                for d in dirs.values():
                    (d / f"s{gone}.yaml").unlink()
                back = rng.choice(sorted(set(range(SERVICES)) - present - {gone})) if len(present) < SERVICES - 1 else None
                if back is not None:
                    present.add(back)
                    for d in dirs.values():
                        write_docs(d / f"s{back}.yaml", docs(back, generation[back]))
            else:
                i = rng.choice(sorted(present - {0}))
                generation[i] += 1
                for d in dirs.values():
                    write_docs(d / f"s{i}.yaml", docs(i, generation[i]))
            if elapsed >= next_sample:
                for mode, dmn in daemons.items():
                    assert dmn.proc is not None
                    if dmn.proc.poll() is not None:
                        raise AssertionError(f"svcproxy run ({mode}) exited during the soak:\n{dmn.log()[-2000:]}")
                    samples[mode].append((elapsed, rss_kib(dmn.proc.pid)))
                next_sample += 5.0
            if elapsed >= next_report:
                progress("soak: " + ", ".join(f"{m} {s[-1][1] / 1024:.1f} MiB" for m, s in samples.items())
                         + f" after {elapsed / 60:.0f} min, {changes} changes")
                next_report += 60.0
            time.sleep(every)
    finally:
        traffic = {m: load.stop() for m, load in loads.items()}
        syncs = {m: d.syncs() for m, d in daemons.items()}
        for d in daemons.values():
            d.stop()
    return [_figures(m, samples[m], duration, changes, syncs[m], traffic[m]) for m in envs]


def _figures(mode: str, samples: list[tuple[float, int]], duration: float, changes: int, syncs: int,
             traffic: dict) -> dict:
    warm = max(30.0, duration / 5)
    after = [kib for t, kib in samples if t >= warm] or [samples[-1][1]]
    third = max(1, len(after) // 3)
    start, end = statistics.median(after[:third]), statistics.median(after[-third:])
    return {"scenario": "soak", "mode": mode, "seconds": round(duration), "changes": changes, "syncs": syncs,
            "rss_start_mib": round(start / 1024, 1), "rss_end_mib": round(end / 1024, 1),
            "rss_max_mib": round(max(k for _, k in samples) / 1024, 1),
            "rss_growth_pct": round((end - start) / start * 100, 2),
            "samples": [(round(t), k) for t, k in samples],
            "attempts": traffic["attempts"], "failures": traffic["failures"], "errors": traffic["errors"][:3]}
