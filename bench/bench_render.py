"""Render time and peak memory of the iptables renderer at 1k, 10k and 30k services x 10 endpoints.

Side by side in one run: a cold render (empty per-service cache) and a render after a one-service
change with the cache warm (what the daemon does on an EndpointSlice update).

    .venv/bin/python bench/bench_render.py [--sizes 1000,10000,30000] [--endpoints 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
import tracemalloc

from svcproxy.config import NodeConfig
from svcproxy.dataplane.iptables.render import BlockCache, build_ruleset, format_ruleset
from svcproxy.state import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName, ServiceState

CFG = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))


def synthetic_state(services: int, endpoints: int = 10) -> ProxyState:
    """ClusterIP+NodePort-free services, one TCP port each, `endpoints` ready pods each."""
    state = ProxyState()
    for i in range(services):
        spn = ServicePortName(f"ns{i % 100}", f"svc{i}", "http", "TCP")
        port = ServicePortInfo(spn, f"172.{30 + i // 65536}.{i // 256 % 256}.{i % 256}", 80, "TCP", 8080)
        eps = tuple(EndpointInfo(f"10.{(i * endpoints + k) // 65536 % 256}.{(i * endpoints + k) // 256 % 256}."
                                 f"{(i * endpoints + k) % 256}", 8080, node_name=f"node{k % 3}")
                    for k in range(endpoints))
        state.services[spn.service_key] = ServiceState(spn.service_key, (port,), {spn: eps})
    return state


def one_endpoint_changed(state: ProxyState, key: str) -> ProxyState:
    """A copy of state in which one service's first endpoint moved to a new address."""
    svc = state.services[key]
    spn, eps = next(iter(svc.endpoints.items()))
    moved = (dataclasses.replace(eps[0], ip="10.255.255.254"), *eps[1:])
    services = dict(state.services)
    services[key] = dataclasses.replace(svc, endpoints={spn: moved})
    return ProxyState(services=services)


def render(state: ProxyState, cache: BlockCache) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, output size) of one render."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    text = format_ruleset(build_ruleset(state, CFG, cache), CFG)
    return time.perf_counter() - started, time.process_time() - cpu, len(text)


def best_of(runs: int, fn) -> tuple[float, float, int]:  # noqa: ANN001
    """The fastest of a few runs: the machine is shared, the minimum is the least disturbed."""
    return min(fn() for _ in range(runs))


def peak_mib(state: ProxyState, cache: BlockCache) -> float:
    gc.collect()
    tracemalloc.start()
    format_ruleset(build_ruleset(state, CFG, cache), CFG)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    import os

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3, help="take the best of this many runs")
    args = ap.parse_args()
    print(f"{'':>29}| {'cold render':^26} | {'after a 1-endpoint change, cached':^38}")
    print(f"{'services':>8} {'endpoints':>9} {'output':>9} | {'wall':>8} {'CPU':>7} {'peak MiB':>8} | "
          f"{'wall':>8} {'CPU':>7} {'peak MiB':>8} {'re-rendered':>11}")
    for size in (int(s) for s in args.sizes.split(",")):
        print(row(size, args.endpoints, args.runs))


def row(size: int, endpoints: int, runs: int) -> str:
    state = synthetic_state(size, endpoints)
    cold_s, cold_cpu, length = best_of(runs, lambda: render(state, BlockCache()))
    cold_mib = peak_mib(state, BlockCache())
    changed = one_endpoint_changed(state, "ns1/svc1")
    caches = []

    def after_change() -> tuple[float, float, int]:
        cache = BlockCache()
        render(state, cache)
        caches.append(cache)
        return render(changed, cache)

    warm_s, warm_cpu, _ = best_of(runs, after_change)
    misses = caches[-1].misses
    warm_mib = peak_mib(state, caches[-1])
    return (f"{size:>8} {size * endpoints:>9} {length / 2**20:>7.1f}MB | {cold_s:>7.3f}s {cold_cpu:>7.3f}s "
            f"{cold_mib:>8.0f} | {warm_s:>7.3f}s {warm_cpu:>7.3f}s {warm_mib:>8.0f} {misses:>11}")


if __name__ == "__main__":
    main()
