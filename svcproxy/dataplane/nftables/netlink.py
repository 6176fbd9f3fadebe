"""A path below the nft command: our own transactions encoded as nf_tables netlink messages,
from the same typed commands (commands.py) that Tx.text() writes out for nft.

Every `nft` run first re-reads the table (about 2 s at 10,000 services, even to add one
element), because another program may have changed it. We know what we programmed, so for the
commands our dataplane sends to per-service objects (chains, their rules, affinity sets, map
elements) and for a full sync's commit (base chains and their jumps, map flushes, elements) we
encode the netlink batch ourselves and session.py sends it on one kept-open socket: a
one-endpoint change then costs the kernel's commit (see docs/performance.md), not an nft run.
Anything this encoder does not know (the table, its fixed sets and maps, the maps layout's
members sets, the fixed regular chains' rules, anonymous sets other than the numgen vmap and
map, ...) raises Unsupported and the caller uses nft.

The encoding follows what nft 1.0.6 itself sends (`nft --debug=netlink,mnl`), so `nft list
ruleset` prints rules programmed here exactly as if nft had added them.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import struct
from collections.abc import Callable, Iterable
from functools import cached_property, lru_cache
from typing import Any, ClassVar

from .commands import (
    AddChain,
    AddContainer,
    AddElements,
    AddRule,
    Command,
    DeleteChain,
    DeleteContainer,
    DeleteElements,
    FlushChain,
    FlushContainer,
)
from .layout import Container, Hook

NFNL_SUBSYS_NFTABLES = 10
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLA_F_NESTED = 0x8000

# message types
NEWCHAIN, DELCHAIN, NEWRULE, DELRULE, NEWSET, DELSET, NEWSETELEM, DELSETELEM = 3, 5, 6, 8, 9, 11, 12, 14

# verdicts
NF_DROP, NF_ACCEPT, NFT_JUMP, NFT_GOTO, NFT_RETURN = 0, 1, -3, -4, -5
NFT_DATA_VERDICT = 0xFFFFFF00

# set flags and nft's datatype ids (NFTA_SET_KEY_TYPE)
SET_ANONYMOUS, SET_CONSTANT, SET_INTERVAL, SET_MAP, SET_TIMEOUT, SET_EVAL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
TYPE_INTEGER, TYPE_IPADDR, TYPE_IP6ADDR = 4, 7, 8
BYTEORDER_HOST, BYTEORDER_BIG = 1, 2

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
FAMILIES = {"ip": socket.AF_INET, "ip6": socket.AF_INET6}
REG_VERDICT, REG_1, REG_2 = 0, 1, 2
RTN_LOCAL = 2


class Unsupported(ValueError):
    """A command outside what this encoder handles; use nft for the transaction."""


# --- attributes ---------------------------------------------------------------------------


_HEADER = struct.Struct("=HH")
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    if length > 0xFFFF:
        raise Unsupported(f"a netlink attribute of {length} bytes (the limit is 65,535)")
    return _HEADER.pack(length, kind) + payload + _PADS[length % 4]


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


@lru_cache(maxsize=4096)
def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!I", value & 0xFFFFFFFF))


def u64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!Q", value))


@lru_cache(maxsize=4096)
def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def udata(kind: int, value: bytes) -> bytes:
    """One TLV of libnftnl's userdata (comments, byte orders)."""
    return struct.pack("BB", kind, len(value)) + value


def comment_udata(text: str) -> bytes:
    return udata(0, text.encode() + b"\0")


# --- expressions ----------------------------------------------------------------------------


def expr(name: str, *data: bytes) -> bytes:
    return nest(1, string(1, name), nest(2, *data))


def verdict_data(code: int, chain: str = "") -> bytes:
    """NFTA_DATA_VERDICT nested inside a data attribute of type kind."""
    return nest(2, u32(1, code), *([string(2, chain)] if chain else []))


@lru_cache(maxsize=256)
def payload(base: int, offset: int, length: int, reg: int = REG_1) -> bytes:
    return expr("payload", u32(1, reg), u32(2, base), u32(3, offset), u32(4, length))


def _around(encoded: bytes, length: int) -> tuple[bytes, bytes]:
    """An expression whose last attribute is a value of this length, split around that value:
    its bytes before and its padding after (the rest of the encoding depends on the length only)."""
    pad = -length % 4
    return encoded[:len(encoded) - length - pad], encoded[len(encoded) - pad:]


