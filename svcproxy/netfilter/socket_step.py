"""ebpf mode's step before routing, in a trace: the cgroup connect()/sendmsg() hook picks the
endpoint when a local socket connects, so the packet leaves already addressed to the pod and
meets netfilter that way (no DNAT, no masquerade for the Service's sake).

socket_trace() is pure: it takes the hook's choice (SocketChoice, read from the pinned maps or
computed from manifests) and a function that traces one packet through the node's rules, and
returns one TraceResult whose outcomes carry the choice's probabilities and whose paths start
with the socket step."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .core import PathStep
from .result import VERDICT_ORDER, Outcome, TraceResult

if TYPE_CHECKING:  # the tracer reads the choice; it does not depend on the ebpf dataplane
    from ..dataplane.ebpf.inspect import SocketChoice

HOOK = "connect() (BPF)"


def _hook_name(protocol: str, family: int) -> str:
    return f"cgroup/{'sendmsg' if protocol.upper() == 'UDP' else 'connect'}{family}"


def socket_trace(choice: SocketChoice, source: str, destination: str, port: int, protocol: str,
                 trace_one: Callable[[str, int], TraceResult]) -> TraceResult:
    """The trace of source -> destination:port for a socket in the BPF programs' cgroup.

    choice: a SocketChoice (verdict rewrite | reject | pass, endpoints with probabilities);
    trace_one(ip, port): the packet source -> ip:port through the node's rules."""
    family = 6 if ":" in destination else 4
    hook = _hook_name(protocol, family)
    enter = (PathStep("hook", HOOK), PathStep("chain", HOOK, "bpf", hook))
    if choice.verdict == "pass":
        result = trace_one(destination, port)
        step = PathStep("rule", HOOK, "bpf", hook, note="not rewritten: left to the rules below")
        result.outcomes = [_prefixed(o, (*enter, step), 1.0) for o in result.outcomes]
        return result
    if choice.verdict == "reject":
        step = PathStep("rule", HOOK, "bpf", hook, note="REJECT: no endpoints, connect() fails with ECONNREFUSED")
        target = f"[{destination}]:{port}" if family == 6 else f"{destination}:{port}"
        return TraceResult(source, destination, port, protocol.upper(), HOOK, "ebpf",
                           [Outcome(1.0, "REJECT", target, False, (*enter, step))])
    outcomes: list[Outcome] = []
    warnings: list[str] = []
    start, fmt = HOOK, "ebpf"
    for endpoint, p in choice.endpoints:
        ip, _, ep_port = endpoint.rpartition(":")
        ip = ip.strip("[]")
        result = trace_one(ip, int(ep_port))
        fmt, start = f"ebpf + {result.ruleset_format}", result.start
        step = PathStep("rule", HOOK, "bpf", hook, note=f"to {endpoint}, no NAT", probability=p)
        outcomes += [_prefixed(o, (*enter, step), p) for o in result.outcomes]
        warnings += [w for w in result.warnings if w not in warnings]
    if choice.affinity_timeout:
        warnings.append(f"ClientIP affinity: a client returns to its first endpoint for {choice.affinity_timeout} s "
                        "(the BPF affinity map)")
    return TraceResult(source, destination, port, protocol.upper(), start, fmt, _merged(outcomes), warnings)


def _prefixed(o: Outcome, steps: tuple[PathStep, ...], p: float) -> Outcome:
    return Outcome(o.probability * p, o.verdict, o.endpoint, o.masquerade, steps + o.path, o.sticky)


def _merged(outcomes: list[Outcome]) -> list[Outcome]:
    """Outcomes with the same end add up (the likeliest one's path kept), in the tracer's order."""
    by: dict[tuple[str, str, bool], Outcome] = {}
    for o in outcomes:
        key = (o.verdict, o.endpoint, o.masquerade)
        seen = by.get(key)
        if seen is None:
            by[key] = o
        else:
            best = o if o.probability > seen.probability else seen
            by[key] = Outcome(seen.probability + o.probability, o.verdict, o.endpoint, o.masquerade, best.path,
                              tuple(dict.fromkeys(seen.sticky + o.sticky)))
    return sorted(by.values(), key=lambda o: (VERDICT_ORDER.index(o.verdict), o.endpoint, o.masquerade))
