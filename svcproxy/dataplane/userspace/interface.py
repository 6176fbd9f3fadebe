"""The interface that makes service addresses local: svcproxy0, like IPVS mode's kube-ipvs0.

A dummy link holding every ClusterIP, external IP and LB IP as a /32 (/128) address, so the
kernel delivers their packets to this node's sockets. Kernels built without the dummy driver
get an empty bridge instead (no ports: it forwards nothing, it only holds addresses).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable

from ...config import ip_family
from .. import ApplyError

log = logging.getLogger("svcproxy.dataplane.userspace")

IFNAME = "svcproxy0"
IFA_F_NODAD = 0x02  # an IPv6 service address is usable at once, without duplicate detection


class ServiceInterface:
    def __init__(self, ifname: str = IFNAME) -> None:
        self.ifname = ifname

    def _ipr(self):  # noqa: ANN202 - pyroute2's IPRoute, imported late (root-only feature)
        from pyroute2 import IPRoute

        return IPRoute()

    def index(self, ipr) -> int | None:  # noqa: ANN001
        found = ipr.link_lookup(ifname=self.ifname)
        return found[0] if found else None

    def ensure(self, ipr) -> int:  # noqa: ANN001
        """The link's index, creating it (up) if missing."""
        from pyroute2.netlink.exceptions import NetlinkError

        idx = self.index(ipr)
        if idx is None:
            try:
                ipr.link("add", ifname=self.ifname, kind="dummy")
            except NetlinkError as e:
                if e.code != errno.EOPNOTSUPP:
                    raise
                log.info("this kernel has no dummy interfaces; %s is an empty bridge instead", self.ifname)
                ipr.link("add", ifname=self.ifname, kind="bridge")
            idx = self.index(ipr)
            assert idx is not None
        ipr.link("set", index=idx, state="up")
        return idx

    def addresses(self, ipr, idx: int) -> set[str]:  # noqa: ANN001
        out = set()
        for msg in ipr.get_addr(index=idx):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr and not addr.startswith("fe80:"):
                out.add(addr)
        return out

    def add(self, wanted: Iterable[str]) -> set[str]:
        """Make sure the link exists and holds every wanted address; returns what it held before."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with self._ipr() as ipr:
                idx = self.ensure(ipr)
                have = self.addresses(ipr, idx)
                for ip in sorted(set(wanted) - have):
                    v6 = ip_family(ip) == 6
                    ipr.addr("add", index=idx, address=ip, prefixlen=128 if v6 else 32,
                             **({"flags": IFA_F_NODAD} if v6 else {}))
                return have
        except (NetlinkError, OSError) as e:
            raise ApplyError(f"cannot put service addresses on {self.ifname}: {e} "
                             "(userspace mode needs root, CAP_NET_ADMIN)") from e

    def remove_except(self, wanted: Iterable[str]) -> None:
        """Drop the addresses no service has any more."""
        from pyroute2.netlink.exceptions import NetlinkError

        wanted = set(wanted)
        try:
            with self._ipr() as ipr:
                idx = self.index(ipr)
                if idx is None:
                    return
                for ip in sorted(self.addresses(ipr, idx) - wanted):
                    ipr.addr("del", index=idx, address=ip, prefixlen=128 if ip_family(ip) == 6 else 32)
        except (NetlinkError, OSError) as e:
            raise ApplyError(f"cannot remove stale service addresses from {self.ifname}: {e}") from e

    def delete(self) -> bool:
        """Remove the link (and with it every address on it); False if there was none."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with self._ipr() as ipr:
                idx = self.index(ipr)
                if idx is None:
                    return False
                ipr.link("del", index=idx)
                return True
        except (NetlinkError, OSError) as e:
            raise ApplyError(f"cannot delete {self.ifname}: {e}") from e
