"""Names of the kube-proxy table's objects, hashed the way kube-proxy's nftables mode hashes them.

kube-proxy prefixes each per-service name with 8 base32 characters of its sha256 so that names
stay unique when truncated and are easy to tell apart; `nft list ruleset | grep` habits carry over.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from ...state import ServicePortName

TABLE = "kube-proxy"
TABLE_COMMENT_TEXT = "rules for kube-proxy"
NAME_MAX = 256  # nftables' NFT_NAME_MAXLEN
BASE_MAX = NAME_MAX - 16  # room for the longest prefix ("endpoint-", "affinity-", ...)

# Prefixes of the per-service chains and sets.
SERVICE = "service-"
LOCAL = "local-"
EXTERNAL = "external-"
ENDPOINT = "endpoint-"
AFFINITY = "affinity-"
FIREWALL = "firewall-"
# The maps layout's endpoint maps (endpoint choice by numgen range): the shared maps
# "endpoints-tcp-0".. (a slot of one per port), and per-port maps of the same prefixes for the
# ports whose slot collides with another port's
ENDPOINTS = "endpoints-"
LOCAL_ENDPOINTS = "local-endpoints-"
# ... and for ClientIP affinity: client -> endpoint (written by the packet path), the
# endpoints that may be remembered, and the chain that remembers a client's endpoint
CLIENT_AFFINITY = "client-affinity-"
MEMBERS = "members-"
REMEMBER = "remember-"


def family_keyword(family: int) -> str:
    """The nft family ("ip"/"ip6"), which is also the payload keyword for addresses."""
    return "ip" if family == 4 else "ip6"


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]  # 10 bits -> 2 characters


def hash_and_truncate(name: str) -> str:
    # The first 8 base32 characters encode exactly the first 5 bytes of the digest; encoding
    # only those is 10x faster than base64.b32encode of the whole digest.
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:5], "big")
    digest = (_B32_PAIRS[n >> 30] + _B32_PAIRS[(n >> 20) & 1023] + _B32_PAIRS[(n >> 10) & 1023]
              + _B32_PAIRS[n & 1023])
    name = f"{digest}-{name}"
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


def shared_endpoints_map(proto: str, shard: int) -> str:
    """"endpoints-tcp-0": per-port maps' names always hold a "/", these never do."""
    return f"{ENDPOINTS}{proto}-{shard}"


def is_shared_endpoints_map(name: str) -> bool:
    return name.startswith(ENDPOINTS) and "/" not in name


def is_endpoints_map(name: str) -> bool:
    """A per-port endpoint map (per-service names always hold a "/")."""
    return name.startswith((ENDPOINTS, LOCAL_ENDPOINTS)) and "/" in name


def is_data_container(name: str) -> bool:
    """Sets and maps whose elements follow the endpoints (the maps layout's endpoint maps and
    affinity members): a full sync rewrites them only where they differ."""
    return name.startswith((ENDPOINTS, LOCAL_ENDPOINTS, MEMBERS))


def container_kind(name: str) -> str:
    return "map" if name.startswith((ENDPOINTS, LOCAL_ENDPOINTS, CLIENT_AFFINITY)) else "set"
