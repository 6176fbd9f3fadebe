"""Removing everything the iptables mode created, and nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from . import names as n
from .jumps import ALL_JUMPS
from .kernel import Iptables


def cleanup_family(ipt: Iptables) -> None:
    """Delete our jumps from the built-in chains, then flush and delete our chains; foreign rules
    and chains are not touched, and no table is flushed. kubelet's KUBE-FIREWALL stays when
    kubelet manages this host (its KUBE-KUBELET-CANARY chain exists)."""
    ipt.run("--version")  # a clear error when the tool is missing
    filter_chains = ipt.chains("filter")
    nat_chains = ipt.chains("nat")
    kubelet_owned = n.KUBELET_CANARY in filter_chains
    for j in ALL_JUMPS:
        if j.target == n.KUBELET_FIREWALL and kubelet_owned:
            continue
        if j.target not in (filter_chains if j.table == "filter" else nat_chains):
            continue
        while ipt.run("-t", j.table, "-D", j.chain, *j.args, check=False).returncode == 0:
            pass  # delete every copy
    ours_filter = [c for c in (n.NODEPORTS, n.SERVICES, n.EXTERNAL_SERVICES, n.FORWARD, n.PROXY_FIREWALL,
                               n.PROXY_CANARY) if c in filter_chains]
    if not kubelet_owned and n.KUBELET_FIREWALL in filter_chains:
        ours_filter.append(n.KUBELET_FIREWALL)
    ours_nat = [c for c in (n.NODEPORTS, n.SERVICES, n.MARK_MASQ, n.POSTROUTING, n.PROXY_CANARY) if c in nat_chains]
    ours_nat += sorted(c for c in nat_chains if n.is_service_chain(c))
    for table, chains in (("filter", ours_filter), ("nat", ours_nat)):
        if chains:
            ipt.restore(_drop_chains(table, chains))
    if n.PROXY_CANARY in ipt.chains("mangle"):
        ipt.restore(_drop_chains("mangle", [n.PROXY_CANARY]))


def _drop_chains(table: str, chains: Sequence[str]) -> str:
    return "".join([f"*{table}\n", *[f":{c} - [0:0]\n" for c in chains], *[f"-X {c}\n" for c in chains],
                    "COMMIT\n"])
