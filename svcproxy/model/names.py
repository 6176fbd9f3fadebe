"""Kubernetes' rules for names, checked before a name can reach rule text or a log line.

The API server enforces these, but manifests and other sources do not, and names end up in
iptables comments and nftables chain names: `x"; -j ACCEPT` as a Service name would otherwise
be rule text. A name that breaks its rule makes the object an error, as the API server would
refuse it. shown() is how any such value appears in a message: printable and short.
"""

from __future__ import annotations

import re

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile(_LABEL)  # namespaces, port names
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # Service names
DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")  # EndpointSlice, Node, ServiceCIDR names

RULES = {
    DNS1123_LABEL: (63, "a lowercase RFC 1123 label (a-z, 0-9 and '-', starting and ending with a "
                        "letter or digit, at most 63 characters)"),
    DNS1035_LABEL: (63, "a lowercase RFC 1035 label (a-z, 0-9 and '-', starting with a letter and "
                        "ending with a letter or digit, at most 63 characters)"),
    DNS1123_SUBDOMAIN: (253, "a lowercase RFC 1123 subdomain (dot-separated labels of a-z, 0-9 and '-', "
                             "at most 253 characters)"),
}
_PLAIN = re.compile(r"[\w./:@-]{0,80}", re.ASCII)


def problem(value: str, rule: re.Pattern[str]) -> str | None:
    """Why value breaks the rule, or None when it keeps it."""
    longest, what = RULES[rule]
    if len(value) <= longest and rule.fullmatch(value):
        return None
    return f"{shown(value)} must be {what}"


def valid(value: object, rule: re.Pattern[str]) -> bool:
    return type(value) is str and problem(value, rule) is None


def shown(value: object) -> str:
    """A value as a message may print it: as it is when plain, else quoted with escapes and cut."""
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    text = repr(value if not isinstance(value, str) or len(value) <= 60 else value[:60])
    return text + ("..." if isinstance(value, str) and len(value) > 60 else "")
