"""The objects the sources delivered, and which services changed since the last sync.

The store is the only thing sources and the sync loops share. Sources put and delete objects;
each sync loop takes the set of changed service keys (a Service or any of its EndpointSlices
changed) from its own feed and rebuilds just those services' state. A Node change (this
node's zone) affects every service, so it asks for a full rebuild. A dual-stack daemon runs one
sync loop per IP family, each with a feed of its own (as kube-proxy's metaproxier hands every
event to both proxiers), so one family's failure or backlog never holds the other back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model.load import Objects
from ..model.objects import EndpointSlice, Node, Service, ServiceCIDR

Obj = Service | EndpointSlice | Node | ServiceCIDR


def kind_of(obj: Obj) -> str:
    return type(obj).__name__


def key_of(obj: Obj) -> str:
    return obj.name if isinstance(obj, Node) else obj.key


@dataclass
class Changes:
    """What the sync loop takes from the store in one go."""

    services: set[str] = field(default_factory=set)  # service keys to rebuild
    all: bool = False  # rebuild every service (first sync, or after a failed one)
    nodes: bool = False  # some Node changed: this node's zone may have moved
    service_events: int = 0  # counts for kubeproxy_sync_proxy_rules_*_changes_total
    endpoint_events: int = 0
    service_keys: set[str] = field(default_factory=set)  # services whose Service changed (*_pending)
    oldest: float | None = None  # monotonic time of the oldest change taken (for health)
    queued_at: float | None = None  # wall time of the newest change (last_queued_timestamp)
    # wall times from the endpoints.kubernetes.io/last-change-trigger-time annotation of slice
    # changes, by service: only these are network programming latency (kube-proxy's rule)
    trigger_times: dict[str, list[float]] = field(default_factory=dict)


class ChangeFeed:
    """One sync loop's view of what changed: the changes since it last took them."""

    def __init__(self) -> None:
        self.pending = Changes(all=True)
        self.changed = asyncio.Event()  # set whenever something changed; the sync loop waits on it

    def take(self) -> Changes:
        """The changes since the last call; the feed starts collecting afresh."""
        changes, self.pending = self.pending, Changes()
        self.changed.clear()
        return changes

    def requeue(self, changes: Changes) -> None:
        """Put back changes a failed sync could not program (the next sync is full anyway)."""
        self.pending.all = True
        self.pending.services |= changes.services
        self.pending.service_keys |= changes.service_keys
        for key, times in changes.trigger_times.items():
            self.pending.trigger_times.setdefault(key, []).extend(times)
        if changes.oldest is not None and (self.pending.oldest is None or changes.oldest < self.pending.oldest):
            self.pending.oldest = changes.oldest


