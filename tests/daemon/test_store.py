"""The object store: what changed, per service, whichever source said so."""

from __future__ import annotations

from svcproxy.model.parse import parse_endpoint_slice, parse_service
from svcproxy.sources.store import ObjectStore

from .manifests_util import endpoint, endpoint_slice, service


def svc(name: str, ip: str = "172.30.0.10"):
    return parse_service(service(name, ip))


def sl(name: str, owner: str, *ips: str):
    return parse_endpoint_slice(endpoint_slice(name, owner, [endpoint(ip) for ip in ips]))


def test_changes_are_tracked_per_service_and_unchanged_puts_are_free() -> None:
    store = ObjectStore(["a"])
    store.replace("a", [svc("web"), sl("web-1", "web", "10.0.1.1"), svc("dns", "172.30.0.53")])
    first = store.take_changes()
    assert first.all and first.services == {"default/web", "default/dns"}
    store.put("a", sl("web-1", "web", "10.0.1.1"))  # same object again
    assert store.take_changes().services == set()
    store.put("a", sl("web-1", "web", "10.0.1.2"))
    c = store.take_changes()
    assert c.services == {"default/web"} and c.endpoint_events == 1 and not c.all
    # a slice that changes owner touches both services
    store.put("a", sl("web-1", "dns", "10.0.1.2"))
    assert store.take_changes().services == {"default/web", "default/dns"}
    assert store.service_slices("default/web") == [] and len(store.service_slices("default/dns")) == 1


def test_replace_deletes_only_its_own_objects_and_keeps_bad_ones() -> None:
    store = ObjectStore(["a", "b"])
    store.replace("a", [svc("web"), svc("dns", "172.30.0.53")])
    store.replace("b", [svc("other", "172.30.0.99")])
    store.take_changes()
    store.replace("a", [svc("web")], keep={("Service", "default/dns")})  # dns failed to parse this time
    assert set(store.services) == {"default/web", "default/dns", "default/other"}
    store.replace("a", [])
    assert set(store.services) == {"default/other"}
    assert store.take_changes().services == {"default/web", "default/dns"}


def test_synced_only_when_every_source_is() -> None:
    store = ObjectStore(["a", "b"])
    store.mark_synced("a")
    assert not store.synced
    store.mark_synced("b")
    assert store.synced
