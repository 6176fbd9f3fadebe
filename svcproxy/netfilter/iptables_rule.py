"""One iptables rule (what follows -A CHAIN) into steps: its matches in order, then the target."""

from __future__ import annotations

import ipaddress

from .actions import Do, Log, Nat, Notrack, RecentSet, SetMark, xmark
from .core import PROTO_NUMBERS, Packet, Rule, Ruleset, Step, TraceError, Verdict
from .matches import Cmp, Random, RecentCheck, SetData, Unevaluable, single

TCP_FLAGS = ("SYN", "ACK", "FIN", "RST", "URG", "PSH", "ECE", "CWR")
TCP_FLAGS_SYN = ({"SYN", "RST", "ACK", "FIN"}, {"SYN"})  # --syn is --tcp-flags SYN,RST,ACK,FIN SYN
BUILTIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG",
                   "NOTRACK", "CT", "CONNMARK", "TRACE", "NFLOG", "CHECKSUM", "TCPMSS", "REDIRECT"}


def _net(text: str, rule: Rule) -> tuple[int, int]:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise TraceError(f"{text!r} is not an address or CIDR", where=rule.where, text=rule.text) from None
    return int(net.network_address), int(net.broadcast_address)


def _mask_value(text: str, rule: Rule) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    try:
        return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF
    except ValueError:
        raise TraceError(f"{text!r} is not a mark (value[/mask])", where=rule.where, text=rule.text) from None


def _is_option(tokens: list[str], i: int) -> bool:
    """Whether tokens[i] starts an option (-x, --long, or ! before one), not a word of a comment."""
    tok = tokens[i]
    if tok == "!":
        return i + 1 < len(tokens) and _is_option(tokens, i + 1)
    return len(tok) > 1 and tok[0] == "-" and (tok[1].isalpha() or (tok[1] == "-" and tok[2:3].isalpha()))


