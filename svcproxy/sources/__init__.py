"""Where the daemon's objects come from: manifests on disk or a live Kubernetes API.

Every source writes into one ObjectStore (store.py) through the same few calls, so the
sync loop never knows which source an object came from:

- store.put(source, obj) / store.delete(source, kind, key): one object changed;
- store.replace(source, objects): the source's complete view (initial list, relist, reload);
- store.mark_synced(source): the source has delivered its first complete state.

A source is an object with a `name` and an `async run(store)` coroutine that runs until
cancelled; see manifests.ManifestSource and kubernetes.ApiSource.
"""

from __future__ import annotations

from typing import Protocol

from .store import ObjectStore


class Source(Protocol):
    name: str

    async def run(self, store: ObjectStore) -> None:
        """Fill the store, mark it synced, then follow changes until cancelled."""
        ...


__all__ = ["ObjectStore", "Source"]
