"""The interface that makes service addresses local: svcproxy0, like IPVS mode's kube-ipvs0.

A dummy link holding every ClusterIP, external IP and LB IP as a /32 (/128) address, so the
kernel delivers their packets to this node's sockets. Kernels built without the dummy driver
get an empty bridge instead (no ports: it forwards nothing, it only holds addresses).

Driven through the `ip` tool: one `ip -batch` process adds or removes any number of addresses,
and reading them back is one `ip -brief` line; pyroute2 took seconds to parse 10,000 address
messages. (Adding 10,000 addresses still takes the kernel 2-3 s: it walks the interface's
address list for each one.)
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable

from ...config import ip_family
from ..protocol import ApplyError

log = logging.getLogger("svcproxy.dataplane.userspace")

IFNAME = "svcproxy0"


def _ip(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["ip", *args], input=input, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ApplyError("the `ip` tool is missing (apt-get install iproute2); userspace mode needs it "
                         "to put service addresses on " + IFNAME) from None
    except subprocess.TimeoutExpired:
        raise ApplyError(f"ip {' '.join(args)}: no answer within 60s") from None
    if check and proc.returncode != 0:
        raise ApplyError(f"ip {' '.join(args)} failed: {proc.stderr.strip()} "
                         "(userspace mode needs root, CAP_NET_ADMIN)")
    return proc


class ServiceInterface:
    def __init__(self, ifname: str = IFNAME) -> None:
        self.ifname = ifname

    def exists(self) -> bool:
        return _ip("link", "show", "dev", self.ifname, check=False).returncode == 0

    def ensure(self) -> None:
        """Create the link (up) if it is missing."""
        if not self.exists():
            made = _ip("link", "add", self.ifname, "type", "dummy", check=False)
            if made.returncode != 0:
                if "Unknown device type" not in made.stderr and "not supported" not in made.stderr:
                    raise ApplyError(f"cannot create {self.ifname}: {made.stderr.strip()}")
                log.info("this kernel has no dummy interfaces; %s is an empty bridge instead", self.ifname)
                _ip("link", "add", self.ifname, "type", "bridge")
        _ip("link", "set", self.ifname, "up")

    def addresses(self) -> set[str]:
        """The service addresses on the link now (its IPv6 link-local address aside)."""
        out = _ip("-brief", "addr", "show", "dev", self.ifname, check=False).stdout.split()
        return {a.split("/")[0] for a in out[2:] if "/" in a and not a.startswith("fe80:")}

    def change(self, add: Iterable[str], remove: Iterable[str]) -> None:
        """Add and remove addresses in one `ip -batch` run."""
        cmds = []
        for ip in sorted(add):
            v6 = ip_family(ip) == 6
            # nodad: an IPv6 service address is usable at once, without duplicate detection
            cmds.append(f"addr add {ip}/{128 if v6 else 32} dev {self.ifname}" + (" nodad" if v6 else ""))
        for ip in sorted(remove):
            cmds.append(f"addr del {ip}/{128 if ip_family(ip) == 6 else 32} dev {self.ifname}")
        if cmds:
            _ip("-batch", "-", input="\n".join(cmds) + "\n")

    def delete(self) -> bool:
        """Remove the link (and with it every address on it); False if there was none."""
        if not self.exists():
            return False
        _ip("link", "del", self.ifname)
        return True
