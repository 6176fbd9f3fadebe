"""The jumps from the built-in chains into svcproxy's chains (kube-proxy's iptablesJumpChains).

They are not part of the restore input: kube-proxy checks each with `iptables -C` and prepends the
missing ones with `-I`, so that other software's rules in the built-in chains are never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import names as n


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in chain that leads into one of our chains (kube-proxy's iptablesJumpChains)."""

    table: str
    chain: str  # built-in chain: PREROUTING, INPUT, ...
    target: str
    comment: str
    extra: tuple[str, ...] = ()

    @property
    def args(self) -> list[str]:
        """The rule as iptables arguments (without -A/-I CHAIN)."""
        comment = ["-m", "comment", "--comment", self.comment] if self.comment else []
        return [*self.extra, *comment, "-j", self.target]

    @property
    def line(self) -> str:
        comment = f' -m comment --comment "{self.comment}"' if self.comment else ""
        extra = " " + " ".join(self.extra) if self.extra else ""
        return f"-A {self.chain}{extra}{comment} -j {self.target}\n"


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMPS: tuple[Jump, ...] = (
    Jump("filter", "INPUT", n.EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    Jump("filter", "FORWARD", n.EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    Jump("filter", "INPUT", n.NODEPORTS, "kubernetes health check service ports"),
    Jump("filter", "FORWARD", n.SERVICES, "kubernetes service portals", _NEW),
    Jump("filter", "OUTPUT", n.SERVICES, "kubernetes service portals", _NEW),
    Jump("filter", "FORWARD", n.FORWARD, "kubernetes forwarding rules"),
    Jump("filter", "INPUT", n.PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    Jump("filter", "OUTPUT", n.PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    Jump("filter", "FORWARD", n.PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    Jump("nat", "OUTPUT", n.SERVICES, "kubernetes service portals"),
    Jump("nat", "PREROUTING", n.SERVICES, "kubernetes service portals"),
    Jump("nat", "POSTROUTING", n.POSTROUTING, "kubernetes postrouting rules"),
)
# kubelet's own firewall chain, which kube-proxy ensures too (and never deletes: kubelet owns it).
KUBELET_JUMPS: tuple[Jump, ...] = (
    Jump("filter", "INPUT", n.KUBELET_FIREWALL, ""),
    Jump("filter", "OUTPUT", n.KUBELET_FIREWALL, ""),
)

# Every jump, in the order kube-proxy ensures (prepends) them.
ALL_JUMPS = JUMPS + KUBELET_JUMPS

BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}


def builtin_jump_lines(table: str) -> str:
    """The jumps as they end up in the built-in chains once prepended in kube-proxy's order
    (each prepend goes first, so the last one ensured leads), grouped by built-in chain."""
    mine = [j for j in reversed(ALL_JUMPS) if j.table == table]
    return "".join(j.line for chain in BUILTIN_CHAINS[table] for j in mine if j.chain == chain)
