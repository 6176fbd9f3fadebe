"""A fast path for parsing EndpointSlices from the API, equal to model.parse's result.

At 100k endpoints the general parser (which builds a field path for every value so errors can
name it) costs ~27 us per endpoint; this one checks the same things for the common, valid
shape in a few microseconds and hands anything unusual to model.parse.parse_endpoint_slice,
which then produces the exact result or the exact error. tests/daemon checks both agree.
Strings repeated across endpoints (node names, zones) are interned to keep objects light.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from typing import Any

from ..model.objects import LABEL_SERVICE_NAME, PROTOCOLS, Endpoint, EndpointPort, EndpointSlice
from ..model.parse import parse_endpoint_slice


class _Fallback(Exception):
    pass


_EMPTY: frozenset[str] = frozenset()
_intern = sys.intern


def _ipv4(value: Any) -> str:
    # glibc's inet_pton accepts exactly the canonical dotted quad (no leading zeros), which is
    # what ipaddress would print back; anything else goes the slow way.
    if type(value) is not str:
        raise _Fallback
    try:
        socket.inet_pton(socket.AF_INET, value)
    except OSError:
        raise _Fallback from None
    return value


def _str(obj: Mapping[str, Any], key: str, default: str) -> str:
    v = obj.get(key)
    if v is None:
        return default
    if type(v) is not str:
        raise _Fallback
    return v


def _bool(obj: Mapping[str, Any], key: str, default: bool) -> bool:
    v = obj.get(key)
    if v is None:
        return default
    if type(v) is not bool:
        raise _Fallback
    return v


def _fast(raw: Mapping[str, Any]) -> EndpointSlice:
    meta = raw.get("metadata")
    if type(meta) is not dict:
        raise _Fallback
    name = meta.get("name")
    if type(name) is not str or not name:
        raise _Fallback
    ns = _str(meta, "namespace", "default") or "default"
    labels = meta.get("labels")
    if type(labels) is not dict or any(type(v) is not str for v in labels.values()):
        raise _Fallback
    service = labels.get(LABEL_SERVICE_NAME)
    if not service:
        raise _Fallback
    if raw.get("addressType") != "IPv4":  # IPv6/FQDN: rare enough for the general parser
        raise _Fallback
    ports = []
    raw_ports = raw.get("ports")
    if raw_ports is not None:
        if type(raw_ports) is not list:
            raise _Fallback
        for p in raw_ports:
            if type(p) is not dict:
                raise _Fallback
            number = p.get("port")
            if number is not None and (type(number) is not int or not 1 <= number <= 65535):
                raise _Fallback
            proto = _str(p, "protocol", "TCP")
            if proto not in PROTOCOLS:
                raise _Fallback
            pname = _str(p, "name", "")
            if number:
                ports.append(EndpointPort(pname, proto, number))  # type: ignore[arg-type]
    endpoints = []
    raw_eps = raw.get("endpoints")
    if raw_eps is not None:
        if type(raw_eps) is not list:
            raise _Fallback
        for ep in raw_eps:
            if type(ep) is not dict:
                raise _Fallback
            addrs = ep.get("addresses")
            if type(addrs) is not list or not addrs:
                raise _Fallback
            conds = ep.get("conditions")
            if conds is None:
                conds = {}
            elif type(conds) is not dict:
                raise _Fallback
            ready = _bool(conds, "ready", True)
            if ep.get("hints") is not None:
                raise _Fallback
            endpoints.append(Endpoint(
                addresses=tuple(_ipv4(a) for a in addrs), ready=ready, serving=_bool(conds, "serving", ready),
                terminating=_bool(conds, "terminating", False),
                node_name=_intern(_str(ep, "nodeName", "")), zone=_intern(_str(ep, "zone", "")),
                zone_hints=_EMPTY, node_hints=_EMPTY))
    return EndpointSlice(_intern(ns), name, service, "IPv4", tuple(ports), tuple(endpoints))


def parse_endpoint_slice_fast(raw: Mapping[str, Any]) -> EndpointSlice:
    """Same result (or ObjectError) as model.parse.parse_endpoint_slice, much faster on the common shape."""
    try:
        return _fast(raw)
    except _Fallback:
        return parse_endpoint_slice(raw)
