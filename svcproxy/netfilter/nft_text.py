"""Read `nft list ruleset` text (or `nft -f` input) into the same document `nft -j` prints.

Only the structure is parsed here (tables, chains, sets, maps); nft_rule reads each rule's
expressions into libnftables' JSON schema; svcproxy.netfilter.nftables turns that document
into rules, so the text and the JSON input share one code path. Rules keep their line and text.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from .core import TraceError
from .nft_rule import RuleText, scalar, unquote

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\n|[{};,]|[^\s{};,"]+')
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")


class Tokens:
    """The text as (token, line) pairs, newlines kept: they end rules."""

    def __init__(self, text: str, first_line: int = 1, lines: list[str] | None = None) -> None:
        self.items: list[tuple[str, int]] = []
        self.lines = lines if lines is not None else text.splitlines()
        line = first_line
        for m in _TOKEN.finditer(text):
            tok = m.group(0)
            if tok == "\n":
                self.items.append((tok, line))
                line += 1
            elif not tok.startswith("#"):
                self.items.append((tok, line))
        self.pos = 0

    def peek(self, skip_newlines: bool = True) -> str | None:
        if skip_newlines:
            while self.pos < len(self.items) and self.items[self.pos][0] == "\n":
                self.pos += 1
        return self.items[self.pos][0] if self.pos < len(self.items) else None

    def line(self) -> int:
        return self.items[min(self.pos, len(self.items) - 1)][1] if self.items else 0

    def take(self, what: str = "more input") -> str:
        tok = self.peek()
        if tok is None:
            raise TraceError(f"unexpected end of input: expected {what} (is a '}}' missing?)")
        self.pos += 1
        return tok

    def expect(self, tok: str) -> None:
        line = self.line()
        got = self.take(repr(tok))
        if got != tok:
            raise TraceError(f"expected {tok!r}, found {got!r}", line, self.text(line))

    def text(self, line: int) -> str:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else ""

    def until_eol(self) -> list[str]:
        """The tokens up to the end of the line (a rule), braces may span lines; ';' ends too."""
        out: list[str] = []
        depth = 0
        while self.pos < len(self.items):
            tok = self.items[self.pos][0]
            if tok == "\n" and depth == 0 and out:
                break
            if tok in (";", "}") and depth == 0:
                break
            self.pos += 1
            if tok == "\n":
                continue
            depth += tok == "{"
            depth -= tok == "}"
            out.append(tok)
        return out

    def skip_block(self) -> None:
        depth = 0
        while True:
            tok = self.take("'}'")
            if tok == "{":
                depth += 1
            elif tok == "}":
                depth -= 1
                if depth == 0:
                    return


def parse_nft_document(text: str, lazy: bool = False) -> dict[str, Any]:
    """`nft list ruleset` text -> {"nftables": [table, set, map, chain, rule objects]}.

    lazy: a first pass only finds the tables and the chain/set/map blocks (by their braces,
    line by line); a regular chain's rules and a set's elements are parsed when first needed
    ("_rules" / "_thunk" callables in the document). Base chains are parsed at once.
    """
    lines = text.split("\n")
    out: list[dict[str, Any]] = []
    depth, i, n = 0, 0, len(lines)
    family = table = ""
    while i < n:
        s = lines[i].strip()
        if not s or s[0] == "#":
            i += 1
            continue
        opens, closes = _braces(s)
        if depth == 0:
            words = s.split()
            if words[0] in ("flush", "delete", "destroy"):
                i += 1
                continue
            if words[0] in ("add", "create"):
                words = words[1:]
            if not words or words[0] != "table" or len(words) < 2:
                raise TraceError(f"expected 'table FAMILY NAME {{', found {s!r}", i + 1, lines[i])
            family, table = (words[1], words[2]) if words[1] in FAMILIES and len(words) > 2 else ("ip", words[1])
            table = unquote(table.rstrip("{").strip())
            out.append({"table": {"family": family, "name": table}})
            if opens and opens == closes:  # a table on one line: the token parser does it all
                t = Tokens(s, i + 1, lines)
                for _ in range(3 if words[1] in FAMILIES else 2):  # table [FAMILY] NAME
                    t.take()
                _table_body(t, family, table, out)
            depth = opens - closes
            i += 1
            continue
        if depth == 1 and s == "}":
            depth = 0
            i += 1
            continue
        kind = s.split(None, 1)[0]
        j, d = i, depth + opens - closes
        while d > depth and j + 1 < n:  # the block's last line
            j += 1
            o, c = _braces(lines[j].strip())
            d += o - c
        if d > depth:
            raise TraceError(f"{kind} block is not closed with '}}'", i + 1, lines[i])
        if depth == 1 and kind in ("chain", "set", "map"):
            _block(kind, family, table, lines, i, j, lazy, out)
        elif depth == 1 and kind not in ("comment", "flags") and opens == 0:
            raise TraceError(f"unexpected {kind!r} in table {family} {table}", i + 1, lines[i])
        depth = d
        i = j + 1
    if depth > 0:
        raise TraceError(f"table {family} {table} is not closed with '}}'")
    return {"nftables": out}


_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _braces(line: str) -> tuple[int, int]:
    """How many { and } a line opens and closes, outside strings and comments."""
    if '"' in line:
        line = _STRING.sub('""', line)
    if "#" in line:
        line = line.split("#", 1)[0]
    return line.count("{"), line.count("}")


def _tokens(lines: list[str], i: int, j: int) -> tuple[Tokens, str]:
    """Tokens of the block on lines i..j, past its keyword and name; and the name."""
    t = Tokens("\n".join(lines[i:j + 1]), i + 1, lines)
    t.take()
    return t, unquote(t.take("a name"))


def _chain_rules(lines: list[str], family: str, table: str, i: int, j: int) -> list[dict[str, Any]]:
    t, name = _tokens(lines, i, j)
    found: list[dict[str, Any]] = []
    _chain(t, family, table, name, i + 1, found)
    return [o["rule"] for o in found if "rule" in o]


def _set_body(lines: list[str], family: str, table: str, i: int, j: int, is_map: bool) -> dict[str, Any]:
    fast = _fast_set(lines, i, j, is_map)
    if fast is not None:
        return fast
    t, name = _tokens(lines, i, j)
    return _set(t, family, table, name, is_map, i + 1)


def _block(kind: str, family: str, table: str, lines: list[str], i: int, j: int, lazy: bool,
           out: list[dict[str, Any]]) -> None:
    """A chain/set/map block on lines i..j (0-based): parsed now, or described with a thunk."""
    if not lazy:
        t, name = _tokens(lines, i, j)
        if kind == "chain":
            _chain(t, family, table, name, i + 1, out)
        else:
            out.append({kind: _set(t, family, table, name, kind == "map", i + 1)})
        return
    first = lines[i].split(None, 2)
    name = first[1] if len(first) > 1 and '"' not in first[1] else _tokens(lines, i, j)[1]
    if kind == "chain":
        for k in range(i, min(i + 4, j + 1)):
            if "hook" in lines[k]:  # a base chain: read it now, its hook is needed up front
                t, name = _tokens(lines, i, j)
                _chain(t, family, table, name, i + 1, out)
                return
        out.append({"chain": {"family": family, "table": table, "name": name, "_line": i + 1,
                              "_rules": partial(_chain_rules, lines, family, table, i, j)}})
        return
    flags: list[str] = []
    for k in range(i, j + 1):  # flags decide whether the set is filled by packets (affinity)
        w = lines[k].strip()
        if w.startswith("flags "):
            flags = [f.strip() for f in w[6:].rstrip(";").split(",")]
        elif w.startswith("elements"):
            break
    out.append({kind: {"family": family, "table": table, "name": name, "_line": i + 1, "flags": flags,
                       "_thunk": partial(_set_body, lines, family, table, i, j, kind == "map")}})


def _table_body(t: Tokens, family: str, table: str, out: list[dict[str, Any]]) -> None:
    t.expect("{")
    while True:
        tok = t.peek()
        line = t.line()
        if tok is None:
            raise TraceError(f"table {family} {table} is not closed with '}}'")
        if tok == "}":
            t.take()
            return
        if tok in (";",):
            t.take()
            continue
        t.take()
        if tok in ("chain", "set", "map"):
            name = unquote(t.take("a name"))
            if tok == "chain":
                _chain(t, family, table, name, line, out)
            else:
                out.append({tok: _set(t, family, table, name, tok == "map", line)})
        elif tok in ("comment", "flags"):
            t.until_eol()
        elif t.peek() == "{" or (t.peek() not in (None, "}") and _next_is_block(t)):
            # flowtable, counter, quota, ct helper ...: nothing a packet walk needs
            while t.peek() != "{":
                t.take()
            t.skip_block()
        else:
            raise TraceError(f"unexpected {tok!r} in table {family} {table}", line, t.text(line))


def _next_is_block(t: Tokens) -> bool:
    i = t.pos
    while i < len(t.items) and t.items[i][0] not in ("\n", "{", "}"):
        i += 1
    return i < len(t.items) and t.items[i][0] == "{"


def _chain(t: Tokens, family: str, table: str, name: str, line: int, out: list[dict[str, Any]]) -> None:
    chain: dict[str, Any] = {"family": family, "table": table, "name": name, "_line": line}
    out.append({"chain": chain})
    if t.peek() != "{":
        return
    t.take()
    while True:
        tok = t.peek()
        if tok is None:
            raise TraceError(f"chain {name} is not closed with '}}'", line, t.text(line))
        if tok == "}":
            t.take()
            return
        if tok == ";":
            t.take()
            continue
        rline = t.line()
        if tok == "type":
            t.take()
            chain["type"] = t.take("a chain type")
            t.expect("hook")
            chain["hook"] = t.take("a hook")
            if t.peek() == "device":
                t.take()
                t.take()
            t.expect("priority")
            chain["prio"] = _priority(t.until_eol(), rline, t.text(rline))
            continue
        if tok == "policy":
            t.take()
            chain["policy"] = t.take("a policy")
            continue
        if tok == "comment" and len(toks := t.until_eol()) == 2:
            continue
        toks = t.until_eol() if tok != "comment" else toks
        if toks:
            out.append({"rule": {"family": family, "table": table, "chain": name,
                                 "expr": RuleText(toks, rline, t.text(rline)).parse(),
                                 "_where": f"line {rline}", "_text": t.text(rline).strip()}})


PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}


def _priority(toks: list[str], line: int, text: str) -> int:
    try:
        base = PRIORITIES[toks[0]] if toks[0] in PRIORITIES else int(toks[0])
        if len(toks) >= 3 and toks[1] in "+-":
            base += int(toks[2]) * (1 if toks[1] == "+" else -1)
        return base
    except (ValueError, IndexError):
        raise TraceError(f"cannot read chain priority {' '.join(toks)!r}", line, text) from None


def _set(t: Tokens, family: str, table: str, name: str, is_map: bool, line: int) -> dict[str, Any]:
    s: dict[str, Any] = {"family": family, "table": table, "name": name, "_line": line}
    t.expect("{")
    while True:
        tok = t.take("'}'")
        if tok == "}":
            return s
        if tok in (";",):
            continue
        toks = t.until_eol()
        if tok in ("type", "typeof"):
            key, _, data = " ".join(toks).partition(" : ")
            types = [x.strip() for x in key.split(" . ")]
            s["type" if tok == "type" else "typeof"] = types[0] if len(types) == 1 else types
            if data:
                s["map"] = data.strip()
        elif tok == "flags":
            s["flags"] = [x for x in toks if x != ","]
        elif tok == "timeout":
            s["timeout"] = " ".join(toks)
        elif tok == "elements":
            toks = toks[1:] if toks and toks[0] == "=" else toks
            rt = RuleText(toks, line, t.text(line))
            s["elem"] = rt.set_body(is_map)["set"] if toks else []
        # comment, size, policy, gc-interval, auto-merge, counter: nothing for the walk


_SIMPLE_VERDICT = re.compile(r"(accept|drop|return|continue|reject)$|(jump|goto) (\S+)$")


def _fast_set(lines: list[str], i: int, j: int, is_map: bool) -> dict[str, Any] | None:
    """The elements of a plain set/map (no quotes, comments, timeouts) read without tokens:
    kube-proxy's 10,000-entry service map in a blink. None: use the full parser."""
    text = "\n".join(lines[i:j + 1])
    head, sep, rest = text.partition("elements = {")
    out: dict[str, Any] = {"elem": []}
    for line in head.splitlines():
        w = line.strip()
        if w.startswith("timeout "):
            out["timeout"] = w[8:].strip()
    if not sep:
        return None if '"' in text or "elements" in text else out
    inner, close, _ = rest.partition("}")
    if not close or '"' in inner or "{" in inner or "timeout" in inner or "expires" in inner or "counter" in inner:
        return None
    elems: list[Any] = []
    for item in inner.split(","):
        item = item.strip()
        if not item:
            continue
        key, colon, value = item.partition(" : ")
        parts = [scalar(p) for p in key.split(" . ")]
        k = parts[0] if len(parts) == 1 else {"concat": parts}
        if not is_map:
            elems.append(k)
            continue
        m = _SIMPLE_VERDICT.match(value.strip())
        if not colon or m is None:
            return None
        elems.append([k, {m.group(1): None} if m.group(1) else {m.group(2): {"target": m.group(3)}}])
    out["elem"] = elems
    return out
