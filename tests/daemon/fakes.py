"""A Dataplane that records what it was asked to program (unit tests only; kernel tests use the real ones)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Collection

from svcproxy.dataplane import ApplyError, SyncResult
from svcproxy.runtime.daemon import Daemon
from svcproxy.state import ProxyState


class RecordingDataplane:
    mode = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[ProxyState, list[str] | None]] = []
        self.fail_next = 0  # how many of the next syncs raise ApplyError
        self.synced = threading.Event()
        self.full_delay = 0.0  # seconds a full sync takes (a large cluster)
        self.gate: threading.Event | None = None  # when set, a sync waits for it (one in flight)
        self.entered = threading.Event()  # a sync has started

    def sync(self, state: ProxyState, changed: Collection[str] | None = None) -> SyncResult:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_next:
            self.fail_next -= 1
            raise ApplyError("fake restore failure")
        if changed is None and self.full_delay:
            time.sleep(self.full_delay)
        self.calls.append((state, None if changed is None else sorted(changed)))
        self.synced.set()
        written = len(state.ports) if changed is None else len(changed)
        return SyncResult(full=changed is None, input_bytes=0, rules={"nat": len(state.ports)}, written={"nat": written})

    def cleanup(self) -> None:
        self.calls.clear()

    @property
    def last(self) -> ProxyState:
        return self.calls[-1][0]

    def endpoints(self, key: str) -> list[str]:
        """The programmed endpoints of a service, as ip:port strings, sorted."""
        svc = self.last.services.get(key)
        if svc is None:
            return []
        return sorted(str(e) for eps in svc.endpoints.values() for e in eps)


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task]:
    """The daemon running in a task for the block's length, then cancelled and awaited."""
    task = asyncio.create_task(daemon.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