@lru_cache(maxsize=64)
def _cmp_around(length: int, op: int, reg: int) -> tuple[bytes, bytes]:
    return _around(expr("cmp", u32(1, reg), u32(2, op), nest(3, attr(1, bytes(length)))), length)


def cmp(value: bytes, op: int = 0, reg: int = REG_1) -> bytes:
    before, after = _cmp_around(len(value), op, reg)
    return before + value + after


@lru_cache(maxsize=16)
def meta_l4proto(reg: int = REG_1) -> bytes:
    return expr("meta", u32(2, 16), u32(1, reg))  # NFT_META_L4PROTO


@lru_cache(maxsize=1 << 16)
def immediate_verdict(code: int, chain: str = "") -> bytes:
    return expr("immediate", u32(1, REG_VERDICT), nest(2, verdict_data(code, chain)))


@lru_cache(maxsize=64)
def _immediate_around(reg: int, length: int) -> tuple[bytes, bytes]:
    return _around(expr("immediate", u32(1, reg), nest(2, attr(1, bytes(length)))), length)


def immediate_value(reg: int, value: bytes) -> bytes:
    before, after = _immediate_around(reg, len(value))
    return before + value + after


def lookup(set_name: str, set_id: int | None = None, dreg: int | None = None) -> bytes:
    parts = [string(1, set_name), u32(2, REG_1)]
    if dreg is not None:
        parts.append(u32(3, dreg))
    if set_id is not None:
        parts.append(u32(4, set_id))
    return expr("lookup", *parts)


# --- the rule compiler ----------------------------------------------------------------------

TOKEN = re.compile(r'"[^"]*"|\{|\}|,|[^\s{},]+')
SADDR_JUMP = re.compile(r"(ip6?) saddr ([0-9a-fA-F.:]+) jump (\S+)")
DNAT = re.compile(r"meta l4proto (tcp|udp|sctp) dnat to \[?([0-9a-fA-F.:]+?)\]?:(\d+)")
PROTO_BYTES = {name: bytes([num]) for name, num in PROTOCOLS.items()}
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}  # NF_INET_*
ELEMENTS_MAX_BYTES = 48 * 1024  # per NEWSETELEM message, below the 64 KB attribute limit
CT_STATE_NEW = 1 << 3  # NF_CT_STATE_BIT(IP_CT_NEW)
IPS_DST_NAT = 1 << 5  # conntrack status: the connection's destination was rewritten
# kube-proxy 1.36's service chain: dnat through an anonymous numgen map of address . port
DNAT_NUMGEN = re.compile(r"meta l4proto (tcp|udp|sctp) dnat (ip6?) addr \. port to numgen random mod (\d+) "
                         r"map \{ (.*) \}")
NUMGEN_ITEM = re.compile(r"(\d+) : \[?([0-9a-fA-F.:]+?)\]? \. (\d+)")
TYPE_INET_SERVICE = 13
META_MARK = 3  # NFT_META_MARK
MARK_OR = re.compile(r"mark set mark or (0x[0-9a-fA-F]+|\d+)")
DNAT_MAP = re.compile(r"meta l4proto (tcp|udp|sctp) dnat (ip6?) to numgen random mod (\d+)(?: offset (\d+))? map @(\S+)")
# nft 1.0.6's userdata describing "typeof numgen random mod 1000000 : ip daddr . tcp dport", as
# read back from a map nft declared; the IPv6 and protocol variants differ in two places
_TYPEOF_IP_TCP = bytes.fromhex(
    "000401000000010400000000031a0004170000000112000401000000010440420f00020400000000043400040d00"
    "0000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040800000001040200"
    "0000060400000000")
_TYPEOF_AFFINITY = bytes.fromhex(  # "typeof ip saddr : ip daddr"
    "0004020000000104020000000314000407000000010c00040c00000001040b0000000414000407000000010c00040c000000"
    "01040c000000060400000000")
INTERVAL = re.compile(r"(\d+)-(\d+)")
ELEM_INTERVAL_END = 1  # NFT_SET_ELEM_INTERVAL_END


