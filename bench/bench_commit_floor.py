"""What the kernel charges for one tiny commit into a 10,000-service table, in both modes.

The one-endpoint targets of issues 5 (iptables, 150 ms) and 6 (nftables, 20 ms) assume a tiny
transaction costs little once the tool's own overhead is gone. This bench measures what the
kernel itself charges, side by side in one run, each mode in a fresh network namespace holding
10,000 services x 10 endpoints programmed by svcproxy:

  no verdict       a new chain holding one rule without a verdict (`-s 1.2.3.4`)
  verdict          the same with a verdict (`-j RETURN` / `return`)
  jump             the same with a jump to an existing chain (mark-for-masquerade)
  one endpoint     svcproxy's real partial sync of a one-endpoint change
  element          (nftables) one element added to a plain set / to a verdict map (goto)
  one hook fewer   the verdict commit again after removing nat OUTPUT's jump to the services
                   (shows the cost is a walk of every chain reachable from each hook)

iptables goes through `iptables-restore --noflush` (as the dataplane does), nftables through
svcproxy's own netlink session (no nft process, no cache read). Median of --runs each.

    .venv/bin/python bench/bench_commit_floor.py [--services 10000] [--runs 7] [--modes iptables,nftables]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_render import CFG, one_endpoint_changed, synthetic_state  # noqa: E402

from svcproxy.lab.netns import scratch_namespace  # noqa: E402


def median_ms(fn: Callable[[int], None], undo: Callable[[int], None] | None, runs: int) -> float:
    """Median wall time of fn(i) over runs; undo(i) (untimed) restores the table between runs."""
    times = []
    for i in range(runs):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
        if undo:
            undo(i)
    return 1000 * statistics.median(times)


def programmed(dp: object, services: int) -> tuple[Callable[[int], None], dict[str, float]]:
    """Program the synthetic state through dp; return a one-endpoint-change step and the build time."""
    current = synthetic_state(services)
    started = time.perf_counter()
    dp.sync(current)  # type: ignore[attr-defined]
    out = {"build_s": time.perf_counter() - started}

    def one_endpoint(i: int) -> None:
        nonlocal current
        key = f"ns{(i + 1) % 100}/svc{i + 1}"
        current = one_endpoint_changed(current, key)
        dp.sync(current, {key})  # type: ignore[attr-defined]

    return one_endpoint, out


def iptables_child(services: int, runs: int) -> dict[str, float]:
    from svcproxy.dataplane.iptables import IptablesDataplane

    one_endpoint, out = programmed(IptablesDataplane(CFG), services)

    def restore(text: str) -> None:
        subprocess.run(["iptables-restore", "-w", "--noflush"], input=f"*nat\n{text}COMMIT\n", text=True, check=True)

    def chain_with(rule: str) -> Callable[[int], None]:
        return lambda i: restore(f":FLOOR-{i} - [0:0]\n-A FLOOR-{i} {rule}\n")

    def drop(i: int) -> None:
        restore(f"-F FLOOR-{i}\n-X FLOOR-{i}\n")

    out["no verdict"] = median_ms(chain_with("-s 1.2.3.4/32"), drop, runs)
    out["verdict"] = median_ms(chain_with("-j RETURN"), drop, runs)
    out["jump"] = median_ms(chain_with("-j KUBE-MARK-MASQ"), drop, runs)
    out["one endpoint"] = median_ms(one_endpoint, None, runs)
    subprocess.run(["iptables", "-w", "-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment",
                    "kubernetes service portals", "-j", "KUBE-SERVICES"], check=True)
    out["one hook fewer"] = median_ms(chain_with("-j RETURN"), drop, runs)
    return out


def nftables_child(services: int, runs: int) -> dict[str, float]:
    from svcproxy.dataplane.nftables import NftablesDataplane, names, netlink, session
    from svcproxy.dataplane.nftables.commands import (
        AddChain,
        AddElements,
        AddRule,
        Command,
        DeleteChain,
        DeleteElements,
        FlushChain,
    )
    from svcproxy.dataplane.nftables.layout import Chain
    from svcproxy.dataplane.nftables.service import Element

    one_endpoint, out = programmed(NftablesDataplane(CFG), services)
    sess = session.Session()

    def send(*commands: Command) -> None:
        sess.send("ip", netlink.encode("ip", names.TABLE, commands))

    def chain_with(rule: str) -> Callable[[int], None]:
        return lambda i: send(AddChain(Chain(f"floor-{i}")), AddRule(f"floor-{i}", rule))

    def drop(i: int) -> None:
        send(FlushChain(f"floor-{i}"))
        send(DeleteChain(f"floor-{i}"))

    def key(i: int, n: int) -> str:
        return f"172.31.{i}.{n} . tcp . 80"

    out["no verdict"] = median_ms(chain_with("ip saddr 1.2.3.4"), drop, runs)
    out["verdict"] = median_ms(chain_with("return"), drop, runs)
    out["jump"] = median_ms(chain_with("jump mark-for-masquerade"), drop, runs)
    out["one endpoint"] = median_ms(one_endpoint, None, runs)
    out["element"] = median_ms(lambda i: send(AddElements("cluster-ips", (Element("cluster-ips", f"172.31.{i}.1"),))),
                               lambda i: send(DeleteElements("cluster-ips", (f"172.31.{i}.1",))), runs)
    send(AddChain(Chain("floor-target")))
    out["element (goto)"] = median_ms(
        lambda i: send(AddElements("service-ips", (Element("service-ips", key(i, 2), "goto floor-target"),))),
        lambda i: send(DeleteElements("service-ips", (key(i, 2),))), runs)
    subprocess.run(["nft", "flush", "chain", "ip", names.TABLE, "nat-output"], check=True)
    out["one hook fewer"] = median_ms(chain_with("return"), drop, runs)
    return out


def in_netns(mode: str, services: int, runs: int) -> dict[str, float]:
    with scratch_namespace("flr") as ns:
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--child", mode,
                            "--services", str(services), "--runs", str(runs)],
                           capture_output=True, text=True, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])


ROWS = ("no verdict", "verdict", "jump", "one endpoint", "element", "element (goto)", "one hook fewer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--modes", default="iptables,nftables")
    ap.add_argument("--child", default="")
    a = ap.parse_args()
    if a.child:
        child = iptables_child if a.child == "iptables" else nftables_child
        print(json.dumps(child(a.services, a.runs)))
        return
    modes = a.modes.split(",")
    results = {}
    for mode in modes:
        print(f"programming {a.services} services x 10 endpoints in {mode} mode ...", file=sys.stderr, flush=True)
        results[mode] = in_netns(mode, a.services, a.runs)
    print(f"one tiny commit into {a.services} services x 10 endpoints, median of {a.runs} (ms)")
    print(f"{'commit':16}" + "".join(f"{m:>12}" for m in modes))
    for row in ROWS:
        cells = [f"{results[m][row]:>12.1f}" if row in results[m] else f"{'-':>12}" for m in modes]
        print(f"{row:16}" + "".join(cells))
    print(f"{'(table built in)':16}" + "".join(f"{results[m]['build_s']:>11.1f}s" for m in modes))


if __name__ == "__main__":
    main()
