"""What the kernel charges for N named maps in one table: the floor under the maps layout's cold sync.

nf_tables keeps a table's chains in a hash table but its sets in a linear list. Every new set is
checked against every set the table already has (its name must be unique), and every rule that
names a set finds it by walking that list, so N named sets cost ~N^2 list steps. This bench puts
the three shapes side by side in one run, each in a fresh table, one netlink transaction each:

  chains          N chains, each with one DNAT rule (what kube-proxy's layout adds per endpoint)
  maps            N empty endpoint maps, declared only (the uniqueness walk alone)
  maps + rules    N chains, each with its endpoint map and a rule `dnat ... map @it` (the maps
                  layout's per-port shape)

Run as root: `.venv/bin/python bench/bench_set_floor.py [--sizes 2500,5000,10000]`. It runs in a
network namespace it creates ("nfx-floor-PID") and removes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def shapes(n: int) -> dict[str, list]:
    from svcproxy.dataplane.nftables.commands import AddChain, AddContainer, AddRule
    from svcproxy.dataplane.nftables.layout import Chain, Container

    def endpoint_map(i: int) -> AddContainer:
        return AddContainer(Container(f"m{i:05d}", "numgen random mod 1000000", "ip daddr . tcp dport",
                                      flags="interval", typeof=True))

    chains = [AddChain(Chain(f"c{i:05d}")) for i in range(n)]
    return {
        "chains": chains + [AddRule(f"c{i:05d}", f"meta l4proto tcp dnat to 10.0.{i // 250}.{i % 250 + 1}:80")
                            for i in range(n)],
        "maps": [endpoint_map(i) for i in range(n)],
        "maps + rules": ([endpoint_map(i) for i in range(n)] + chains
                         + [AddRule(f"c{i:05d}", f"meta l4proto tcp dnat ip to numgen random mod 1000000 map @m{i:05d}")
                            for i in range(n)]),
    }


def child(sizes: list[int]) -> dict:
    from svcproxy.dataplane.nftables.netlink import encode
    from svcproxy.dataplane.nftables.session import Session

    session = Session()
    out: dict[str, dict[str, float]] = {}
    for n in sizes:
        for shape, commands in shapes(n).items():
            subprocess.run(["nft", "add table ip floor"], check=True)
            messages = encode("ip", "floor", commands)
            t0 = time.perf_counter()
            session.send("ip", messages)
            out.setdefault(shape, {})[str(n)] = time.perf_counter() - t0
            subprocess.run(["nft", "delete table ip floor"], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2500,5000,10000")
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.child:
        print(json.dumps(child(sizes)))
        return
    ns = f"nfx-floor-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--child", "--sizes", a.sizes],
                           check=True, capture_output=True, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    result = json.loads(r.stdout)
    print("kernel time of one transaction (netlink send to acknowledgement)")
    print(f"{'shape':14}" + "".join(f"{n:>10}" for n in sizes))
    for shape, by in result.items():
        print(f"{shape:14}" + "".join(f"{by[str(n)]:>8.2f} s" for n in sizes))


if __name__ == "__main__":
    main()