class Compiler:
    """Turns our nft commands into netlink messages for one table."""

    def __init__(self, family: str, table: str, anon_prefix: str = "") -> None:
        self.family = family
        # Anonymous maps get a short name of our own ("__map%d" makes the kernel scan every set
        # to pick a number). The kernel finds sets by walking the table's list comparing names,
        # so names that differ early keep a cold load of 10,000 services fast.
        self.anon_prefix = anon_prefix or secrets.token_hex(2)
        self.nfproto = FAMILIES[family]
        self.table = table
        self.addr_len = 4 if family == "ip" else 16
        self.saddr_off, self.daddr_off = (12, 16) if family == "ip" else (8, 24)
        self.messages: list[tuple[int, int, bytes]] = []  # (type, flags, attributes)
        self._set_id = 0
        self.set_ids: dict[str, int] = {}  # sets declared in this batch

    def next_set_id(self) -> int:
        self._set_id += 1
        return self._set_id

    def add(self, msg: int, flags: int, *attrs: bytes) -> None:
        self.messages.append((msg, flags, b"".join(attrs)))

    # values

    def address(self, text: str) -> bytes:
        try:
            return socket.inet_pton(self.nfproto, text)
        except OSError:
            raise Unsupported(f"{text} is not an address of this family") from None

    def key(self, text: str) -> bytes:
        """A set/map key: addresses, protocols and ports, concatenated with " . "."""
        out = b""
        for part in (p.strip() for p in text.split(" . ")):
            if part in PROTOCOLS:
                out += struct.pack("=B3x", PROTOCOLS[part])
            elif part.isdigit():
                out += struct.pack("!H2x", int(part))
            else:
                out += self.address(part)
        return out

    def verdict(self, words: list[str]) -> tuple[int, str]:
        if words[0] in ("goto", "jump") and len(words) == 2:
            return (NFT_GOTO if words[0] == "goto" else NFT_JUMP), words[1]
        if words == ["drop"]:
            return NF_DROP, ""
        if words == ["accept"]:
            return NF_ACCEPT, ""
        if words == ["return"]:
            return NFT_RETURN, ""
        raise Unsupported(f"verdict {' '.join(words)}")

    # commands

    def encodes(self, commands: Iterable[Command]) -> bool:
        """Add the commands' messages; False (and nothing added) where only nft can encode one."""
        mark = len(self.messages)
        try:
            for command in commands:
                self.command(command)
        except Unsupported:
            del self.messages[mark:]
            return False
        return True

    def command(self, command: Command) -> None:
        encode = ENCODERS.get(type(command))
        if encode is None:  # the table
            raise Unsupported(command.text(f"{self.family} {self.table}"))
        encode(self, command)

    def add_chain(self, command: AddChain) -> None:
        chain = command.chain
        if chain.comment:  # (a regular chain's comment)
            raise Unsupported(command.text(f"{self.family} {self.table}"))
        if chain.hook is not None:
            self.base_chain(chain.name, chain.hook)
        else:
            self.add(NEWCHAIN, NLM_F_CREATE, string(1, self.table), string(3, chain.name))

    def add_rule(self, command: AddRule) -> None:
        self.rule(command.chain, command.rule)

    def flush_chain(self, command: FlushChain) -> None:
        self.add(DELRULE, 0, string(1, self.table), string(2, command.name))

    def delete_chain(self, command: DeleteChain) -> None:
        self.add(DELCHAIN, 0, string(1, self.table), string(3, command.name))

    def add_elements(self, command: AddElements) -> None:
        self.elements("add", command.container, ((e.key, e.value, e.comment) for e in command.elements))

    def delete_elements(self, command: DeleteElements) -> None:
        self.elements("delete", command.container, ((k, "", "") for k in command.keys))

    def add_container(self, command: AddContainer) -> None:
        self.container(command.container)

    def delete_container(self, command: DeleteContainer) -> None:
        self.add(DELSET, 0, string(1, self.table), string(2, command.name))

    def flush_container(self, command: FlushContainer) -> None:
        self.add(DELSETELEM, 0, string(1, self.table), string(2, command.name))  # no element list: the kernel flushes

    def base_chain(self, name: str, hook: Hook) -> None:
        """A base chain as fixed_chains writes it (policy accept)."""
        if hook.type not in ("filter", "nat") or hook.hook not in HOOKS:
            raise Unsupported(f"chain {name} {hook}")
        self.add(NEWCHAIN, NLM_F_CREATE, string(1, self.table), string(3, name), string(7, hook.type),
                 u32(5, NF_ACCEPT), nest(4, u32(1, HOOKS[hook.hook]), u32(2, hook.priority)))

    def container(self, c: Container) -> None:
        """The per-service sets and maps our layouts declare; the fixed ones are nft's job
        (declared once, with the table)."""
        fam = self.family
        if c.kind == "set" and not c.typeof and not c.comment and c.key_type in ("ipv4_addr", "ipv6_addr") \
                and c.flags == "dynamic,timeout" and c.timeout > 0:
            self.affinity_set(c.name, c.key_type == "ipv4_addr", c.timeout)
            return
        if c.kind == "map" and c.typeof and not c.timeout:
            modulus = c.key_type.removeprefix("numgen random mod ")
            proto = c.value_type.removeprefix(f"{fam} daddr . ").removesuffix(" dport")
            if modulus.isdigit() and proto in PROTOCOLS and c.value_type == f"{fam} daddr . {proto} dport" \
                    and c.flags == "interval":
                self.endpoints_map(c.name, int(modulus), proto, c.comment)
                return
        if c.kind == "map" and c.typeof and not c.comment and c.key_type == f"{fam} saddr" \
                and c.value_type == f"{fam} daddr" and c.flags == "dynamic,timeout" and c.timeout > 0:
            self.client_affinity_map(c.name, c.timeout)
            return
        raise Unsupported(AddContainer(c).text(f"{fam} {self.table}"))

    def affinity_set(self, name: str, v4: bool, timeout: int) -> None:
        """A kube-proxy layout's per-endpoint ClientIP affinity set (`flags dynamic,timeout`)."""
        self.add(NEWSET, NLM_F_CREATE, string(1, self.table), string(2, name), u32(3, SET_TIMEOUT | SET_EVAL),
                 u32(4, TYPE_IPADDR if v4 else TYPE_IP6ADDR), u32(5, 4 if v4 else 16), u32(10, self.next_set_id()),
                 u64(11, timeout * 1000), attr(13, udata(0, struct.pack("=I", BYTEORDER_BIG))))

    def endpoints_map(self, name: str, modulus: int, proto: str, comment: str) -> None:
        """The maps layout's `typeof numgen random mod N : ip daddr . tcp dport; flags interval`
        map, with nft's own description of the typeof expressions (so `nft list` prints it)."""
        set_id = self.next_set_id()
        self.set_ids[name] = set_id
        self.add(NEWSET, NLM_F_CREATE, string(1, self.table), string(2, name), u32(3, SET_MAP | SET_INTERVAL),
                 u32(4, TYPE_INTEGER), u32(5, 4), u32(6, 0x1CD if self.family == "ip" else 0x20D),
                 u32(7, self.addr_len + 4), u32(10, set_id),
                 attr(13, typeof_udata(self.family, proto, modulus=modulus)
                      + (set_comment_udata(comment) if comment else b"")))

    def client_affinity_map(self, name: str, timeout: int) -> None:
        """`typeof ip saddr : ip daddr; flags dynamic,timeout`: a client's endpoint, written by
        the packet path."""
        addr_type = TYPE_IPADDR if self.family == "ip" else TYPE_IP6ADDR
        user = _TYPEOF_AFFINITY
        if self.family == "ip6":
            user = user.replace(bytes.fromhex("0c00040c00000001040b"), bytes.fromhex("0c00040d000000010408"))
            user = user.replace(bytes.fromhex("0c00040c00000001040c"), bytes.fromhex("0c00040d000000010409"))
        self.set_ids[name] = set_id = self.next_set_id()
        self.add(NEWSET, NLM_F_CREATE, string(1, self.table), string(2, name), u32(3, SET_MAP | SET_TIMEOUT | SET_EVAL),
                 u32(4, addr_type), u32(5, self.addr_len), u32(6, addr_type), u32(7, self.addr_len),
                 u32(10, set_id), u64(11, timeout * 1000), attr(13, user))

    def elements(self, verb: str, set_name: str, elements: Iterable[tuple[str, str, str]]) -> None:
        """(key, value, comment) items, in messages below the attribute limit."""
        items: list[bytes] = []
        size = 0
        for key_text, value, comment in elements:
            span = INTERVAL.fullmatch(key_text)
            if span:  # a numgen range of an endpoint map: its start (with the data) and its end
                items += self.interval(verb, int(span.group(1)), int(span.group(2)), value, comment)
                size += 96 + len(comment)
                if size > ELEMENTS_MAX_BYTES:
                    self.element_message(verb, set_name, items)
                    items, size = [], 0
                continue
            parts = [nest(1, attr(1, self.key(key_text)))]
            if value and verb == "add":
                code, chain = self.verdict(value.split())
                parts.append(nest(2, verdict_data(code, chain)))
            if comment and verb == "add":
                parts.append(attr(6, comment_udata(comment)))
            items.append(nest(1, *parts))
            size += len(items[-1])
            if size > ELEMENTS_MAX_BYTES:  # a message's element list is one attribute (64 KB at most)
                self.element_message(verb, set_name, items)
                items, size = [], 0
        if items:
            self.element_message(verb, set_name, items)

    def interval(self, verb: str, first: int, last: int, value: str, comment: str = "") -> list[bytes]:
        """One range a-b of a `typeof numgen ... flags interval` map, as nft sends it: the
        start element at a (with the data), then an end element at b+1 (flag INTERVAL_END, no
        data); keys are the numgen value in network byte order. The kernel's rbtree wants this
        order when a range replaces one deleted in the same transaction."""
        end = nest(1, nest(1, attr(1, struct.pack("!I", last + 1))), u32(3, ELEM_INTERVAL_END))
        start = [nest(1, attr(1, struct.pack("!I", first)))]
        if verb == "add":
            if not value:
                raise Unsupported(f"range {first}-{last} without data")
            start.append(nest(2, attr(1, self.key(value))))
            if comment:
                start.append(attr(6, comment_udata(comment)))
        return [nest(1, *start), end]

    def element_message(self, verb: str, set_name: str, items: list[bytes]) -> None:
        # a set declared in this batch by its id: the kernel finds it near the transaction's
        # tail, while a name is searched in the table's linear list of every set
        set_id = self.set_ids.get(set_name)
        ref = u32(4, set_id) if set_id is not None else string(2, set_name)
        self.add(NEWSETELEM if verb == "add" else DELSETELEM, NLM_F_CREATE if verb == "add" else 0,
                 string(1, self.table), ref, nest(3, *items))

    def rule(self, chain: str, text: str) -> None:
        exprs = self.common_rule(text)
        if exprs is not None:  # the service chains' numgen map DNAT, the endpoint chains' rules: no tokenizing
            self.add(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, string(1, self.table), string(2, chain), nest(4, *exprs))
            return
        parsed = _RuleText(self, text)
        parsed.parse()
        attrs = [string(1, self.table), string(2, chain), nest(4, *parsed.exprs)]
        if parsed.user:
            attrs.append(attr(7, parsed.user))
        self.add(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, *attrs)

    def common_rule(self, text: str) -> list[bytes] | None:
        m = SADDR_JUMP.fullmatch(text)
        if m and m.group(1) == self.family:
            return [payload(1, self.saddr_off, self.addr_len), cmp(self.address(m.group(2))),
                    immediate_verdict(NFT_JUMP, m.group(3))]
        m = DNAT_MAP.fullmatch(text)
        if m and m.group(2) == self.family:
            modulus, offset, name = int(m.group(3)), int(m.group(4) or 0), m.group(5)
            return [meta_l4proto(), cmp(PROTO_BYTES[m.group(1)]),
                    expr("numgen", u32(1, REG_1), u32(2, modulus), u32(3, 1), u32(4, offset)),
                    expr("byteorder", u32(1, REG_1), u32(2, REG_1), u32(3, 1), u32(4, 4), u32(5, 4)),  # hton
                    lookup(name, self.set_ids.get(name), dreg=REG_1), self.nat_map]
        m = DNAT_NUMGEN.fullmatch(text)
        if m and m.group(2) == self.family:
            return [meta_l4proto(), cmp(PROTO_BYTES[m.group(1)]), *self.numgen_map(int(m.group(3)), m.group(4), text)]
        m = DNAT.fullmatch(text)
        if m:
            return [meta_l4proto(), cmp(PROTO_BYTES[m.group(1)]), immediate_value(REG_1, self.address(m.group(2))),
                    immediate_value(REG_2, struct.pack("!H", int(m.group(3)))), self.nat]
        return None

    @cached_property
    def nat(self) -> bytes:
        return expr("nat", u32(1, 1), u32(2, self.nfproto), u32(3, REG_1), u32(5, REG_2), u32(7, 0x2))

    @cached_property
    def nat_map(self) -> bytes:
        """dnat to the address . port a map lookup left in register 1 (the port follows the
        address: 32-bit register 9 for IPv4, 128-bit register 2 for IPv6)."""
        port_reg = 9 if self.family == "ip" else REG_2
        return expr("nat", u32(1, 1), u32(2, self.nfproto), u32(3, REG_1), u32(4, REG_1), u32(5, port_reg),
                    u32(6, port_reg), u32(7, 0x3))

    def numgen_map(self, modulus: int, body: str, text: str) -> list[bytes]:
        """`dnat ip addr . port to numgen random mod N map { 0 : a . p, ... }`: an anonymous
        constant map of integer to address . port, then numgen, lookup and nat, as nft 1.0.6
        sends them (no nat flags; the port register follows the address)."""
        items: list[bytes] = []
        for chunk in body.split(", "):
            m = NUMGEN_ITEM.fullmatch(chunk.strip())
            if not m:
                raise Unsupported(text)
            value = self.address(m.group(2)) + struct.pack("!H2x", int(m.group(3)))
            items.append(nest(1, nest(1, attr(1, struct.pack("=I", int(m.group(1))))), nest(2, attr(1, value))))
        set_id = self.next_set_id()
        name = f"__map{set_id:x}_{self.anon_prefix}"
        addr_type = TYPE_IPADDR if self.family == "ip" else TYPE_IP6ADDR
        user = udata(0, struct.pack("=I", BYTEORDER_HOST)) + udata(1, bytes(4)) + udata(6, bytes(4))
        self.add(NEWSET, NLM_F_CREATE | NLM_F_EXCL, string(1, self.table), string(2, name),
                 u32(3, SET_ANONYMOUS | SET_CONSTANT | SET_MAP), u32(4, TYPE_INTEGER), u32(5, 4),
                 u32(6, addr_type << 6 | TYPE_INET_SERVICE), u32(7, self.addr_len + 4), u32(10, set_id),
                 nest(9, u32(1, len(items))), attr(13, user))
        self.add(NEWSETELEM, NLM_F_CREATE, string(1, self.table), u32(4, set_id), nest(3, *items))
        return [expr("numgen", u32(1, REG_1), u32(2, modulus), u32(3, 1), u32(4, 0)),
                lookup(name, set_id, dreg=REG_1), self.nat_numgen]

    @cached_property
    def nat_numgen(self) -> bytes:
        """dnat to the address . port an anonymous numgen map left in register 1 (no flags,
        as nft 1.0.6 sends it for kube-proxy's `dnat ip addr . port to numgen ...`)."""
        port_reg = 9 if self.family == "ip" else REG_2
        return expr("nat", u32(1, 1), u32(2, self.nfproto), u32(3, REG_1), u32(5, port_reg))

    def numgen_vmap(self, tokens: list[str], i: int, text: str) -> list[bytes]:
        """`numgen random mod N vmap { 0 : goto a, 1 : goto b }`: an anonymous constant map,
        its elements, then numgen + lookup, as nft sends them."""
        end = tokens.index("}", i)
        head, body = tokens[i:i + 6], tokens[i + 6:end]
        if head[:3] != ["numgen", "random", "mod"] or head[4:] != ["vmap", "{"]:
            raise Unsupported(text)
        modulus = int(head[3])
        items: list[bytes] = []
        for chunk in " ".join(body).split(" , "):
            words = chunk.split()
            if len(words) != 4 or words[1] != ":":
                raise Unsupported(text)
            code, chain = self.verdict(words[2:])
            items.append(nest(1, nest(1, attr(1, struct.pack("=I", int(words[0])))),
                              nest(2, verdict_data(code, chain))))
        set_id = self.next_set_id()
        name = f"__map{set_id:x}_{self.anon_prefix}"
        # nft's userdata for a "typeof numgen" key in host byte order
        user = (udata(0, struct.pack("=I", BYTEORDER_HOST)) + udata(1, struct.pack("=I", 0))
                + bytes.fromhex("040800040100000001000604") + b"\0" * 4)
        self.add(NEWSET, NLM_F_CREATE | NLM_F_EXCL, string(1, self.table), string(2, name),
                 u32(3, SET_ANONYMOUS | SET_CONSTANT | SET_MAP), u32(4, TYPE_INTEGER), u32(5, 4),
                 u32(6, NFT_DATA_VERDICT), u32(7, 0), u32(10, set_id), nest(9, u32(1, len(items))), attr(13, user))
        # elements by set id only: the kernel finds a new set's id near the tail of the
        # transaction, while a name is searched in the table's linear list of every set
        self.add(NEWSETELEM, NLM_F_CREATE, string(1, self.table), u32(4, set_id), nest(3, *items))
        return [expr("numgen", u32(1, REG_1), u32(2, modulus), u32(3, 1), u32(4, 0)),
                lookup(name, set_id, dreg=REG_VERDICT)]


