"""Can the lab run here? Clear answers, each with what to do, before anything is created."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .plan import LabError

TOOLS = {
    "ip": "apt-get install iproute2",
    "sysctl": "apt-get install procps",
}
MODE_TOOLS = {
    "iptables": {"iptables-restore": "apt-get install iptables", "iptables-save": "apt-get install iptables"},
    "nftables": {"nft": "apt-get install nftables"},
    "userspace": {},  # programs no netfilter rules: sockets and one interface
}


def preflight(mode: str, *, euid: int | None = None, which: Callable[[str], str | None] | None = None,
              netns_path: Path = Path("/proc/self/ns/net")) -> None:
    """Raise LabError naming the first thing missing and how to fix it."""
    which = which or shutil.which
    if (os.geteuid() if euid is None else euid) != 0:
        raise LabError("the lab creates network namespaces and needs root: run as root "
                       "(e.g. `sudo svcproxy lab up ...`)")
    if not netns_path.exists():
        raise LabError("this kernel has no network namespace support (/proc/self/ns/net is missing): "
                       "run on a Linux kernel built with CONFIG_NET_NS, outside a restricted container")
    if mode not in MODE_TOOLS:
        raise LabError(f"unknown proxy mode {mode!r} (choose iptables, nftables or userspace)")
    for tool, fix in {**TOOLS, **MODE_TOOLS[mode]}.items():
        if which(tool) is None:
            raise LabError(f"{tool} is not installed (needed for --proxy-mode {mode}): {fix}")


def br_netfilter_available() -> bool:
    """Bridged pod-to-pod traffic through a Service needs br_netfilter: without it, a reply from a
    pod on the same bridge goes straight back to the client at layer 2, skips conntrack's
    un-DNAT, and the client drops it (connection reset/timeout). The lab then warns."""
    return Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()


def dataplane_missing(mode: str) -> str | None:
    """Why this svcproxy cannot program a proxy mode (its dataplane is not importable), or None."""
    import importlib

    cls = {"iptables": "IptablesDataplane", "nftables": "NftablesDataplane",
           "userspace": "UserspaceDataplane"}.get(mode)
    if cls is None:
        return f"unknown proxy mode {mode!r}"
    try:
        getattr(importlib.import_module(f"svcproxy.dataplane.{mode}"), cls)
    except (ImportError, AttributeError) as e:
        return f"svcproxy.dataplane.{mode}.{cls} is not available in this svcproxy: {e}"
    return None
