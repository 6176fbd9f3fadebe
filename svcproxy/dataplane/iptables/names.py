"""Chain names, hashed exactly as kube-proxy hashes them.

Keeping kube-proxy's names means `iptables-save | grep KUBE-SVC-...` habits, docs and tools
carry over, and a node switched between kube-proxy and svcproxy sees the same chains.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

# Top-level chains (fixed names).
SERVICES = "KUBE-SERVICES"
EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
NODEPORTS = "KUBE-NODEPORTS"
POSTROUTING = "KUBE-POSTROUTING"
MARK_MASQ = "KUBE-MARK-MASQ"
FORWARD = "KUBE-FORWARD"
PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
PROXY_CANARY = "KUBE-PROXY-CANARY"
KUBELET_FIREWALL = "KUBE-FIREWALL"  # kubelet's anti-martian chain, duplicated by kube-proxy
KUBELET_CANARY = "KUBE-KUBELET-CANARY"  # exists when kubelet manages this host's iptables

# Per-service-port chain prefixes: cluster policy, local policy, firewall, external, endpoint.
SVC, SVL, FW, EXT, SEP = "KUBE-SVC-", "KUBE-SVL-", "KUBE-FW-", "KUBE-EXT-", "KUBE-SEP-"
SERVICE_CHAIN_PREFIXES = (SVC, SVL, FW, EXT, SEP)


# base32 (RFC 4648 alphabet) two characters at a time: 16 characters = the digest's first 80 bits.
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PAIRS = [a + b for a in _B32 for b in _B32]


def _hash16(text: str) -> str:
    """First 16 characters of base32(sha256(text)); base64.b32encode is ten times slower."""
    x = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _PAIRS
    return (p[x >> 70] + p[(x >> 60) & 1023] + p[(x >> 50) & 1023] + p[(x >> 40) & 1023]
            + p[(x >> 30) & 1023] + p[(x >> 20) & 1023] + p[(x >> 10) & 1023] + p[x & 1023])


@lru_cache(maxsize=65536)
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """kube-proxy's portProtoHash: sha256(name + lowercase protocol), base32, 16 chars."""
    return _hash16(service_port_name + protocol.lower())


def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-<hash of name + lowercase protocol + "ip:port">."""
    return SEP + _hash16(service_port_name + protocol.lower() + endpoint)


def endpoint_chains(service_port_name: str, protocol: str, endpoints: list[str]) -> list[str]:
    """endpoint_chain for many endpoints of one port at once (the renderer's hot loop)."""
    prefix = service_port_name + protocol.lower()
    sha, from_bytes, p = hashlib.sha256, int.from_bytes, _PAIRS
    out = []
    for endpoint in endpoints:
        x = from_bytes(sha((prefix + endpoint).encode()).digest()[:10], "big")
        out.append(SEP + p[x >> 70] + p[(x >> 60) & 1023] + p[(x >> 50) & 1023] + p[(x >> 40) & 1023]
                   + p[(x >> 30) & 1023] + p[(x >> 20) & 1023] + p[(x >> 10) & 1023] + p[x & 1023])
    return out


def service_chains(service_port_name: str, protocol: str) -> tuple[str, str, str, str]:
    """(KUBE-SVC-, KUBE-SVL-, KUBE-EXT-, KUBE-FW-) chain names of one service port."""
    h = port_proto_hash(service_port_name, protocol)
    return SVC + h, SVL + h, EXT + h, FW + h


def is_service_chain(name: str) -> bool:
    """True for the per-service-port chains svcproxy (and kube-proxy) create and delete."""
    return name.startswith(SERVICE_CHAIN_PREFIXES)
