"""The fast path of model.parse.parse_endpoint_slice: the common, valid shape in microseconds.

At 100k endpoints the general parser (which builds a field path for every value so errors can
name it) costs ~27 us per endpoint; this one checks the same things for the common, valid
shape in a few microseconds and raises NotCommon for anything unusual, which the general parser
then turns into the exact result or the exact error. tests/model/test_fast_slice.py checks that
both agree.
Strings repeated across endpoints (node names, zones) are interned to keep objects light.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from typing import Any

from .names import DNS1035_LABEL, DNS1123_LABEL, DNS1123_SUBDOMAIN, valid
from .objects import LABEL_SERVICE_NAME, PROTOCOLS, Endpoint, EndpointPort, EndpointSlice


class NotCommon(Exception):
    """Not the common shape: the general parser decides."""


_EMPTY: frozenset[str] = frozenset()
_NO_CONDITIONS: dict = {}
_intern = sys.intern
_GOOD_NODE_NAMES: set[str] = {""}  # checked once each: a cluster has few node names


def _node_name(ep: dict) -> str:
    name = _str(ep, "nodeName", "")
    if name not in _GOOD_NODE_NAMES:
        if not valid(name, DNS1123_SUBDOMAIN):
            raise NotCommon
        if len(_GOOD_NODE_NAMES) < 100_000:
            _GOOD_NODE_NAMES.add(name)
    return _intern(name)


def _str(obj: Mapping[str, Any], key: str, default: str) -> str:
    v = obj.get(key)
    if v is None:
        return default
    if type(v) is not str:
        raise NotCommon
    return v


def fast_endpoint_slice(raw: Mapping[str, Any]) -> EndpointSlice:
    """The slice, or NotCommon; never a different answer from the general parser."""
    meta = raw.get("metadata")
    if type(meta) is not dict:
        raise NotCommon
    name = meta.get("name")
    if not valid(name, DNS1123_SUBDOMAIN):
        raise NotCommon
    ns = _str(meta, "namespace", "default") or "default"
    if not valid(ns, DNS1123_LABEL):
        raise NotCommon
    labels = meta.get("labels")
    if type(labels) is not dict or any(type(v) is not str for v in labels.values()):
        raise NotCommon
    service = labels.get(LABEL_SERVICE_NAME)
    if not valid(service, DNS1035_LABEL):
        raise NotCommon
    if raw.get("addressType") != "IPv4":  # IPv6/FQDN: rare enough for the general parser
        raise NotCommon
    ports = []
    raw_ports = raw.get("ports")
    if raw_ports is not None:
        if type(raw_ports) is not list:
            raise NotCommon
        for p in raw_ports:
            if type(p) is not dict:
                raise NotCommon
            number = p.get("port")
            if number is not None and (type(number) is not int or not 1 <= number <= 65535):
                raise NotCommon
            proto = _str(p, "protocol", "TCP")
            if proto not in PROTOCOLS:
                raise NotCommon
            pname = _str(p, "name", "")
            if pname and not valid(pname, DNS1123_LABEL):
                raise NotCommon
            if number:
                ports.append(EndpointPort(pname, proto, number))  # type: ignore[arg-type]
    raw_eps = raw.get("endpoints")
    if raw_eps is None:
        endpoints: tuple[Endpoint, ...] = ()
    elif type(raw_eps) is list:
        endpoints = tuple(map(_endpoint, raw_eps))
    else:
        raise NotCommon
    return EndpointSlice(_intern(ns), name, service, "IPv4", tuple(ports), endpoints)


def _flag(conds: dict, key: str, default: bool) -> bool:
    v = conds.get(key)
    if v is None:
        return default
    if v is True or v is False:
        return v
    raise NotCommon


def _endpoint(ep: Any, _pton: Any = socket.inet_pton, _af: int = socket.AF_INET) -> Endpoint:
    # The hot loop (100k calls at 10k Services): checks inline, arguments positional.
    if type(ep) is not dict:
        raise NotCommon
    addrs = ep.get("addresses")
    if type(addrs) is not list or not addrs:
        raise NotCommon
    for a in addrs:
        # glibc's inet_pton accepts exactly the canonical dotted quad (no leading zeros),
        # which is what ipaddress would print back; anything else goes the slow way.
        if type(a) is not str:
            raise NotCommon
        try:
            _pton(_af, a)
        except (OSError, ValueError):  # ValueError: a NUL inside the string
            raise NotCommon from None
    conds = ep.get("conditions")
    if conds is None:
        conds = _NO_CONDITIONS
    elif type(conds) is not dict:
        raise NotCommon
    if ep.get("hints") is not None:
        raise NotCommon
    ready = _flag(conds, "ready", True)
    return Endpoint(tuple(addrs), ready, _flag(conds, "serving", ready), _flag(conds, "terminating", False),
                    _node_name(ep), _intern(_str(ep, "zone", "")), _EMPTY, _EMPTY)
