"""Names of the kube-proxy table's objects, hashed the way kube-proxy's nftables mode hashes them.

kube-proxy prefixes each per-service name with 8 base32 characters of its sha256 so that names
stay unique when truncated and are easy to tell apart; `nft list ruleset | grep` habits carry over.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from ...state import ServicePortName

TABLE = "kube-proxy"
NAME_MAX = 256  # nftables' NFT_NAME_MAXLEN
BASE_MAX = NAME_MAX - 16  # room for the longest prefix ("endpoint-", "affinity-", ...)

# Prefixes of the per-service chains and sets.
SERVICE = "service-"
LOCAL = "local-"
EXTERNAL = "external-"
ENDPOINT = "endpoint-"
AFFINITY = "affinity-"
FIREWALL = "firewall-"


def family_keyword(family: int) -> str:
    """The nft family ("ip"/"ip6"), which is also the payload keyword for addresses."""
    return "ip" if family == 4 else "ip6"


def hash_and_truncate(name: str) -> str:
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    name = f"{digest[:8]}-{name}"
    return name if len(name) <= BASE_MAX else name[: BASE_MAX - 3] + "..."


@lru_cache(maxsize=65536)
def port_base(spn: ServicePortName) -> str:
    """"HASH-ns/name/proto/port", e.g. "ULMVA6XW-ns1/svc1/tcp/p80"."""
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{spn.protocol.lower()}/{spn.port}")


def endpoint_base(spn: ServicePortName, ip: str, port: int) -> str:
    """"HASH-ns/name/proto/port__ip/port"; IPv6 colons become dots (not allowed in names)."""
    ip = ip.replace(":", ".")
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{spn.protocol.lower()}/{spn.port}__{ip}/{port}")


def is_service_chain(name: str) -> bool:
    """Per-service chains (ours to create and delete) always hold a "/"; fixed chains never do."""
    return "/" in name


def is_affinity_set(name: str) -> bool:
    return name.startswith(AFFINITY)
