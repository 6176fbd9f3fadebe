"""Which endpoint a new connection goes to: round-robin, with ClientIP session affinity.

One Balancer per service port, shared by all its frontends (ClusterIP, NodePort, ...), so a
client sticks to its endpoint whichever address it uses, as kube-proxy's per-service `recent`
lists do. Plain data, no I/O; the clock is passed in so tests can move it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .plan import Endpoint


class Balancer:
    def __init__(self) -> None:
        self._next = 0
        self._affinity: dict[str, tuple[Endpoint, float]] = {}  # client ip -> (endpoint, last used)

    def choose(self, client_ip: str, candidates: Sequence[Endpoint], affinity_timeout: int,
               now: float) -> Endpoint | None:
        """The endpoint for a new connection from client_ip, or None without candidates.

        With affinity, a client whose last connection was less than affinity_timeout seconds
        ago goes to the same endpoint while that endpoint is still a candidate; each use
        refreshes the timer (kube-proxy's `recent --rcheck --seconds T --reap` then `--set`).
        """
        if not candidates:
            return None
        if affinity_timeout > 0:
            hit = self._affinity.get(client_ip)
            if hit is not None and now - hit[1] < affinity_timeout and hit[0] in candidates:
                self._affinity[client_ip] = (hit[0], now)
                return hit[0]
        ep = candidates[self._next % len(candidates)]
        self._next = (self._next + 1) % (1 << 30)
        if affinity_timeout > 0:
            self._affinity[client_ip] = (ep, now)
        return ep

    def forget(self, client_ip: str) -> None:
        """The client's endpoint failed: its next connection picks afresh."""
        self._affinity.pop(client_ip, None)

    def expire(self, now: float, affinity_timeout: int) -> None:
        """Drop entries older than the timeout (keeps the table bounded by active clients)."""
        if affinity_timeout <= 0:
            self._affinity.clear()
            return
        stale = [ip for ip, (_, t) in self._affinity.items() if now - t >= affinity_timeout]
        for ip in stale:
            del self._affinity[ip]
