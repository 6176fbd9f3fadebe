"""parse_endpoint_slice's fast path agrees with the general parser, result for result, error for error."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svcproxy.model.fast_slice import fast_endpoint_slice
from svcproxy.model.parse import ObjectError, parse_endpoint_slice, parse_endpoint_slice_general
from tests.daemon.manifests_util import endpoint, endpoint_slice


def outcome(parse, raw):
    try:
        return parse(copy.deepcopy(raw))
    except ObjectError as e:
        return f"error: {e}"


BASE = endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a"), endpoint("10.0.1.11", ready=False)])


def variant(path: list, value) -> dict:
    raw = copy.deepcopy(BASE)
    obj = raw
    for k in path[:-1]:
        obj = obj[k]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return raw


CASES = [
    BASE,
    variant(["endpoints", 0, "addresses"], ["010.0.1.10"]),  # sloppy IPv4 (leading zero)
    variant(["endpoints", 0, "addresses"], ["10.0.1.300"]),
    variant(["endpoints", 0, "addresses"], []),
    variant(["endpoints", 0, "addresses"], ["fd00::1"]),
    variant(["endpoints", 0, "conditions"], KeyError),
    variant(["endpoints", 0, "conditions"], {"ready": None, "serving": False}),
    variant(["endpoints", 0, "conditions"], {"ready": "yes"}),
    variant(["endpoints", 0, "nodeName"], None),
    variant(["endpoints", 0, "nodeName"], 7),
    variant(["endpoints", 0, "hints"], {"forZones": [{"name": "zone-a"}]}),
    variant(["endpoints"], None),
    variant(["endpoints"], "x"),
    variant(["ports"], [{"port": 0}]),
    variant(["ports"], [{"port": None, "name": "all"}]),
    variant(["ports"], [{"port": 53, "protocol": "UDP", "name": "dns"}]),
    variant(["ports"], [{"port": 53, "protocol": "ICMP"}]),
    variant(["ports"], [{"port": True}]),
    variant(["addressType"], "IPv6"),
    variant(["addressType"], "FQDN"),
    variant(["metadata", "labels"], {}),
    variant(["metadata", "namespace"], ""),
    variant(["metadata", "name"], ""),
]


@pytest.mark.parametrize("raw", CASES)
def test_fast_parser_agrees(raw: dict) -> None:
    assert outcome(parse_endpoint_slice, raw) == outcome(parse_endpoint_slice_general, raw)


ips = st.one_of(st.ip_addresses(v=4).map(str), st.text(alphabet="0123456789.x:", max_size=16))
conds = st.fixed_dictionaries({}, optional={"ready": st.one_of(st.booleans(), st.none()),
                                            "serving": st.booleans(), "terminating": st.booleans()})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.lists(ips, max_size=2), conds, st.one_of(st.none(), st.text(max_size=5))), max_size=4),
       st.lists(st.integers(-1, 70000), max_size=2))
def test_fast_parser_agrees_on_generated_slices(eps, ports) -> None:
    raw = copy.deepcopy(BASE)
    raw["endpoints"] = [{"addresses": a, "conditions": c, **({"nodeName": n} if n is not None else {})}
                        for a, c, n in eps]
    raw["ports"] = [{"port": p, "name": f"p{i}"} for i, p in enumerate(ports)]
    assert outcome(parse_endpoint_slice, raw) == outcome(parse_endpoint_slice_general, raw)


def test_the_common_shape_takes_the_fast_path() -> None:
    """The agreement tests above would pass with a dead fast path; this one would not."""
    assert fast_endpoint_slice(copy.deepcopy(BASE)) == parse_endpoint_slice_general(copy.deepcopy(BASE))


def test_nul_in_an_address_is_a_named_error_not_a_crash() -> None:
    """Found by bench/reliability's generated manifests: inet_pton raises ValueError (not
    OSError) on an embedded NUL, which escaped the parser."""
    from svcproxy.model.parse import ObjectError, parse_endpoint_slice

    raw = {"metadata": {"name": "s", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1\x00"]}]}
    with pytest.raises(ObjectError, match=r"EndpointSlice d/s: endpoints\[0\]\.addresses\[0\]"):
        parse_endpoint_slice(raw)
