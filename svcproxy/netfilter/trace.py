"""trace_packet: the tracer's front door. Detects the ruleset format, builds the packet, walks."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import replace

from .core import PROTO_NUMBERS, Context, Packet, Ruleset, TraceError, ip_text, no_gc
from .result import Affinity, TraceResult, outcomes_of
from .walk import Walker

SOURCE_PORT = 40000  # an ephemeral port; kube-proxy rules never look at it
_NFT_TEXT = re.compile(r"^\s*table\s+(ip|ip6|inet|arp|bridge|netdev)\s+\S+\s*\{", re.M)
_IPT = re.compile(r"^\*[\w-]+\s*$|^COMMIT\s*$|^\s*(?:\[\d+:\d+\]\s*)?-A\s", re.M)


def detect_format(rules: str) -> str:
    """iptables | nft | nft-json, from the text itself."""
    head = rules.lstrip()
    if head.startswith("{"):
        return "nft-json"
    if _IPT.search(rules):
        return "iptables"
    if _NFT_TEXT.search(rules):
        return "nft"
    raise TraceError("cannot tell the ruleset format: expected iptables-save output (*nat ... COMMIT), "
                     "`nft list ruleset` text (table ip NAME { ... }) or `nft -j list ruleset` JSON")


def parse_rules(rules: str, index: bool = True, lazy: bool = True, table: str | None = None) -> Ruleset:
    """Any supported ruleset text -> Ruleset. index/lazy=False: the naive way (for benchmarks):
    no destination index on long chains, and every rule parsed up front. table: the iptables
    table of rules given without `*table` lines."""
    fmt = detect_format(rules)
    if fmt == "iptables":
        from .iptables import parse_iptables

        rs = parse_iptables(rules, index=index, table=table)
    else:
        from .nftables import parse_nft_json, parse_nft_text

        rs = parse_nft_json(rules) if fmt == "nft-json" else parse_nft_text(rules, lazy=lazy)
    if not lazy:
        rs.parse_all()
    return rs


def _address(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise TraceError(f"{what} {text!r} is not an IP address") from None


def trace_packet(rules: str, source: str, destination: str, port: int, protocol: str = "TCP",
                 local_addresses: Sequence[str] = (), source_port: int = SOURCE_PORT,
                 table: str | None = None, in_interface: str | None = None) -> TraceResult:
    """Walk a new connection source -> destination:port through the ruleset; every outcome.

    local_addresses are the node's own addresses (loopback is always local); a packet whose
    source is one of them starts at OUTPUT, any other at PREROUTING. in_interface is the
    interface a packet from elsewhere arrives on (`-i`, `iifname`: the interface detect-local
    modes); None leaves it unknown, and rules that ask are reported.
    """
    with no_gc():
        ruleset = parse_rules(rules, table=table)
        try:
            return trace_ruleset(ruleset, source, destination, port, protocol, local_addresses, source_port,
                                 in_interface)
        finally:
            ruleset.dispose()


def trace_ruleset(ruleset: Ruleset, source: str, destination: str, port: int, protocol: str = "TCP",
                  local_addresses: Sequence[str] = (), source_port: int = SOURCE_PORT,
                  in_interface: str | None = None) -> TraceResult:
    src, dst = _address(source, "source"), _address(destination, "destination")
    if src.version != dst.version:
        raise TraceError(f"source {source} and destination {destination} are of different IP families")
    proto = PROTO_NUMBERS.get(protocol.lower())
    if proto not in (6, 17, 132):
        raise TraceError(f"protocol {protocol!r}: choose TCP, UDP or SCTP")
    if not 0 < port < 65536:
        raise TraceError(f"port {port} is out of range (1-65535)")
    fam = dst.version
    local = frozenset(int(a) for a in (_address(x, "local address") for x in local_addresses) if a.version == fam)
    ctx = Context(fam, local)
    local_origin = ctx.is_local(fam, int(src))
    # a locally generated packet has no input interface: `-i X` fails and `! -i X` matches, as
    # in the kernel (nft's iifname reads "" there); it comes back in through lo (walk.py)
    iif = "" if local_origin else in_interface
    pkt = Packet(fam, int(src), int(dst), source_port, port, proto, iif=iif, local_origin=local_origin)
    with no_gc():
        return _trace(ruleset, ctx, pkt, protocol)


def _trace(ruleset: Ruleset, ctx: Context, pkt: Packet, protocol: str) -> TraceResult:
    walker = Walker(ruleset, ctx)
    finals = walker.trace(pkt)
    outcomes = outcomes_of(finals)
    affinity = []
    recorded: dict[str, float] = {}
    for p, pk, _ in finals:
        for name in dict.fromkeys(pk.sticky):
            recorded[name] = recorded.get(name, 0.0) + p
    for name, share in recorded.items():  # a returning client: its check for `name` now hits
        again = outcomes_of(Walker(ruleset, ctx).trace(replace(pkt, returning=name)))
        affinity.append(Affinity(name, share, tuple(o.endpoint for o in again if o.verdict == "ACCEPT")))
    warnings = [f"{where}: {reason}: {text}" if where else f"{reason}: {text}"
                for (where, reason), text in ctx.warnings.items()]
    warnings += ruleset.notes
    fam = pkt.family
    return TraceResult(ip_text(fam, pkt.src), ip_text(fam, pkt.dst), pkt.dport, protocol.upper(),
                       "OUTPUT" if pkt.local_origin else "PREROUTING", ruleset.format, outcomes, warnings, affinity)