class ObjectStore:
    """Services, EndpointSlices and Nodes by key, each remembered with the source that owns it."""

    def __init__(self, sources: Iterable[str] = ()) -> None:
        self.services: dict[str, Service] = {}
        self.slices: dict[str, EndpointSlice] = {}
        self.nodes: dict[str, Node] = {}
        self.service_cidrs: dict[str, ServiceCIDR] = {}
        self.slices_by_service: dict[str, set[str]] = {}
        self._owner: dict[tuple[str, str], str] = {}  # (kind, key) -> source name
        self._pending = set(sources)  # sources that have not delivered a complete state yet
        self.feed = ChangeFeed()  # the first sync loop's; subscribe() makes more
        self.feeds = [self.feed]
        self.changed = self.feed.changed
        self.node_eligible: dict[str, bool] = {}  # node name -> not being deleted (for /healthz)
        # a source that watches this node's Node (the API) sets this: then a Node never seen
        # makes /healthz say nodeEligible false, as kube-proxy's does; manifests may have none
        self.nodes_watched = False
        # trigger times older than this are the initial list's, not a change we programmed
        self.started = time.time()
        # What each source could not use, by the object it names: shown by the status page.
        self.problems: dict[str, dict[str, str]] = {}  # source -> {"Kind ns/name": message}

    # -- what sources call -------------------------------------------------
    def report(self, source: str, problems: dict[str, str]) -> None:
        """The source's complete list of bad objects (a manifest rescan, a relist)."""
        self.problems[source] = dict(problems)

    def report_one(self, source: str, ref: str, message: str | None) -> None:
        """One object is bad (message) or fine again (None)."""
        mine = self.problems.setdefault(source, {})
        if message is None:
            mine.pop(ref, None)
        else:
            mine[ref] = message

    def add_source(self, name: str) -> None:
        self._pending.add(name)

    def mark_synced(self, source: str) -> None:
        self._pending.discard(source)
        self._notify()

    @property
    def synced(self) -> bool:
        """Every source has delivered its first complete state: rules may be programmed."""
        return not self._pending

    def put(self, source: str, obj: Obj, trigger_time: float | None = None) -> None:
        kind, key = kind_of(obj), key_of(obj)
        table = self._table(kind)
        old = table.get(key)
        self._owner[(kind, key)] = source
        if old == obj:
            return
        table[key] = obj
        if isinstance(obj, EndpointSlice):
            if isinstance(old, EndpointSlice) and old.service_key != obj.service_key:
                self._unindex(old)
                self._touch_service(old.service_key, endpoint=True)
            self.slices_by_service.setdefault(obj.service_key, set()).add(key)
            self._touch_service(obj.service_key, endpoint=True, trigger_time=trigger_time)
        elif isinstance(obj, Service):
            self._touch_service(key)
        else:
            self._touch_nodes()
        self._notify()

    def delete(self, source: str, kind: str, key: str) -> None:
        table = self._table(kind)
        old = table.pop(key, None)
        self._owner.pop((kind, key), None)
        if old is None:
            return
        if isinstance(old, EndpointSlice):
            self._unindex(old)
            self._touch_service(old.service_key, endpoint=True, removed=True)
        elif isinstance(old, Service):
            self._touch_service(key)
        else:
            self._touch_nodes()
        self._notify()

    def replace(self, source: str, objects: Objects | Iterable[Obj], keep: set[tuple[str, str]] = frozenset()) -> None:
        """Make the source's objects exactly these: put each, delete what it owned and no longer has.

        keep: (kind, key) of objects that could not be parsed this time; their last good
        version stays, so a typo never unprograms a working service.
        """
        items = _flatten(objects)
        seen = {(kind_of(o), key_of(o)) for o in items}
        for (kind, key), owner in list(self._owner.items()):
            if owner == source and (kind, key) not in seen and (kind, key) not in keep:
                self.delete(source, kind, key)
        for o in items:
            self.put(source, o)

    def owned(self, source: str) -> set[tuple[str, str]]:
        return {k for k, owner in self._owner.items() if owner == source}

    # -- what the sync loops call ----------------------------------------
    def subscribe(self) -> ChangeFeed:
        """A feed for another sync loop; it starts with a full rebuild, like the first."""
        feed = ChangeFeed()
        self.feeds.append(feed)
        if self.synced:
            feed.changed.set()
        return feed

    def take_changes(self) -> Changes:
        """The first feed's changes since the last call (single-family callers and tests)."""
        return self.feed.take()

    def requeue(self, changes: Changes) -> None:
        self.feed.requeue(changes)

    @property
    def pending(self) -> Changes:
        return self.feed.pending

    def node(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def service_slices(self, service_key: str) -> list[EndpointSlice]:
        return [self.slices[k] for k in sorted(self.slices_by_service.get(service_key, ()))]

    # -- internals ---------------------------------------------------------
    def _table(self, kind: str) -> dict:
        if kind == "Service":
            return self.services
        if kind == "EndpointSlice":
            return self.slices
        if kind == "Node":
            return self.nodes
        if kind == "ServiceCIDR":
            return self.service_cidrs
        raise ValueError(f"unknown kind {kind!r}")

    def _unindex(self, sl: EndpointSlice) -> None:
        keys = self.slices_by_service.get(sl.service_key)
        if keys is not None:
            keys.discard(sl.key)
            if not keys:
                del self.slices_by_service[sl.service_key]

    def _touch_service(self, key: str, endpoint: bool = False, trigger_time: float | None = None,
                       removed: bool = False) -> None:
        """Queue a service for every feed. A slice's trigger time counts only when it is newer
        than the store (not the initial list's); a removed slice drops the service's pending
        ones, whose annotation dates from an earlier change (kube-proxy's rule)."""
        now, wall = time.monotonic(), time.time()
        trigger = trigger_time is not None and trigger_time > self.started
        for feed in self.feeds:
            c = feed.pending
            c.services.add(key)
            if endpoint:
                c.endpoint_events += 1
                if removed:
                    c.trigger_times.pop(key, None)
                elif trigger:
                    c.trigger_times.setdefault(key, []).append(trigger_time)  # type: ignore[arg-type]
            else:
                c.service_events += 1
                c.service_keys.add(key)
            if c.oldest is None:
                c.oldest = now
            c.queued_at = wall

    def _touch_nodes(self) -> None:
        wall = time.time()
        for feed in self.feeds:
            feed.pending.nodes = True
            feed.pending.queued_at = wall

    def _notify(self) -> None:
        for feed in self.feeds:
            feed.changed.set()


def _flatten(objects: Objects | Iterable[Obj]) -> list[Obj]:
    if isinstance(objects, Objects):
        return [*objects.services, *objects.slices, *objects.nodes, *objects.service_cidrs]
    return list(objects)
