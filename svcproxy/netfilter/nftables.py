"""nftables rulesets (`nft -j list ruleset` JSON, or text via nft_text) -> the tracer's model.

Tables are named "FAMILY NAME" (e.g. "ip kube-proxy"); base chains carry hook, priority and
type; named sets and maps become SetData (one dict lookup for exact keys). A set the packets
fill (flags dynamic/timeout, kube-proxy's affinity sets) is session affinity: a lookup in it
is a RecentCheck and an update records the client (the choice is sticky).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Callable
from typing import Any

from .actions import (
    AffinityDnat,
    Do,
    Log,
    Nat,
    Nop,
    Notrack,
    NumgenDnat,
    NumgenVMap,
    RecentSet,
    RememberEndpoint,
    SetMark,
    VMap,
)
from .core import PROTO_NUMBERS, Chain, Rule, Ruleset, Step, TraceError, Verdict, no_gc
from .matches import INTERFACE_FIELDS, Cmp, InterfaceCmp, RecentCheck, SetData, Unevaluable
from .nft_text import PRIORITIES, parse_nft_document

FAMILY = {"ip": 4, "ip6": 6, "inet": None}
HOOKS = {"prerouting": "PREROUTING", "input": "INPUT", "forward": "FORWARD", "output": "OUTPUT",
         "postrouting": "POSTROUTING"}
# Which value type each field reads (for converting set elements and match values).
FIELD_TYPE = {
    "ip saddr": "ipv4_addr", "ip daddr": "ipv4_addr", "ip6 saddr": "ipv6_addr", "ip6 daddr": "ipv6_addr",
    "l4proto": "inet_proto", "ip protocol": "inet_proto", "ip6 nexthdr": "inet_proto",
    "th sport": "inet_service", "th dport": "inet_service", "tcp sport": "inet_service",
    "tcp dport": "inet_service", "udp sport": "inet_service", "udp dport": "inet_service",
    "sctp sport": "inet_service", "sctp dport": "inet_service", "mark": "mark",
    "iifname": "ifname", "oifname": "ifname", "iif": "ifname", "oif": "ifname",
    "fib daddr type": "fib_addrtype", "fib saddr type": "fib_addrtype", "ct state": "ct_state",
    "ct status": "ct_status", "ct original daddr": "ipv4_addr", "ct original proto-dst": "inet_service",
    "nfproto": "nf_proto", "tcp flags": "tcp_flag", "icmp type": "icmp_type", "icmp code": "icmp_code",
    "icmpv6 type": "icmpv6_type", "icmpv6 code": "icmpv6_code",
}


def parse_nft_json(text: str) -> Ruleset:
    try:
        with no_gc():  # millions of small objects: the collector's passes would take 4/5 of the time
            doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"not valid JSON: {e.msg}", e.lineno) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nftables"), list):
        raise TraceError('nft JSON must be an object with an "nftables" list (the output of nft -j list ruleset)')
    return build(doc, json_input=True)


def parse_nft_text(text: str, lazy: bool = True) -> Ruleset:
    return build(parse_nft_document(text, lazy=lazy), json_input=False)


def build(doc: dict[str, Any], json_input: bool) -> Ruleset:
    with no_gc():
        return _build(doc)


def _build(doc: dict[str, Any]) -> Ruleset:
    rs = Ruleset("nftables")
    rs.factory = _lazy_chain(rs)
    rules: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}  # chain -> (entry, rule body)
    skipped: set[str] = set()
    for n, obj in enumerate(doc["nftables"], 1):
        if not isinstance(obj, dict) or len(obj) != 1:
            raise TraceError("each entry of the nftables list must be one object", where=f"entry {n}")
        (kind, body), = obj.items()
        if kind not in ("chain", "rule", "set", "map"):
            continue  # metainfo, tables, flowtables, counters, quotas: nothing a packet walk needs
        fam = body.get("family", "ip")
        table = f"{fam} {body.get('table')}"
        if fam not in FAMILY:
            skipped.add(table)
            continue
        if kind == "rule":
            lst = rules.get((table, body.get("chain")))
            if lst is None:
                if (table, body.get("chain")) in rs.declared:
                    continue  # a text chain read lazily brings its own rules
                raise TraceError(f"rule for chain {body.get('chain')!r}, which table {table} does not have",
                                 where=_where(n, body), text=_text(body))
            lst.append((n, body))
        elif kind in ("set", "map"):
            rs.sets[(table, body["name"])] = body
            if {"dynamic", "timeout"} & set(_as_list(body.get("flags"))):
                rs.dynamic_sets.add((table, body["name"]))
        elif "hook" not in body:  # a regular chain: built when the walk first enters it
            key = (table, body["name"])
            rs.declared[key] = body if "_rules" in body else (n, body, rules.setdefault(key, []))
        else:
            prio = body.get("prio", 0)
            prio = PRIORITIES.get(prio, 0) if isinstance(prio, str) else int(prio)
            chain = Chain(table, body["name"], FAMILY[fam], hook=HOOKS.get(body["hook"]), priority=prio,
                          policy=str(body.get("policy", "accept")).lower(),
                          kind="nat" if body.get("type") == "nat" else "filter", where=_chain_where(n, body))
            rs.add(chain)
            rules[(table, body["name"])] = []
    for key, lst in rules.items():
        chain = rs.chains.get(key)
        if chain is not None:
            chain.size = len(lst)
            chain.parse = _parser(rs, chain, lst)
    rs.notes = [f"table {t}: not on the IP path, not traced" for t in sorted(skipped)]
    return rs


def _chain_where(n: int, body: dict[str, Any]) -> str:
    return f"line {body['_line']}" if "_line" in body else f"entry {n} (chain {body['name']})"


def _where(n: int, body: dict[str, Any]) -> str:
    return body.get("_where") or f"entry {n} (chain {body.get('chain')}, handle {body.get('handle', '?')})"


def _text(body: dict[str, Any]) -> str:
    """The rule as written (text input) or a summary of its expressions (JSON input)."""
    return body.get("_text") or _summary(body.get("expr", []))


def _lazy_chain(rs: Ruleset) -> Callable[[tuple[str, str], Any], Chain]:
    """Build a regular chain when the walk first enters it (text: parse its block now)."""
    def make(key: tuple[str, str], declared: Any) -> Chain:
        table, name = key
        if isinstance(declared, tuple):  # JSON: (entry, chain body, its rules)
            n, body, lst = declared
        else:  # text: the chain body carries a parser for its block
            n, body = 0, declared
            lst = [(0, r) for r in body["_rules"]()]
        chain = Chain(table, name, FAMILY[table.split(" ", 1)[0]], where=_chain_where(n, body), size=len(lst))
        chain.parse = _parser(rs, chain, lst)
        return chain
    return make


def _summary(expr: list[Any]) -> str:
    return json.dumps(expr, separators=(",", ":"))[:200]


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [] if v is None else [v]


def _parser(rs: Ruleset, chain: Chain, lst: list[tuple[int, dict[str, Any]]]) -> Callable[[int], Rule]:
    def parse(i: int) -> Rule:
        n, body = lst[i]
        rule = Rule(_where(n, body), _text(body), (), chain.table, chain.name)
        rule.steps = tuple(Compiler(rs, chain.table, rule).steps(body.get("expr", [])))
        return rule
    return parse


class Compiler:
    """One rule's JSON expressions -> steps."""

    def __init__(self, rs: Ruleset, table: str, rule: Rule) -> None:
        self.rs, self.table, self.rule = rs, table, rule

    def fail(self, message: str) -> TraceError:
        return TraceError(message, where=self.rule.where, text=self.rule.text)

    def steps(self, exprs: list[Any]) -> list[Step]:
        return [self.step(e) for e in exprs]

    def step(self, e: Any) -> Step:
        if isinstance(e, str):  # nft -j has no JSON for `update @m { k : v }` and prints the text
            m = re.fullmatch(r"(?:update|add) @(\S+) \{ .+ : .+ \}", e)
            if m:
                return RememberEndpoint(m.group(1))
        if not isinstance(e, dict) or len(e) != 1:
            raise self.fail(f"cannot read expression {e!r}")
        (kind, body), = e.items()
        if kind in ("accept", "drop", "return", "continue"):
            return Do(Verdict(kind))
        if kind == "reject":
            return Do(Verdict("reject"))
        if kind in ("jump", "goto"):
            return Do(Verdict(kind, body["target"]))
        if kind in ("counter", "comment"):
            return Nop()
        if kind == "match":
            return self.match(body)
        if kind == "vmap":
            return self.vmap(body)
        if kind in ("dnat", "snat", "masquerade", "redirect"):
            return self.nat(kind, body or {})
        if kind == "mangle":
            return self.mangle(body)
        if kind == "log":
            return Log((body or {}).get("prefix", ""))
        if kind == "notrack":
            return Notrack()
        if kind == "map" and isinstance(body, dict) and body.get("op") in ("add", "update"):
            return RememberEndpoint(str(body["map"]).lstrip("@"))  # update @m { ip saddr : ip daddr }
        if kind == "set" and isinstance(body, dict) and body.get("op") in ("add", "update"):
            name = str(body["set"]).lstrip("@")
            elem = body.get("elem")
            timeout = elem.get("elem", {}).get("timeout", "") if isinstance(elem, dict) else ""
            decl = self.rs.sets.get((self.table, name), {})
            if not timeout and "_thunk" in decl:
                decl.update(decl.pop("_thunk")())
            return RecentSet(name, str(timeout or decl.get("timeout", "")))
        if kind == "limit":
            return Unevaluable("limit (rate) is taken as not exceeded", True)
        if kind == "xt":
            return Unevaluable(f"iptables extension {body.get('name', '?') if isinstance(body, dict) else body} "
                               "(xt, from iptables-nft) cannot be evaluated", True)
        raise self.fail(f"unknown statement {kind!r}: the tracer cannot evaluate it")

    # -- fields and values -----------------------------------------------------------------
    def fields(self, left: Any) -> tuple[tuple[str, ...], tuple[int | None, ...]]:
        parts = left["concat"] if isinstance(left, dict) and "concat" in left else [left]
        names, masks = [], []
        for p in parts:
            mask = None
            if isinstance(p, dict) and "&" in p:
                p, mask = p["&"]
                mask = int(mask, 0) if isinstance(mask, str) else int(mask)
            names.append(self.field(p))
            masks.append(mask)
        return tuple(names), tuple(masks)

    def field(self, p: Any) -> str:
        if isinstance(p, dict):
            if "payload" in p:
                pl = p["payload"]
                name = f"{pl.get('protocol')} {pl.get('field')}"
                if name in FIELD_TYPE:
                    return name
            elif "meta" in p:
                key = p["meta"]["key"]
                if key in FIELD_TYPE:
                    return key
            elif "fib" in p:
                flags = _as_list(p["fib"].get("flags"))
                if p["fib"].get("result") == "type" and flags and flags[0] in ("daddr", "saddr"):
                    return f"fib {flags[0]} type"
            elif "ct" in p and p["ct"].get("key") in ("state", "status") and "dir" not in p["ct"]:
                return f"ct {p['ct']['key']}"
            elif "ct" in p and p["ct"].get("dir") == "original":
                key = str(p["ct"].get("key", "")).split()[-1]  # "ip daddr" -> daddr
                if key in ("daddr", "proto-dst"):
                    return f"ct original {key}"
        raise self.fail(f"unknown match on {json.dumps(p)}: the tracer cannot evaluate it")

    def convert(self, ftype: str, v: Any) -> object:
        """A value of a field's type -> int, str or (lo, hi)."""
        try:
            if isinstance(v, dict) and "prefix" in v:
                net = ipaddress.ip_network(f"{v['prefix']['addr']}/{v['prefix']['len']}", strict=False)
                return int(net.network_address), int(net.broadcast_address)
            if isinstance(v, dict) and "range" in v:
                lo, hi = (self.convert(ftype, x) for x in v["range"])
                return lo, hi
            if ftype in ("ipv4_addr", "ipv6_addr"):
                try:
                    return int.from_bytes(socket.inet_pton(socket.AF_INET6 if ":" in v else socket.AF_INET, v), "big")
                except (OSError, TypeError):
                    return int(ipaddress.ip_address(v))
            if ftype == "inet_proto":
                return v if isinstance(v, int) else PROTO_NUMBERS[str(v)]
            if ftype == "inet_service":
                return v if isinstance(v, int) else int(v) if str(v).isdigit() else socket.getservbyname(str(v))
            if ftype in ("mark", "integer_num") or isinstance(v, int):
                return int(v, 0) if isinstance(v, str) else int(v)
            return str(v)
        except (ValueError, KeyError, OSError, TypeError):
            raise self.fail(f"{v!r} is not a valid {ftype} value") from None

    def element(self, types: tuple[str, ...], v: Any) -> tuple[object, ...]:
        if isinstance(v, dict) and "elem" in v:
            v = v["elem"]["val"]
        parts = v["concat"] if isinstance(v, dict) and "concat" in v else [v]
        if len(parts) != len(types):
            raise self.fail(f"element {json.dumps(v)} has {len(parts)} parts; the key has {len(types)}")
        return tuple(self.convert(t, x) for t, x in zip(types, parts, strict=True))

    def verdict(self, v: Any) -> Verdict:
        if isinstance(v, dict) and len(v) == 1:
            (k, b), = v.items()
            if k in ("accept", "drop", "return", "continue", "reject"):
                return Verdict(k)
            if k in ("jump", "goto"):
                return Verdict(k, b["target"])
        raise self.fail(f"{v!r} is not a verdict")

    def set_data(self, types: tuple[str, ...], right: Any, is_map: bool) -> SetData | Callable[[], SetData]:
        if isinstance(right, str) and right.startswith("@"):
            name = right[1:]
            decl = self.rs.sets.get((self.table, name))
            if decl is None:
                raise self.fail(f"set {name!r} is not declared in table {self.table}")

            def resolve() -> SetData:
                if "_thunk" in decl:  # a set the text parser has not read yet
                    decl.update(decl.pop("_thunk")())
                cached = decl.get("_data")
                if cached is None:
                    cached = decl["_data"] = self.elements(types, _as_list(decl.get("elem")), is_map, name)
                return cached
            return resolve
        if isinstance(right, dict) and "set" in right:
            return self.elements(types, _as_list(right["set"]), is_map, "")
        if isinstance(right, list):  # flags: ct state established,related
            return SetData([self.element(types, x) for x in right])
        return SetData([self.element(types, right)])

    def elements(self, types: tuple[str, ...], elems: list[Any], is_map: bool, name: str) -> SetData:
        if is_map:
            keys = [self.element(types, k) for k, _ in elems]
            return SetData(keys, [self.verdict(v) for _, v in elems], name)
        return SetData([self.element(types, x) for x in elems], None, name)

    # -- expressions -----------------------------------------------------------------------
    def match(self, body: dict[str, Any]) -> Step:
        op, left, right = body.get("op", "=="), body["left"], body["right"]
        names, masks = self.fields(left)
        types = tuple(FIELD_TYPE[n] for n in names)
        if isinstance(right, str) and right.startswith("@") and (self.table, right[1:]) in self.rs.dynamic_sets:
            return RecentCheck(right[1:], negate=op == "!=")
        if op in ("<", ">", "<=", ">="):
            if len(names) != 1:
                raise self.fail(f"{op} on a concatenation cannot be evaluated")
            v = self.convert(types[0], right)
            if not isinstance(v, int):
                raise self.fail(f"{op} needs a number")
            top = (1 << 128) - 1
            lo, hi = {"<": (0, v - 1), "<=": (0, v), ">": (v + 1, top), ">=": (v, top)}[op]
            return Cmp(names, masks, SetData([((lo, hi),)]))
        if op not in ("==", "!=", "in"):
            raise self.fail(f"unknown operator {op!r}")
        data = self.set_data(types, right, False)
        cls = InterfaceCmp if INTERFACE_FIELDS & set(names) else Cmp
        if callable(data):
            return cls(names, masks, None, data, negate=op == "!=")
        return cls(names, masks, data, negate=op == "!=")

    def vmap(self, body: dict[str, Any]) -> Step:
        key, data = body["key"], body["data"]
        if isinstance(key, dict) and "numgen" in key:
            ng = key["numgen"]
            if ng.get("mode") != "random":
                return Unevaluable(f"numgen {ng.get('mode')} (a counter) is not modelled", False)
            sd = self.set_data(("integer_num",), data, True)
            sd = sd() if callable(sd) else sd
            return NumgenVMap(int(ng["mod"]), _offset(ng), sd)
        names, masks = self.fields(key)
        types = tuple(FIELD_TYPE[n] for n in names)
        sd = self.set_data(types, data, True)
        cmp = Cmp(names, masks, None, sd) if callable(sd) else Cmp(names, masks, sd)
        return VMap(cmp)

    def nat(self, kind: str, body: dict[str, Any]) -> Step:
        if kind == "masquerade":
            return Nat("masquerade")
        addr = body.get("addr")
        if kind == "dnat" and isinstance(addr, dict) and "numgen" in addr.get("map", {}).get("key", {}):
            return self.numgen_dnat(addr["map"])
        if kind == "dnat" and isinstance(addr, dict) and "payload" in addr.get("map", {}).get("key", {}):
            data = str(addr["map"].get("data", ""))
            port = body.get("port")
            return AffinityDnat(data.lstrip("@"), int(port) if port is not None else None)
        if addr is not None and not isinstance(addr, str):
            raise self.fail(f"{kind} to a computed address ({json.dumps(addr)}) is not supported by the tracer")
        port = body.get("port")
        if port is not None and not isinstance(port, int):
            if isinstance(port, str) and port.isdigit():
                port = int(port)
            else:
                raise self.fail(f"{kind} to a computed port is not supported by the tracer")
        try:
            value = int(ipaddress.ip_address(addr)) if addr else None
        except ValueError:
            raise self.fail(f"{addr!r} is not an address") from None
        return Nat("dnat" if kind == "redirect" else kind, 0, value, port)

    def numgen_dnat(self, body: dict[str, Any]) -> Step:
        """`dnat to numgen random mod N map @m`: m maps numgen ranges to address . port."""
        ng, data = body["key"]["numgen"], body["data"]
        if ng.get("mode") != "random":
            return Unevaluable(f"numgen {ng.get('mode')} (a counter) is not modelled", False)
        if isinstance(data, str) and data.startswith("@"):
            decl = self.rs.sets.get((self.table, data[1:]))
            if decl is None:
                raise self.fail(f"map {data[1:]!r} is not declared in table {self.table}")
            if "_thunk" in decl:
                decl.update(decl.pop("_thunk")())
            elems, name = _as_list(decl.get("elem")), data[1:]
        else:
            elems, name = _as_list(data.get("set") if isinstance(data, dict) else data), ""
        choices: list[tuple[int, int, int, int]] = []
        for key, value in elems:
            lo, hi = _span(self.element(("integer_num",), key)[0])  # (unwraps an element with a comment)
            parts = value["concat"] if isinstance(value, dict) and "concat" in value else [value]
            if len(parts) != 2:
                raise self.fail(f"map {name or 'in the rule'}: {json.dumps(value)} is not an address . port")
            choices.append((lo, hi, int(ipaddress.ip_address(parts[0])), int(self.convert("inet_service", parts[1]))))
        return NumgenDnat(int(ng["mod"]), _offset(ng), tuple(sorted(choices)), name)

    def mangle(self, body: dict[str, Any]) -> Step:
        key = body["key"]
        if not (isinstance(key, dict) and key.get("meta", {}).get("key") == "mark"):
            return Unevaluable(f"setting {json.dumps(key)} is not modelled", True)
        fn = self.mark_fn(body["value"])
        return SetMark(fn, self.rule.text if len(self.rule.text) < 60 else "mark set")

    def mark_fn(self, v: Any) -> Callable[[int], int]:
        if isinstance(v, int | str) and not (isinstance(v, str) and not v.startswith("0x") and not v.isdigit()):
            val = int(v, 0) if isinstance(v, str) else v
            return lambda m: val
        if isinstance(v, dict) and v.get("meta", {}).get("key") == "mark":
            return lambda m: m
        if isinstance(v, dict) and len(v) == 1:
            (op, (a, b)), = v.items()
            fa, fb = self.mark_fn(a), self.mark_fn(b)
            ops = {"|": lambda x, y: x | y, "&": lambda x, y: x & y, "^": lambda x, y: x ^ y}
            if op in ops:
                f = ops[op]
                return lambda m: f(fa(m), fb(m))
        raise self.fail(f"cannot evaluate mark expression {json.dumps(v)}")


def _span(v: object) -> tuple[int, int]:
    if isinstance(v, tuple):
        return int(v[0]), int(v[1])  # type: ignore[call-overload]
    return int(v), int(v)  # type: ignore[call-overload]


def _offset(numgen: dict[str, Any]) -> int:
    """numgen's offset; nft 1.0.6's JSON prints offsets of 2**31 and above as negative numbers."""
    return int(numgen.get("offset", 0)) % 2**32
