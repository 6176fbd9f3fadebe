"""One nftables rule, as text, into libnftables' JSON expressions (what `nft -j` prints).

    ip daddr . meta l4proto . th dport vmap @service-ips
 -> {"vmap": {"key": {"concat": [ip daddr, meta l4proto, th dport]}, "data": "@service-ips"}}
"""

from __future__ import annotations

import re
from typing import Any

from .core import TraceError

SELECTOR_FIELDS = {
    "ip": ("saddr", "daddr", "protocol", "dscp", "ttl", "length"),
    "ip6": ("saddr", "daddr", "nexthdr", "hoplimit", "length"),
    "tcp": ("sport", "dport", "flags"), "udp": ("sport", "dport"), "sctp": ("sport", "dport"),
    "th": ("sport", "dport"), "udplite": ("sport", "dport"), "dccp": ("sport", "dport"),
    "icmp": ("type", "code"), "icmpv6": ("type", "code"),
}
META_KEYS = ("l4proto", "mark", "iifname", "oifname", "iif", "oif", "nfproto", "protocol", "pkttype",
             "skuid", "skgid", "iiftype", "oiftype", "length", "priority")
BARE_META = ("mark", "iifname", "oifname", "iif", "oif", "l4proto", "nfproto", "pkttype", "skuid", "skgid")
RELOPS = {"==": "==", "eq": "==", "!=": "!=", "ne": "!=", "<": "<", "lt": "<", ">": ">", "gt": ">",
          "<=": "<=", "le": "<=", ">=": ">=", "ge": ">="}
BINOPS = {"&": "&", "and": "&", "|": "|", "or": "|", "^": "^", "xor": "^"}
VERDICTS = ("accept", "drop", "continue", "return")


def unquote(tok: str) -> str:
    return tok[1:-1].replace('\\"', '"') if tok.startswith('"') else tok


