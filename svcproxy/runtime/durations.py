"""Durations written as kube-proxy (Go's time.ParseDuration) writes them: 500ms, 1s, 30s, 1m, 1h2m3s."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Go duration string; a bare number counts as seconds. ValueError if malformed."""
    if isinstance(text, int | float):
        return float(text)
    s = text.strip()
    if not s:
        raise ValueError("empty duration (write e.g. 500ms, 1s, 30s, 1m)")
    try:
        return float(s)
    except ValueError:
        pass
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f"{text!r} is not a duration (write e.g. 500ms, 1s, 30s, 1m)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s"
    return f"{seconds / 60:g}m"


def parse_go_duration(text: str) -> float:
    """Seconds in a duration exactly as Go's time.ParseDuration takes it (kube-proxy's flags and
    config file): a unit is required except for "0", and a sign may lead. ValueError otherwise."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    if body == "0":
        return 0.0
    if not body or not _PART.match(body):
        raise ValueError(f"{text!r} is not a duration (write a number with a unit: 500ms, 30s, 1m, 1h2m3s)")
    return sign * parse_duration(body)
