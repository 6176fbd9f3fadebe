"""This node's addresses, read from the kernel (the daemon's --local-address)."""

from __future__ import annotations

import json
import subprocess


def kernel_addresses() -> list[str]:
    """Every global and host-scope address on this network namespace's interfaces."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    addrs = []
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            if a.get("scope") in ("global", "host") and a.get("local"):
                addrs.append(a["local"])
    return addrs
