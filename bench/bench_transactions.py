"""The CPU side of nftables mode's transactions, with the kernel left out: planning a cold full
sync and a one-endpoint change of 10,000 services x 10 endpoints, then writing the same
transactions out two ways side by side: as `nft -f` text (Tx.text) and as netlink messages
(netlink.Compiler), both from the typed commands.

Needs no root and no namespace: the dataplane's driver here records each transaction instead of
sending it. Run: `.venv/bin/python bench/bench_transactions.py [--services N] [--runs R]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_nftables import CFG, synthetic_service, synthetic_state  # noqa: E402

from svcproxy.dataplane.nftables import NftablesDataplane  # noqa: E402
from svcproxy.dataplane.nftables.kernel import KernelIO  # noqa: E402
from svcproxy.dataplane.nftables.transaction import Kernel  # noqa: E402


class Recorder(KernelIO):
    """A driver that keeps the transactions instead of sending them (the kernel takes all)."""

    def __init__(self) -> None:
        super().__init__(CFG, ("nft",), use_netlink=False)  # planner: no framing ahead
        self.taken: list = []

    def read_kernel(self) -> Kernel:
        return Kernel()

    def affinity_entries(self, name: str) -> list[tuple[str, str]]:
        return []

    def run_tx(self, tx, messages=None) -> None:  # noqa: ANN001
        if tx:
            self.taken.append(tx)


def measure(services: int) -> dict[str, float]:
    state = synthetic_state(services, 10)
    io = Recorder()
    dp = NftablesDataplane(CFG, io=io)
    t0 = time.perf_counter()
    dp.sync(state)
    plan_full = time.perf_counter() - t0
    full = list(io.taken)
    io.taken.clear()
    key = sorted(state.services)[services // 2]
    i = int(key.rsplit("svc", 1)[1])
    state.services[key] = synthetic_service(i, 10, generation=1)
    t0 = time.perf_counter()
    dp.sync(state, {key})
    plan_change = time.perf_counter() - t0
    change = list(io.taken)
    out = {"plan full": plan_full, "plan change": plan_change,
           "commands (full)": sum(len(tx) for tx in full)}
    for name, txs in (("full", full), ("change", change)):
        t0 = time.perf_counter()
        size = sum(len(tx.text()) for tx in txs)
        out[f"nft text ({name})"] = time.perf_counter() - t0
        out[f"text bytes ({name})"] = size
        t0 = time.perf_counter()
        encoded = [io.compiler().encodes(tx) for tx in txs]
        out[f"netlink ({name})"] = time.perf_counter() - t0
        out[f"nft-only ({name})"] = encoded.count(False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs = [measure(args.services) for _ in range(args.runs)]
    print(f"{args.services} services x 10 endpoints, {args.runs} runs (median), no kernel")
    for k in runs[0]:
        v = statistics.median(r[k] for r in runs)
        print(f"  {k:22} {v * 1000:10.1f} ms" if isinstance(runs[0][k], float) else f"  {k:22} {v:10.0f}")


if __name__ == "__main__":
    main()
