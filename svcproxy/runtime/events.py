"""Kubernetes Events, as kube-proxy records them (client-go's events.k8s.io/v1 recorder).

kube-proxy records a few Events an operator looks for with `kubectl get events`:
- Normal `Starting` (action StartKubeProxy) on its Node when it starts ("birth cry");
- Warning `FailedToStartServiceHealthcheck` (action Listen) on a Service whose
  healthCheckNodePort cannot be opened;
- Warning `FailedToStartProxierHealthcheck` / `FailedToStartMetricServer` (StartKubeProxy) on
  its Node when the healthz or metrics server cannot listen.
They carry kube-proxy's reportingController ("kube-proxy") and reportingInstance
("kube-proxy-<hostname>"), so filters written for kube-proxy's Events find svcproxy's.

Recording never blocks the caller: events queue and one task posts them. Without an API
server (manifests) they are only logged. As client-go's recorder does, an identical event
within a few minutes is not posted again (client-go patches a series count instead).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("svcproxy.runtime.events")

CONTROLLER = "kube-proxy"
NORMAL, WARNING = "Normal", "Warning"
REPEAT_WINDOW = 360.0  # client-go's series window: 6 minutes
QUEUE_LIMIT = 1000  # client-go's broadcaster queue length; beyond it events are dropped


@dataclass(frozen=True)
class ObjectRef:
    """A v1.ObjectReference to the object an Event is about."""

    kind: str
    name: str
    namespace: str = ""
    api_version: str = "v1"

    def as_json(self) -> dict[str, str]:
        ref = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            ref["namespace"] = self.namespace
        return ref


def node_ref(name: str) -> ObjectRef:
    return ObjectRef("Node", name)


def service_ref(key: str) -> ObjectRef:
    namespace, _, name = key.partition("/")
    return ObjectRef("Service", name, namespace)


def micro_time(t: float) -> str:
    """metav1.MicroTime as JSON: RFC 3339, always six fractional digits, UTC."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(ref: ObjectRef, type_: str, reason: str, action: str, note: str, now: float,
               instance: str) -> dict[str, Any]:
    """The events.k8s.io/v1 Event client-go's recorder makes (name: regarding.name + hex ns)."""
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{ref.name}.{int(now * 1e9):x}", "namespace": ref.namespace or "default"},
        "eventTime": micro_time(now),
        "reportingController": CONTROLLER,
        "reportingInstance": instance,
        "action": action,
        "reason": reason,
        "regarding": ref.as_json(),
        "note": note[:1024],  # the API refuses notes over 1 kB
        "type": type_,
    }


Post = Callable[[str, dict[str, Any]], Awaitable[None]]  # (namespace, event) -> created


class EventRecorder:
    """Queue Events and post them through `post` (None: log only)."""

    def __init__(self, post: Post | None = None, instance: str | None = None) -> None:
        self.post = post
        self.instance = instance or f"{CONTROLLER}-{socket.gethostname()}"
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self.recent: dict[tuple[ObjectRef, str, str], float] = {}  # (ref, reason, note) -> posted at
        self.posted: list[dict[str, Any]] = []  # what went through (tests, the status page)

    def eventf(self, ref: ObjectRef, type_: str, reason: str, action: str, note: str = "") -> None:
        """Record one Event; returns at once."""
        now = time.time()
        key = (ref, reason, note)
        if now - self.recent.get(key, float("-inf")) < REPEAT_WINDOW:
            return
        self.recent[key] = now
        (log.warning if type_ == WARNING else log.info)(
            "event %s %s %s/%s: %s%s", type_, reason, ref.kind, ref.name, action, f": {note}" if note else "")
        if self.post is None:
            return
        try:
            self.queue.put_nowait(make_event(ref, type_, reason, action, note, now, self.instance))
        except asyncio.QueueFull:
            log.error("event %s on %s/%s dropped: %d events waiting", reason, ref.kind, ref.name, QUEUE_LIMIT)

    async def run(self) -> None:
        """Post queued Events until cancelled."""
        if self.post is None:
            return
        while True:
            await self._send(await self.queue.get())

    async def flush(self, timeout: float = 5.0) -> None:
        """Post what is queued now (before the daemon exits on an error it just recorded)."""
        if self.post is None:
            return
        async with asyncio.timeout(timeout):
            while not self.queue.empty():
                await self._send(self.queue.get_nowait())

    async def _send(self, event: dict[str, Any]) -> None:
        """One post, retried twice; an Event is best effort, as in client-go."""
        assert self.post is not None
        for attempt in range(3):
            try:
                await self.post(event["metadata"]["namespace"], event)
                self.posted.append(event)
                return
            except Exception as e:  # noqa: BLE001 - whatever failed, the proxy goes on
                if attempt == 2:
                    log.error("event %s on %s: not recorded (%s)", event["reason"], event["regarding"].get("name"), e)
                else:
                    await asyncio.sleep(0.5 * 2**attempt)