ENCODERS: dict[type, Callable[[Compiler, Any], None]] = {
    AddRule: Compiler.add_rule, AddElements: Compiler.add_elements, DeleteElements: Compiler.delete_elements,
    AddChain: Compiler.add_chain, FlushChain: Compiler.flush_chain, DeleteChain: Compiler.delete_chain,
    AddContainer: Compiler.add_container, FlushContainer: Compiler.flush_container,
    DeleteContainer: Compiler.delete_container,
}  # every command but AddTable, by type


class _RuleText:
    """One rule's text, statement by statement, into netlink expressions (the forms our
    renderers write; anything else is Unsupported and goes through nft)."""

    def __init__(self, c: Compiler, text: str) -> None:
        self.c, self.text = c, text
        self.tokens = TOKEN.findall(text)
        self.i = 0
        self.exprs: list[bytes] = []
        self.user = b""  # the comment, as userdata

    def take(self, n: int) -> list[str]:
        out = self.tokens[self.i:self.i + n]
        if len(out) < n:
            raise Unsupported(self.text)
        self.i += n
        return out

    def parse(self) -> None:
        tokens, ip = self.tokens, self.c.family
        while self.i < len(tokens):
            t = tokens[self.i]
            after = tokens[self.i + 1] if self.i + 1 < len(tokens) else ""
            if t == ip and after in ("saddr", "daddr"):
                self.address()
            elif t in PROTOCOLS and after == "dport":
                _, _, port = self.take(3)
                self.exprs += [meta_l4proto(), cmp(struct.pack("=B", PROTOCOLS[t])), payload(2, 2, 2),
                               cmp(struct.pack("!H", int(port)))]
            elif t == "meta" and after == "l4proto":
                _, _, proto = self.take(3)
                if proto not in PROTOCOLS:
                    raise Unsupported(self.text)
                self.exprs += [meta_l4proto(), cmp(struct.pack("=B", PROTOCOLS[proto]))]
            elif t in self.STATEMENTS:
                self.STATEMENTS[t](self)
            else:
                raise Unsupported(self.text)

    def address(self) -> None:
        """`ip saddr|daddr [!=] ADDRESS|CIDR|@set`."""
        c = self.c
        _, field = self.take(2)
        offset = c.saddr_off if field == "saddr" else c.daddr_off
        op = 0
        if self.tokens[self.i] == "!=":
            op, self.i = 1, self.i + 1
        (value,) = self.take(1)
        if value.startswith("@"):
            if op:
                raise Unsupported(self.text)
            self.exprs += [payload(1, offset, c.addr_len), lookup(value[1:])]
        elif value == "{":
            raise Unsupported(self.text)  # anonymous sets other than the numgen vmap: use nft
        elif "/" in value:
            net = ipaddress.ip_network(value)
            if net.prefixlen % 8:
                raise Unsupported(self.text)
            n = net.prefixlen // 8
            self.exprs += [payload(1, offset, n), cmp(net.network_address.packed[:n], op)]
        else:
            self.exprs += [payload(1, offset, c.addr_len), cmp(c.address(value), op)]

    def iifname(self) -> None:
        """`iifname [!=] "br0"` (the name NUL-padded to IFNAMSIZ) or `"veth*"` (a compare of the
        prefix alone), as nft encodes them: the local-traffic detector's interface modes."""
        self.take(1)
        op = 0
        if self.i < len(self.tokens) and self.tokens[self.i] == "!=":
            op, self.i = 1, self.i + 1
        (quoted,) = self.take(1)
        name = quoted.strip('"').encode()
        if not name or len(name) > 15 or b"\\" in name:
            raise Unsupported(self.text)
        value = name[:-1] if name.endswith(b"*") else name.ljust(16, b"\0")
        if not value:
            raise Unsupported(self.text)  # a bare "*": left to nft
        self.exprs += [expr("meta", u32(2, 6), u32(1, REG_1)), cmp(value, op)]  # NFT_META_IIFNAME

    def fib(self) -> None:
        if self.take(4) != ["fib", "saddr", "type", "local"]:
            raise Unsupported(self.text)
        self.exprs += [expr("fib", u32(1, REG_1), u32(2, 3), u32(3, 1)),  # addrtype of saddr
                       cmp(struct.pack("=I", RTN_LOCAL))]

    def ct(self) -> None:
        words = self.take(3)
        if words not in (["ct", "state", "new"], ["ct", "status", "dnat"]):
            raise Unsupported(self.text)
        key, bit = (0, CT_STATE_NEW) if words[1] == "state" else (2, IPS_DST_NAT)  # NFT_CT_STATE / _STATUS
        self.exprs += [expr("ct", u32(2, key), u32(1, REG_1)),
                       expr("bitwise", u32(1, REG_1), u32(2, REG_1), u32(3, 4),
                            nest(4, attr(1, struct.pack("=I", bit))), nest(5, attr(1, bytes(4)))),
                       cmp(bytes(4), op=1)]  # != 0

    def jump(self) -> None:
        word, target = self.take(2)
        self.exprs.append(immediate_verdict(*self.c.verdict([word, target])))

    def final(self) -> None:
        (word,) = self.take(1)
        self.exprs.append(immediate_verdict(*self.c.verdict([word])))

    def numgen(self) -> None:
        self.exprs += self.c.numgen_vmap(self.tokens, self.i, self.text)
        self.i = len(self.tokens) if "comment" not in self.tokens else self.tokens.index("comment")

    def update(self) -> None:
        """`update @set { ip saddr }`: the affinity sets of kube-proxy's layout."""
        _, set_ref, brace, fam, field, close = self.take(6)
        if (brace, fam, field, close) != ("{", self.c.family, "saddr", "}") or not set_ref.startswith("@"):
            raise Unsupported(self.text)
        self.exprs += [payload(1, self.c.saddr_off, self.c.addr_len),
                       expr("dynset", string(1, set_ref[1:]), u32(3, 1), u32(4, REG_1))]

    def dnat(self) -> None:
        _, to, target = self.take(3)
        m = re.fullmatch(r"\[?([0-9a-fA-F.:]+?)\]?:(\d+)", target) if to == "to" else None
        if not m:
            raise Unsupported(self.text)
        self.exprs += [immediate_value(REG_1, self.c.address(m.group(1))),
                       immediate_value(REG_2, struct.pack("!H", int(m.group(2)))), self.c.nat]

    def mark(self) -> None:
        """`mark set mark or 0x4000`: kube-proxy 1.36's inline masquerade request."""
        m = MARK_OR.fullmatch(" ".join(self.take(5)))
        if not m:
            raise Unsupported(self.text)
        bit = int(m.group(1), 0)
        self.exprs += [expr("meta", u32(2, META_MARK), u32(1, REG_1)),
                       expr("bitwise", u32(1, REG_1), u32(2, REG_1), u32(3, 4),
                            nest(4, attr(1, struct.pack("=I", 0xFFFFFFFF ^ bit))),
                            nest(5, attr(1, struct.pack("=I", bit)))),
                       expr("meta", u32(2, META_MARK), u32(3, REG_1))]

    def comment(self) -> None:
        _, quoted = self.take(2)
        self.user = comment_udata(quoted.strip('"'))

    STATEMENTS: ClassVar[dict[str, Callable[[_RuleText], None]]] = {
        "fib": fib, "iifname": iifname, "ct": ct, "jump": jump, "goto": jump, "drop": final, "accept": final,
        "return": final, "numgen": numgen, "update": update, "dnat": dnat, "comment": comment, "mark": mark,
    }


