"""Applying the iptables ruleset in a network namespace: full sync shapes and partial syncs.

Side by side in one run, per size (services x 10 endpoints), each in a fresh namespace:
  naive    one `iptables-restore --noflush` with the whole ruleset (skipped above --naive-max:
           it grows quadratically);
  batched  IptablesDataplane's cold full sync (ordered batches, see dataplane/iptables/restore.py);
  warm     a second full sync over the existing rules (periodic resync / restarted daemon);
  partial  one endpoint of one service changed: restore input size and time (render + apply).

    .venv/bin/python bench/bench_iptables_apply.py [--sizes 1000,3000,10000] [--naive-max 3000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_render import CFG, one_endpoint_changed, synthetic_state  # noqa: E402

from svcproxy.dataplane.iptables import IptablesDataplane  # noqa: E402
from svcproxy.dataplane.iptables.render import build_ruleset, format_ruleset  # noqa: E402


class Namespace:
    def __enter__(self) -> str:
        self.name = f"ipt-bench-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        return self.name

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def timed(fn) -> float:  # noqa: ANN001
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def naive(size: int) -> float:
    text = format_ruleset(build_ruleset(synthetic_state(size), CFG), CFG, with_jumps=False)
    with Namespace() as ns:
        def apply() -> None:
            subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "-w", "--noflush"], input=text.encode(),
                           check=True)
        return timed(apply)


def dataplane_runs(size: int, batch: int, warm_batch: int, partial_runs: int) -> dict[str, float]:
    state = synthetic_state(size)
    with Namespace() as ns:
        dp = IptablesDataplane(CFG, netns=ns, batch_chains=batch, warm_batch_chains=warm_batch)
        out = {"batched": timed(lambda: dp.sync(state)), "batches": len(dp.last_input)}
        out["warm"] = timed(lambda: dp.sync(state))
        sizes, times = [], []
        current = state
        for i in range(partial_runs):
            key = f"ns{(i + 1) % 100}/svc{i + 1}"
            nxt = one_endpoint_changed(current, key)
            started = time.perf_counter()
            sizes.append(dp.sync(nxt, {key}).input_bytes)
            times.append(time.perf_counter() - started)
            current = nxt
        out["partial_s"] = sorted(times)[len(times) // 2]
        out["partial_bytes"] = max(sizes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,3000,10000")
    ap.add_argument("--naive-max", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=1000, help="chains per restore call, cold full sync")
    ap.add_argument("--warm-batch", type=int, default=2500, help="chains per restore call over existing rules")
    ap.add_argument("--partial-runs", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates network namespaces")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; batch {args.batch}, "
          f"warm batch {args.warm_batch}")
    print(f"{'services':>8} | {'naive 1 restore':>15} | {'batched cold':>12} {'calls':>5} | {'warm full':>9} | "
          f"{'partial (median)':>16} {'input':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        n = f"{naive(size):>14.2f}s" if size <= args.naive_max else f"{'(skipped)':>15}"
        r = dataplane_runs(size, args.batch, args.warm_batch, args.partial_runs)
        print(f"{size:>8} | {n} | {r['batched']:>11.2f}s {r['batches']:>5} | {r['warm']:>8.2f}s | "
              f"{r['partial_s'] * 1000:>14.0f}ms {r['partial_bytes']:>7}B", flush=True)


if __name__ == "__main__":
    main()
