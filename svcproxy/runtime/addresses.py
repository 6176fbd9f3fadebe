"""This node's addresses, read from the kernel (the daemon's --local-address), and the IP
families the daemon programs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

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


def iptables_present(tool: str) -> str | None:
    """kube-proxy's iptables Present(): the tool runs and lists nat's POSTROUTING (the binary
    is there and the kernel has the family's nat table). None when it does, else why not."""
    try:
        done = subprocess.run([tool, "-w", "5", "-t", "nat", "-S", "POSTROUTING"], capture_output=True, text=True)
    except OSError:
        return f"{tool} is not installed"
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return f"{tool} -t nat fails: {last[0]}"
    return None


def platform_families(mode: str, proc: str = "/proc", present: Callable[[str], str | None] = iptables_present
                      ) -> tuple[set[int], list[str]]:
    """kube-proxy's platformCheckSupported: the families this host can proxy in `mode`, and why
    any is missing. iptables mode needs each family's iptables to work (Present()); nft serves
    both; IPv6 also needs the kernel's (/proc/net/if_inet6, net.ipv6.conf.all.disable_ipv6 not 1)."""
    fams, why = {4, 6}, []
    if mode == "iptables":
        for fam, tool in ((4, "iptables"), (6, "ip6tables")):
            if (err := present(tool)) is not None:
                fams.discard(fam)
                why.append(f"no IPv{fam} support: {err}")
    if not Path(f"{proc}/net/if_inet6").exists():
        fams.discard(6)
        why.append("no IPv6 support in the kernel (no /proc/net/if_inet6)")
    else:
        try:
            disabled = Path(f"{proc}/sys/net/ipv6/conf/all/disable_ipv6").read_text().strip() == "1"
        except OSError:
            disabled = False
        if disabled:
            fams.discard(6)
            why.append("IPv6 is disabled in the kernel (net.ipv6.conf.all.disable_ipv6=1)")
    return fams, why


def run_families(explicit: int | None, primary: int, given: Iterable[str], kernel: Iterable[int] = (),
                 supported: Iterable[int] | None = None) -> tuple[int, ...]:
    """Which families `svcproxy run` programs, the primary first.

    --ip-family names one (single-stack). Otherwise kube-proxy's rule: every family the
    platform supports (`supported`, from platform_families), dual-stack whenever the host can,
    whatever the node's own addresses. Without that (userspace mode, which kube-proxy does not
    have): the families of the addresses given (--node-ip, --cluster-cidr), else those the node
    has global addresses in, else IPv4.
    """
    if explicit:
        return (explicit,)
    if supported is not None:
        fams = set(supported)
        if primary not in fams:
            raise ValueError(f"no support for the primary IP family IPv{primary} on this host")
    else:
        fams = {ip_family(a) for a in given} or set(kernel) or {4}
    return tuple(sorted(fams, key=lambda f: (f != primary, f)))
