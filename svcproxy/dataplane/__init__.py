"""Backends that turn ProxyState into kernel rules: render (pure), apply, clean up.

This package chooses among them by mode name (renderer, dataplane, cleanup_other_modes); each
backend imports only protocol.py, never a sibling backend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from ..config import NodeConfig
from ..state import ProxyState
from .protocol import ApplyError, Dataplane, SyncResult

log = logging.getLogger("svcproxy.dataplane")

MODES = ("iptables", "nftables")  # the modes that render a ruleset (render, trace)
RUN_MODES = (*MODES, "userspace", "ebpf")  # every mode `svcproxy run` can program; userspace has no rules

Renderer = Callable[[ProxyState, NodeConfig], str]


def renderer(mode: str) -> Renderer:
    """The pure render function of a proxy mode: (state, node config) -> ruleset text."""
    if mode == "iptables":
        from .iptables.render import render_ruleset
    elif mode == "nftables":
        from .nftables.render import render_ruleset
    elif mode == "ebpf":  # its rules are the nftables maps layout's; the BPF part is map data
        from .nftables.render import render_ruleset as nft_render

        def render_ruleset(state: ProxyState, cfg: NodeConfig) -> str:
            return nft_render(state, replace(cfg, nftables_layout="maps"))
    elif mode == "userspace":
        raise ValueError("userspace mode programs no rules; nothing to render")
    else:
        raise ValueError(f"unknown proxy mode {mode!r} (choose one of {', '.join(MODES)})")
    return render_ruleset


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
    if mode == "ebpf":  # socket-level BPF for local clients, the nftables maps layout for the rest
        from .ebpf import EbpfDataplane
        from .nftables import NftablesDataplane

        return EbpfDataplane(cfg, outside=NftablesDataplane(replace(cfg, nftables_layout="maps")))
    raise ValueError(f"unknown proxy mode {mode!r} (choose one of {', '.join(RUN_MODES)})")


def cleanup_other_modes(mode: str, cfg: NodeConfig) -> None:
    """Remove what the other modes left on this node, once, before this mode first programs
    it (kube-proxy does the same at startup): rules of both kinds would otherwise both apply,
    and userspace's svcproxy0 would keep answering for service addresses. kube-proxy's ipvs
    mode's leftovers (kube-ipvs0, its ipsets and chains) go with iptables mode's, as in
    kube-proxy: so in every mode but iptables (whose chains they share). A failure is only
    logged: leftovers must not stop this mode from working."""
    for other in RUN_MODES:
        if other == mode:
            continue
        try:
            if {mode, other} == {"ebpf", "nftables"}:
                _cleanup_shared(mode, cfg)
                continue
            dataplane(other, cfg).cleanup()
        except Exception as e:  # noqa: BLE001 - any failure here is a leftover, not a reason to stop
            log.warning("removing %s-mode leftovers failed: %s (`svcproxy cleanup --proxy-mode %s` "
                        "retries it)", other, e, other)


def _cleanup_shared(mode: str, cfg: NodeConfig) -> None:
    """ebpf mode runs nftables' tables too: switching between the two keeps the tables (no gap
    for outside traffic; the new mode's sync rewrites them) and removes only the BPF part."""
    if mode == "nftables":
        from .ebpf import EbpfDataplane

        EbpfDataplane(cfg).cleanup()  # no outside dataplane: the BPF pins only


__all__ = ["MODES", "RUN_MODES", "ApplyError", "Dataplane", "Renderer", "SyncResult", "cleanup_other_modes",
           "dataplane", "renderer"]
