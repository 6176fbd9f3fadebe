"""This node's addresses, read from the kernel (the daemon's --local-address), and the IP
families the daemon programs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable

from ..config import ip_family

# links holding service addresses, not node addresses (userspace mode's, IPVS mode's)
SERVICE_LINKS = ("svcproxy0", "kube-ipvs0")


def kernel_links() -> list[dict]:
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return json.loads(out or "[]")


def kernel_addresses(links: list[dict] | None = None) -> list[str]:
    """Every global and host-scope address on this network namespace's interfaces."""
    addrs = []
    for link in kernel_links() if links is None else links:
        for a in link.get("addr_info", []):
            if a.get("scope") in ("global", "host") and a.get("local"):
                addrs.append(a["local"])
    return addrs


def node_address_families(links: list[dict]) -> tuple[int, ...]:
    """The families of the node's own global addresses (loopback and service links aside)."""
    fams = {ip_family(a["local"]) for link in links if link.get("ifname") not in SERVICE_LINKS
            for a in link.get("addr_info", []) if a.get("scope") == "global" and a.get("local")}
    return tuple(sorted(fams))


def run_families(explicit: int | None, primary: int, given: Iterable[str], kernel: Iterable[int] = ()) -> tuple[int, ...]:
    """Which families `svcproxy run` programs, the primary first.

    --ip-family names one (single-stack). Otherwise the families of the addresses given
    (--node-ip, --cluster-cidr: one per family, as kube-proxy takes a dual pair); with none
    given, those the node has global addresses in (kube-proxy runs dual-stack when the host
    can); IPv4 when nothing says.
    """
    if explicit:
        return (explicit,)
    fams = {ip_family(a) for a in given} or set(kernel) or {4}
    return tuple(sorted(fams, key=lambda f: (f != primary, f)))