class RuleParser:
    """One iptables rule's tokens -> steps (matches in order, then the target)."""

    def __init__(self, rs: Ruleset, table: str, rule: Rule) -> None:
        self.rs, self.table, self.rule = rs, table, rule
        self.tokens: list[str] = []
        self.pos = 0
        self.proto = ""  # the -p protocol, for --dport without -m tcp

    def fail(self, message: str) -> TraceError:
        return TraceError(message, where=self.rule.where, text=self.rule.text)

    def next(self, what: str) -> str:
        if self.pos >= len(self.tokens):
            raise self.fail(f"{self.tokens[self.pos - 1]} needs {what}")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def parse(self, tokens: list[str]) -> list[Step]:
        self.tokens, self.pos = tokens, 0
        steps: list[Step] = []
        module = ""
        modules: set[str] = set()
        target: Step | None = None
        while self.pos < len(tokens):
            tok = self.next("")
            negate = False
            if tok == "!":
                negate = True
                tok = self.next("an option")
            if tok in ("-m", "--match"):
                module = self.next("a match name")
                if module not in MODULES:
                    raise self.fail(f"unknown match -m {module}: the tracer cannot evaluate it "
                                    f"(known: {', '.join(sorted(MODULES))})")
                modules.add(module)
                if module == "statistic":
                    steps.append(self.statistic())
                elif module == "recent":
                    steps.append(self.recent())
                continue
            if tok in ("-j", "--jump", "-g", "--goto"):
                target = self.target(self.next("a target"), goto=tok in ("-g", "--goto"))
                break
            step = self.option(tok, negate, module, modules)
            if step is not None:
                steps.append(step)
        if target is not None:
            steps.append(target)
        return steps

    def option(self, tok: str, negate: bool, module: str, modules: set[str]) -> Step | None:
        if tok in ("-s", "--source", "-d", "--destination"):
            lo_hi = _net(self.next("an address"), self.rule)
            return single(("saddr" if tok in ("-s", "--source") else "daddr",), (lo_hi,), negate)
        if tok in ("-p", "--protocol"):
            name = self.next("a protocol").lower()
            if name == "all" or name == "0":
                return None
            self.proto = name
            num = int(name) if name.isdigit() else PROTO_NUMBERS.get(name)
            if num is None:
                raise self.fail(f"unknown protocol {name!r}")
            return single(("l4proto",), (num,), negate)
        if tok in ("-i", "--in-interface", "-o", "--out-interface"):
            name = self.next("an interface")
            return single(("iifname" if tok in ("-i", "--in-interface") else "oifname",), (name,), negate)
        if tok in ("--dport", "--destination-port", "--sport", "--source-port"):
            proto = module if module in ("tcp", "udp", "sctp") else self.proto
            if proto not in ("tcp", "udp", "sctp"):
                raise self.fail(f"{tok} needs -p tcp, udp or sctp (or -m tcp/udp/sctp) before it")
            field = f"{proto} {'dport' if 'd' in tok[2:4] else 'sport'}"
            return single((field,), (self.port(self.next("a port")),), negate)
        if tok in ("--dports", "--destination-ports", "--sports", "--source-ports", "--ports") and module == "multiport":
            ports = [self.port(p) for p in self.next("ports").split(",")]
            if tok == "--ports":
                a = Cmp(("th dport",), (None,), _set(ports))
                b = Cmp(("th sport",), (None,), _set(ports))
                return Unevaluable("multiport --ports (either port) is not modelled", True) if negate else _Either(a, b)
            field = "th dport" if "d" in tok[2:4] else "th sport"
            return Cmp((field,), (None,), _set(ports), negate=negate)
        if module == "tcp" and tok in ("--syn", "--tcp-flags"):
            # a new connection's first packet carries SYN alone: decide the match now
            if tok == "--syn":
                mask, comp = TCP_FLAGS_SYN
            else:
                mask, comp = self.flags(self.next("a flag mask")), self.flags(self.next("flags"))
            hit = (mask & {"SYN"}) == comp
            return single(("l4proto",), (6 if hit != negate else -1,))
        if module == "tcp" and tok == "--tcp-option":
            self.next("an option number")
            return Unevaluable("tcp --tcp-option (TCP options) is not modelled", True)
        if module == "addrtype" and tok in ("--dst-type", "--src-type"):
            types = [t.lower() for t in self.next("an address type").split(",")]
            field = "fib daddr type" if tok == "--dst-type" else "fib saddr type"
            return Cmp((field,), (None,), _set(types), negate=negate)
        if module == "addrtype" and tok in ("--limit-iface-in", "--limit-iface-out"):
            return Unevaluable(f"addrtype {tok} (per-interface address types) is not modelled", True)
        if module == "mark" and tok == "--mark":
            value, mask = _mask_value(self.next("a mark"), self.rule)
            return single(("mark",), (value & mask,), negate, masks=(mask,))
        if module == "comment" and tok == "--comment":
            self.next("a comment")
            # Docs, blog posts and kube-proxy's test output often print the comment unquoted:
            # its words run up to the next option.
            while self.pos < len(self.tokens) and not _is_option(self.tokens, self.pos):
                self.pos += 1
            return None
        if module in ("conntrack", "state") and tok in ("--ctstate", "--state"):
            states = [s.lower() for s in self.next("states").split(",")]
            return Cmp(("ct state",), (None,), _set(states), negate=negate)
        if module == "conntrack" and tok in ("--ctstatus", "--ctproto", "--ctorigdst", "--ctorigsrc"):
            self.next("a value")
            return Unevaluable(f"conntrack {tok} is not modelled", True)
        if module == "physdev" and tok in ("--physdev-is-in", "--physdev-is-out", "--physdev-is-bridged"):
            return Unevaluable(f"physdev {tok}: bridging is unknown, the packet is taken as not bridged", negate)
        if module == "physdev" and tok in ("--physdev-in", "--physdev-out"):
            self.next("an interface")
            return Unevaluable(f"physdev {tok}: bridging is unknown, the packet is taken as not bridged", negate)
        if module == "limit" and tok in ("--limit", "--limit-burst"):
            self.next("a rate")
            return Unevaluable("limit (rate) is taken as not exceeded", True) if tok == "--limit" else None
        if module == "set" and tok == "--match-set":
            name = self.next("a set name")
            self.next("flags")
            return Unevaluable(f"ipset {name!r} contents are not in iptables-save output", negate)
        if module == "nfacct" and tok == "--nfacct-name":
            self.next("a counter name")
            return None
        if module in ("icmp", "icmp6") and tok in ("--icmp-type", "--icmpv6-type"):
            self.next("a type")
            return single(("l4proto",), (-1,))  # traced packets are TCP/UDP/SCTP
        raise self.fail(f"unknown option {tok}" + (f" for -m {module}" if module else "")
                        + ": the tracer cannot evaluate it")

    def flags(self, text: str) -> set[str]:
        names = {f.upper() for f in text.split(",")}
        if "ALL" in names:
            return set(TCP_FLAGS)
        if names <= {"NONE"}:
            return set()
        if not names <= set(TCP_FLAGS):
            raise self.fail(f"{text!r} is not a TCP flag list (SYN,ACK,FIN,RST,URG,PSH,ALL,NONE)")
        return names

    def port(self, text: str) -> object:
        lo, colon, hi = text.partition(":")
        try:
            return (int(lo or 0), int(hi or 65535)) if colon else int(lo)
        except ValueError:
            raise self.fail(f"{text!r} is not a port") from None

    def options(self) -> dict[str, str | None]:
        """The --flag [value] pairs up to the next -m / -j (for statistic, recent, targets)."""
        out: dict[str, str | None] = {}
        while self.pos < len(self.tokens) and self.tokens[self.pos].startswith("--") \
                and self.tokens[self.pos] not in ("--match", "--jump", "--goto"):
            tok = self.next("")
            val = None
            if self.pos < len(self.tokens) and not self.tokens[self.pos].startswith("-"):
                val = self.next("")
            out[tok] = val
        return out

    def statistic(self) -> Step:
        opts = self.options()
        mode = opts.get("--mode") or "random"
        try:
            if mode == "random":
                return Random(float(opts.get("--probability") or ""), "statistic random")
            if mode == "nth":
                every = int(opts.get("--every") or "")
                return Random(1.0 / every, f"statistic nth every {every} (1 in {every} connections)")
        except (ValueError, ZeroDivisionError):
            pass
        raise self.fail("statistic needs --mode random --probability P or --mode nth --every N")

    def recent(self) -> Step:
        opts = self.options()
        name = opts.get("--name") or "DEFAULT"
        if "--set" in opts:
            secs = ""
            return RecentSet(name, secs)
        if "--rcheck" in opts or "--update" in opts or "--remove" in opts:
            return RecentCheck(name)
        raise self.fail("recent needs --set, --rcheck, --update or --remove")

    def target(self, name: str, goto: bool) -> Step:
        opts = self.options()
        if goto or name not in BUILTIN_TARGETS:
            if not self.rs.has_chain(self.table, name):
                raise self.fail(f"unknown target or chain {name!r} in table {self.table}")
            return Do(Verdict("goto" if goto else "jump", name))
        if name in ("ACCEPT", "DROP", "REJECT", "RETURN"):
            return Do(Verdict(name.lower()))
        if name in ("DNAT", "SNAT"):
            to = opts.get("--to-destination" if name == "DNAT" else "--to-source")
            if not to:
                raise self.fail(f"{name} needs --to-{'destination' if name == 'DNAT' else 'source'}")
            addr, port = self.nat_to(to)
            ranged = "-" in to or "," in to
            return Nat(name.lower(), 0, addr, port,
                       f"{name} to a range ({to}): the trace follows its first address and port" if ranged else "")
        if name == "MASQUERADE":
            return Nat("masquerade")
        if name == "MARK":
            return self.mark(opts)
        if name == "LOG":
            return Log(opts.get("--log-prefix") or "")
        if name == "NOTRACK" or (name == "CT" and "--notrack" in opts):
            return Notrack()
        if name == "REDIRECT":
            port = opts.get("--to-ports")
            return Nat("dnat", 0, None, int(port.split("-")[0]) if port else None)
        return _Continue(f"target {name} is not modelled; the packet is taken to carry on")

    def nat_to(self, to: str) -> tuple[int | None, int | None]:
        if to.startswith("["):
            host, _, port = to[1:].partition("]")
            port = port.lstrip(":")
        elif to.count(":") == 1:
            host, _, port = to.partition(":")
        else:
            host, port = to, ""
        host = host.split("-")[0]
        port = port.split("-")[0]
        try:
            return (int(ipaddress.ip_address(host)) if host else None), (int(port) if port else None)
        except ValueError:
            raise self.fail(f"{to!r} is not ADDRESS[:PORT]") from None

    def mark(self, opts: dict[str, str | None]) -> Step:
        for opt, make in (
            ("--set-xmark", lambda v, m: xmark(~m, 0, v)),
            ("--set-mark", lambda v, m: xmark(~m, v, 0)),
            ("--or-mark", lambda v, m: xmark(-1, v, 0)),
            ("--and-mark", lambda v, m: xmark(v, 0, 0)),
            ("--xor-mark", lambda v, m: xmark(-1, 0, v)),
        ):
            if opts.get(opt):
                value, mask = _mask_value(opts[opt] or "", self.rule)
                return SetMark(make(value, mask), f"{opt} {opts[opt]}")
        raise self.fail("MARK needs --set-xmark, --set-mark, --or-mark, --and-mark or --xor-mark")


class _Either(Cmp):
    """multiport --ports: the source or the destination port."""

    def __init__(self, a: Cmp, b: Cmp) -> None:
        super().__init__(a.fields, a.masks, a.data)
        self.b = b

    def test(self, pkt: Packet, ctx: object) -> bool:  # type: ignore[override]
        return Cmp.test(self, pkt, ctx) or self.b.test(pkt, ctx)  # type: ignore[arg-type]


class _Continue(Unevaluable):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, True)


def _set(values: list[object]) -> SetData:
    return SetData([(v,) for v in values])


MODULES = {"tcp", "udp", "sctp", "multiport", "addrtype", "mark", "comment", "conntrack", "state",
           "statistic", "recent", "physdev", "limit", "set", "icmp", "icmp6", "nfacct"}