_MOD_1000000 = struct.pack("<I", 1_000_000)  # the modulus in _TYPEOF_IP_TCP (host byte order)


def set_comment_udata(text: str) -> bytes:
    """A set's comment, as nft appends it to the set's userdata (NFTNL_UDATA_SET_COMMENT)."""
    data = text.encode() + b"\0"
    return bytes([7, len(data)]) + data


@lru_cache(maxsize=16)
def typeof_udata(family: str, proto: str, template: bytes = _TYPEOF_IP_TCP, modulus: int = 1_000_000) -> bytes:
    """nft's typeof description for this family and protocol (and an endpoint map's numgen
    modulus), from the IPv4/TCP template."""
    data = template.replace(_MOD_1000000, struct.pack("<I", modulus)) if modulus != 1_000_000 else template
    if family == "ip6":
        data = data.replace(bytes.fromhex("0c00040c00000001040c"), bytes.fromhex("0c00040d000000010409"))
    i = data.rindex(bytes.fromhex("0c000408"))
    return data[:i] + bytes([0x0C, 0, 4, {"tcp": 8, "udp": 6, "sctp": 10}[proto]]) + data[i + 4:]


def encode(family: str, table: str, commands: Iterable[Command], anon_prefix: str = "") -> list[tuple[int, int, bytes]]:
    """The commands' netlink messages (Unsupported where only nft can encode one)."""
    c = Compiler(family, table, anon_prefix)
    for command in commands:
        c.command(command)
    return c.messages
