"""What every backend is to the rest of svcproxy: the Dataplane protocol, its result, its error.

Its own module so the backends import it without importing the package that chooses among
them (dataplane/__init__.py), which would make each backend import every other one."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from ..state import ProxyState


class ApplyError(RuntimeError):
    """The kernel refused a ruleset; the rules programmed before stay in place."""


@dataclass
class SyncResult:
    """What one sync did, for logs, metrics and benchmarks."""

    full: bool  # a full resync (all chains/objects) rather than a partial one
    input_bytes: int = 0  # size of the text/messages handed to the kernel tool
    rules: dict[str, int] = field(default_factory=dict)  # e.g. {"nat": 1234, "filter": 12} for metrics
    written: dict[str, int] = field(default_factory=dict)  # rules this sync wrote, by table (iptables_last)


class Dataplane(Protocol):
    """A proxy mode bound to this node: keeps the kernel in step with the desired state."""

    mode: str

    def sync(self, state: ProxyState, changed: Collection[str] | None = None) -> SyncResult:
        """Program the kernel for state. changed: keys ("ns/name") of the services changed since
        the last successful sync; None asks for a full sync. Atomic: on ApplyError the previous
        rules are still in place and the next call must be a full sync."""
        ...

    def cleanup(self) -> None:
        """Remove everything this mode created, and nothing else."""
        ...
