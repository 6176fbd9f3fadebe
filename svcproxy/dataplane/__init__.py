"""Backends that turn ProxyState into kernel rules: render (pure), apply, clean up."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from ..config import NodeConfig
from ..state import ProxyState

MODES = ("iptables", "nftables")  # the modes that render a ruleset (render, trace)
RUN_MODES = (*MODES, "userspace")  # every mode `svcproxy run` can program; userspace has no rules

Renderer = Callable[[ProxyState, NodeConfig], str]


def renderer(mode: str) -> Renderer:
    """The pure render function of a proxy mode: (state, node config) -> ruleset text."""
    if mode == "iptables":
        from .iptables.render import render_ruleset
    elif mode == "nftables":
        from .nftables.render import render_ruleset
    elif mode == "userspace":
        raise ValueError("userspace mode programs no rules; nothing to render")
    else:
        raise ValueError(f"unknown proxy mode {mode!r} (choose one of {', '.join(MODES)})")
    return render_ruleset


class ApplyError(RuntimeError):
    """The kernel refused a ruleset; the rules programmed before stay in place."""


@dataclass
class SyncResult:
    """What one sync did, for logs, metrics and benchmarks."""

    full: bool  # a full resync (all chains/objects) rather than a partial one
    input_bytes: int = 0  # size of the text/messages handed to the kernel tool
    rules: dict[str, int] = field(default_factory=dict)  # e.g. {"nat": 1234, "filter": 12} for metrics


class Dataplane(Protocol):
    """A proxy mode bound to this node: keeps the kernel in step with the desired state."""

    mode: str

    def sync(self, state: ProxyState, changed: Collection[str] | None = None) -> SyncResult:
        """Program the kernel for state. changed: keys ("ns/name") of the services changed since
        the last successful sync; None asks for a full sync. Atomic: on ApplyError the previous
        rules are still in place and the next call must be a full sync."""
        ...

    def cleanup(self) -> None:
        """Remove everything this mode created, and nothing else."""
        ...


def dataplane(mode: str, cfg: NodeConfig) -> Dataplane:
    """The dataplane object of a proxy mode for this node."""
    if mode == "iptables":
        from .iptables import IptablesDataplane

        return IptablesDataplane(cfg)
    if mode == "nftables":
        from .nftables import NftablesDataplane

        return NftablesDataplane(cfg)
    if mode == "userspace":
        from .userspace import UserspaceDataplane

        return UserspaceDataplane(cfg)
    raise ValueError(f"unknown proxy mode {mode!r} (choose one of {', '.join(RUN_MODES)})")
