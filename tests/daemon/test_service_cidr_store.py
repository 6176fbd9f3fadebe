"""ServiceCIDR objects flow through the daemon's store into the state the dataplane gets."""

from __future__ import annotations

from svcproxy.config import NodeConfig
from svcproxy.model import load_text
from svcproxy.runtime.syncer import Syncer
from svcproxy.sources.store import ObjectStore

from .fakes import RecordingDataplane

TEXT = """
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [172.30.0.0/16, "fd00:30::/112"]}
---
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec: {clusterIP: 172.30.0.41, ports: [{name: p80, port: 80}]}
"""


def test_service_cidrs_reach_the_state() -> None:
    store = ObjectStore(["manifests"])
    store.replace("manifests", load_text(TEXT))
    assert set(store.service_cidrs) == {"kubernetes"}
    syncer = Syncer(store, RecordingDataplane(), NodeConfig(), clear_conntrack=False)
    state, changed = syncer.build(store.take_changes())
    assert state.service_cidrs == ("172.30.0.0/16",) and changed is None
    store.replace("manifests", load_text(TEXT.split("---", 1)[1]))
    assert store.service_cidrs == {}


def test_a_service_cidr_change_asks_for_a_full_sync() -> None:
    store = ObjectStore(["manifests"])
    store.replace("manifests", load_text(TEXT))
    syncer = Syncer(store, RecordingDataplane(), NodeConfig(), clear_conntrack=False)
    syncer.state, _ = syncer.build(store.take_changes())
    syncer.programmed = syncer.state
    store.replace("manifests", load_text(TEXT.replace("172.30.0.0/16", "172.31.0.0/16")))
    state, changed = syncer.build(store.take_changes())
    assert state.service_cidrs == ("172.31.0.0/16",) and changed is None