class RuleText:
    """One rule's tokens -> a list of JSON expressions (libnftables' schema)."""

    def __init__(self, toks: list[str], line: int, text: str) -> None:
        self.toks, self.i, self.line, self.text = toks, 0, line, text

    def fail(self, message: str) -> TraceError:
        return TraceError(message, self.line, self.text)

    def peek(self, k: int = 0) -> str | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def take(self, what: str = "more") -> str:
        tok = self.peek()
        if tok is None:
            raise self.fail(f"the rule ends early: expected {what}")
        self.i += 1
        return tok

    def parse(self) -> list[dict[str, Any]]:
        exprs: list[dict[str, Any]] = []
        while self.peek() is not None:
            exprs.append(self.statement())
        return [e for e in exprs if e]

    # -- statements ---------------------------------------------------------------------
    def statement(self) -> dict[str, Any]:
        tok = self.peek()
        assert tok is not None
        if tok in VERDICTS:
            self.take()
            return {tok: None}
        if tok in ("jump", "goto"):
            self.take()
            return {tok: {"target": unquote(self.take("a chain name"))}}
        if tok == "counter":
            self.take()
            while self.peek() in ("packets", "bytes"):
                self.take()
                self.take("a number")
            return {"counter": None}
        if tok == "comment":
            self.take()
            self.take("a comment")
            return {}
        if tok == "reject":
            self.take()
            if self.peek() == "with":
                self.take()
                kind = self.take("a reject type")
                if kind == "tcp":
                    self.take("reset")
                    return {"reject": {"type": "tcp reset"}}
                if self.peek() == "type":
                    self.take()
                return {"reject": {"type": kind, "expr": self.take("a reject code")}}
            return {"reject": None}
        if tok in ("masquerade", "snat", "dnat", "redirect"):
            return self.nat()
        if tok == "log":
            self.take()
            opts: dict[str, Any] = {}
            while self.peek() in ("prefix", "level", "group", "snaplen", "queue-threshold", "flags"):
                key = self.take()
                opts[key] = unquote(self.take("a value"))
            return {"log": opts or None}
        if tok == "xt" and self.peek(1) in ("match", "target"):  # iptables-nft's extensions
            self.take()
            kind = self.take()
            return {"xt": {"type": kind, "name": unquote(self.take("an extension name"))}}
        if tok == "notrack":
            self.take()
            return {"notrack": None}
        if tok in ("update", "add") and (self.peek(1) or "").startswith("@"):
            self.take()
            name = self.take()
            self.expect_tok("{")
            elem = self.concat()
            if self.peek() == ":":  # a map: update @m { ip saddr : ip daddr } (as nft -j: a map statement)
                self.take()
                data = self.concat()
                self.expect_tok("}")
                return {"map": {"op": tok, "elem": elem, "data": data, "map": name}}
            timeout = None
            if self.peek() == "timeout":
                self.take()
                timeout = self.take("a timeout")
            self.expect_tok("}")
            out: dict[str, Any] = {"op": tok, "elem": elem, "set": name}
            if timeout:
                out["elem"] = {"elem": {"val": elem, "timeout": timeout}}
            return {"set": out}
        if tok == "limit":
            words = []
            while self.peek() is not None and self.peek() not in VERDICTS + ("counter", "jump", "goto", "log"):
                words.append(self.take())
            return {"limit": {"text": " ".join(words[1:])}}
        if tok in ("meta", "ct") and self.peek(2) == "set" or tok == "mark" and self.peek(1) == "set":
            key = self.selector()
            self.take()  # set
            return {"mangle": {"key": key, "value": self.value_expr()}}
        return self.match()

    def expect_tok(self, tok: str) -> None:
        got = self.take(repr(tok))
        if got != tok:
            raise self.fail(f"expected {tok!r}, found {got!r}")

    def nat(self) -> dict[str, Any]:
        kind = self.take()
        out: dict[str, Any] = {}
        if self.peek() in ("ip", "ip6") and kind != "masquerade":
            out["family"] = self.take()
            if [self.peek(), self.peek(1), self.peek(2)] == ["addr", ".", "port"]:
                self.i += 3  # dnat ip addr . port to ... (kube-proxy's input; nft lists `dnat ip to`)
        if kind in ("snat", "dnat", "redirect") and self.peek() == "to":
            self.take()
            if self.peek() in ("ip", "ip6") and self.peek(1) == "saddr" and self.peek(2) == "map":
                # dnat to ip saddr map @m : port (the maps layout's ClientIP affinity)
                key = self.selector()
                self.take()
                out["addr"] = {"map": {"key": key, "data": self.take("a map")}}
                if self.peek() == ":":
                    self.take()
                    out["port"] = int(self.take("a port"))
                return {kind: out}
            if self.peek() == "numgen":  # dnat to numgen random mod N map @m / map { i : addr . port }
                key = self.selector()
                self.expect_tok("map")
                out["addr"] = {"map": {"key": key, "data": self.rhs(is_map=True)}}
                return {kind: out}
            target = self.take("an address")
            if self.peek() == "map":
                raise self.fail(f"{kind} to a map lookup is not supported by the tracer")
            addr, port = split_host_port(target)
            if addr:
                out["addr"] = addr
            if port:
                out["port"] = int(port) if port.isdigit() else port
        flags = []
        while self.peek() in ("random", "fully-random", "persistent", ","):
            tok = self.take()
            if tok != ",":
                flags.append(tok)
        if flags:
            out["flags"] = flags if len(flags) > 1 else flags[0]
        return {kind: out or None}

    # -- matches -------------------------------------------------------------------------
    def match(self) -> dict[str, Any]:
        left = self.concat()
        op = "=="
        tok = self.peek()
        if tok == "vmap":
            self.take()
            return {"vmap": {"key": left, "data": self.rhs(is_map=True)}}
        if tok == "map":
            raise self.fail("map lookups outside dnat/vmap are not supported by the tracer")
        if tok in RELOPS:
            op = RELOPS[self.take()]
        if self.peek() is None:
            raise self.fail("a match without a value")
        right = self.rhs()
        if op == "==" and isinstance(left, dict) and "ct" in left:
            op = "in"
        return {"match": {"op": op, "left": left, "right": right}}

    def concat(self) -> Any:
        parts = [self.operand()]
        while self.peek() == ".":
            self.take()
            parts.append(self.operand())
        return parts[0] if len(parts) == 1 else {"concat": parts}

    def operand(self) -> Any:
        expr = self.selector()
        while self.peek() in BINOPS:
            op = BINOPS[self.take()]
            expr = {op: [expr, scalar(self.take("a value"))]}
        return expr

    def selector(self) -> Any:
        tok = self.take("a selector")
        nxt = self.peek()
        if tok in SELECTOR_FIELDS and nxt in SELECTOR_FIELDS[tok]:
            self.take()
            return {"payload": {"protocol": tok, "field": nxt}}
        if tok == "meta" and nxt in META_KEYS:
            self.take()
            return {"meta": {"key": nxt}}
        if tok in BARE_META:
            return {"meta": {"key": tok}}
        if tok == "ct" and nxt in ("original", "reply"):  # ct original ip daddr, ct original proto-dst
            direction = self.take()
            key = self.take("a conntrack key")
            if key in ("ip", "ip6"):
                key = f"{key} {self.take('saddr/daddr')}"
            return {"ct": {"key": key, "dir": direction}}
        if tok == "ct" and nxt is not None:
            self.take()
            return {"ct": {"key": nxt}}
        if tok == "fib":
            flags = [self.take("saddr/daddr")]
            while self.peek() == ".":
                self.take()
                flags.append(self.take())
            result = self.take("a fib result")
            return {"fib": {"result": result, "flags": flags}}
        if tok == "numgen":
            mode = self.take("random/inc")
            self.expect_tok("mod")
            mod = int(self.take("a modulus"))
            offset = 0
            if self.peek() == "offset":
                self.take()
                offset = int(self.take("an offset"))
            return {"numgen": {"mode": mode, "mod": mod, "offset": offset}}
        raise self.fail(f"unknown expression {tok!r}: the tracer cannot evaluate it")

    def value_expr(self) -> Any:
        """The right side of `mark set ...`: a value, or a selector with & | ^ operations."""
        tok = self.peek()
        expr = scalar(self.take("a value")) if tok not in ("meta", "mark", "ct") else self.selector()
        while self.peek() in BINOPS:
            op = BINOPS[self.take()]
            expr = {op: [expr, scalar(self.take("a value"))]}
        return expr

    def rhs(self, is_map: bool = False) -> Any:
        tok = self.peek()
        if tok == "{":
            return self.set_body(is_map)
        if tok is not None and tok.startswith("@"):
            return self.take()
        items = [self.element()]
        while self.peek() == ",":  # flag lists: ct state established,related
            self.take()
            items.append(self.element())
        return items[0] if len(items) == 1 else items

    def element(self) -> Any:
        parts = [scalar(self.take("a value"))]
        while self.peek() == ".":
            self.take()
            parts.append(scalar(self.take("a value")))
        return parts[0] if len(parts) == 1 else {"concat": parts}

    def set_body(self, is_map: bool) -> dict[str, Any]:
        self.expect_tok("{")
        elems: list[Any] = []
        while self.peek() != "}":
            if self.peek() is None:
                raise self.fail("an anonymous set is not closed with '}'")
            if self.peek() == ",":
                self.take()
                continue
            key = self.element()
            extra: dict[str, Any] = {}
            while self.peek() in ("comment", "timeout", "expires", "counter"):
                word = self.take()
                if word == "counter":
                    while self.peek() in ("packets", "bytes"):
                        self.take()
                        self.take()
                    continue
                extra[word] = unquote(self.take())
            if extra:
                key = {"elem": {"val": key, **extra}}
            if is_map:
                if self.take("':'") != ":":
                    raise self.fail("a map element needs 'key : value'")
                value = self.statement() if self.peek() in VERDICTS + ("jump", "goto") else self.element()
                elems.append([key, value])
            else:
                elems.append(key)
        self.take()
        return {"set": elems}


def split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        return host, port.lstrip(":")
    if text.startswith(":"):
        return "", text[1:]
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def scalar(tok: str) -> Any:
    """A value token as nft -j would print it: ints as ints, CIDRs as prefixes, a-b as ranges."""
    if tok.isdigit():
        return int(tok)
    tok = unquote(tok)
    if tok[:1].isdigit() and "/" not in tok and "-" not in tok and not tok.startswith("0x"):
        return tok  # an address, usually
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if re.fullmatch(r"0x[0-9a-fA-F]+", tok):
        return int(tok, 16)
    if "/" in tok and not tok.startswith("@") and tok.rsplit("/", 1)[1].isdigit() and (":" in tok or "." in tok):
        addr, length = tok.rsplit("/", 1)
        return {"prefix": {"addr": addr, "len": int(length)}}
    m = re.fullmatch(r"(\d+)-(\d+)", tok) or re.fullmatch(r"([\d.]+)-([\d.]+)", tok) \
        or re.fullmatch(r"([0-9a-fA-F:]+:[0-9a-fA-F:]*)-([0-9a-fA-F:]+)", tok)
    if m:
        return {"range": [scalar(m.group(1)), scalar(m.group(2))]}
    return tok
