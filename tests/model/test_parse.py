"""Parsing and validation of Kubernetes objects: good objects round-trip, bad ones name the field."""

from __future__ import annotations

import json

import pytest
import yaml

from svcproxy.model import ObjectError, load_paths, load_text, parse_endpoint_slice, parse_service


def svc(**spec: object) -> dict:
    base = {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc1", "namespace": "ns1"}, "spec": base}


def test_service_defaults_and_fields() -> None:
    s = parse_service(svc(type="NodePort", externalIPs=["192.168.99.11"],
                          ports=[{"name": "p80", "port": 80, "nodePort": 3001, "targetPort": "http"}]))
    assert s.key == "ns1/svc1"
    assert s.type == "NodePort"
    assert s.cluster_ips == ("172.30.0.41",)
    assert s.ports[0].protocol == "TCP" and s.ports[0].node_port == 3001 and s.ports[0].target_port == "http"
    assert s.external_ips == ("192.168.99.11",)
    assert s.session_affinity == "None" and s.external_traffic_policy == "Cluster"


def test_ipv6_addresses_are_normalised() -> None:
    s = parse_service(svc(clusterIPs=["fd00:0:0::0:1"], clusterIP="fd00::1"))
    assert s.cluster_ips == ("fd00::1",)


def test_affinity_timeout_and_lb_ingress() -> None:
    s = parse_service(svc(type="LoadBalancer", sessionAffinity="ClientIP",
                          sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
                      | {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "lb.example"},
                                                                  {"ip": "1.2.3.5", "ipMode": "Proxy"}]}}})
    assert s.session_affinity_timeout == 60
    assert [(i.ip, i.ip_mode) for i in s.load_balancer_ingress] == [("1.2.3.4", "VIP"), ("1.2.3.5", "Proxy")]


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"clusterIP": "172.30.0.999"}, "spec.clusterIP", "not a valid IP"),
    ({"ports": [{"port": 70000}]}, "spec.ports[0].port", "out of range"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port", "out of range"),
    ({"ports": [{"port": "80"}]}, "spec.ports[0].port", "must be an integer"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol", "not one of TCP, UDP, SCTP"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "spec.ports[1].name", "duplicate"),
    ({"ports": [{"port": 80, "targetPort": 0}]}, "spec.ports[0].targetPort", "out of range"),
    ({"type": "Magic"}, "spec.type", "not one of"),
    ({"externalIPs": ["nope"]}, "spec.externalIPs[0]", "not a valid IP"),
    ({"loadBalancerSourceRanges": ["10.0.0.0/33"]}, "spec.loadBalancerSourceRanges[0]", "not a valid CIDR"),
    ({"externalTrafficPolicy": "Nearby"}, "spec.externalTrafficPolicy", "not one of"),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "out of range"),
    ({"ports": "80"}, "spec.ports", "must be a list"),
])
def test_bad_service_names_object_and_field(spec: dict, field: str, words: str) -> None:
    with pytest.raises(ObjectError) as err:
        parse_service(svc(**spec))
    assert err.value.field == field
    assert str(err.value).startswith(f"Service ns1/svc1: {field}: ")
    assert words in str(err.value)


def test_missing_name_is_reported() -> None:
    with pytest.raises(ObjectError, match=r"metadata.name: is required"):
        parse_service({"kind": "Service", "metadata": {"namespace": "x"}, "spec": {}})


def eps(**fields: object) -> dict:
    base: dict = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "svc1-abc", "namespace": "ns1",
                               "labels": {"kubernetes.io/service-name": "svc1"}},
                  "addressType": "IPv4", "ports": [{"name": "p80", "port": 80}],
                  "endpoints": [{"addresses": ["10.180.0.1"], "nodeName": "test-node"}]}
    base.update(fields)
    return base


def test_endpoint_slice_conditions_default_like_kube_proxy() -> None:
    sl = parse_endpoint_slice(eps(endpoints=[
        {"addresses": ["10.180.0.1"]},
        {"addresses": ["10.180.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.180.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True},
         "hints": {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "test-node"}]}},
    ]))
    a, b, c = sl.endpoints
    assert (a.ready, a.serving, a.terminating) == (True, True, False)
    assert (b.ready, b.serving, b.terminating) == (False, False, False)
    assert (c.ready, c.serving, c.terminating) == (False, True, True)
    assert c.zone_hints == {"zone-a"} and c.node_hints == {"test-node"}
    assert sl.service_key == "ns1/svc1"
    assert sl.ports[0].protocol == "TCP"


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"addressType": "IPv5"}, "addressType", "not one of"),
    ({"endpoints": [{"addresses": ["fd00::1"]}]}, "endpoints[0].addresses[0]", "not an IPv4 address"),
    ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses", "at least one"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]},
     "endpoints[0].conditions.ready", "must be a boolean"),
    ({"ports": [{"name": "p", "port": 65536}]}, "ports[0].port", "out of range"),
    ({"ports": [{"name": "p", "port": 80, "protocol": "tcp"}]}, "ports[0].protocol", "not one of"),
])
def test_bad_endpoint_slice_names_object_and_field(fields: dict, field: str, words: str) -> None:
    with pytest.raises(ObjectError) as err:
        parse_endpoint_slice(eps(**fields))
    assert err.value.field == field and words in str(err.value)
    assert "EndpointSlice ns1/svc1-abc" in str(err.value)


def test_slice_without_service_label() -> None:
    obj = eps()
    obj["metadata"]["labels"] = {}
    with pytest.raises(ObjectError, match=r"kubernetes.io/service-name\]: is required"):
        parse_endpoint_slice(obj)


def test_load_multidoc_list_and_json(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: List\nitems:\n- " + json.dumps(svc()) + "\n---\n" + json.dumps(eps()) + "\n")
    (tmp_path / "sub").mkdir()
    other = svc()
    other["metadata"]["name"] = "svc2"
    (tmp_path / "sub" / "b.json").write_text(json.dumps(other))
    (tmp_path / "notes.txt").write_text("not a manifest")
    objs = load_paths([tmp_path])
    assert sorted(s.key for s in objs.services) == ["ns1/svc1", "ns1/svc2"]
    assert [s.key for s in objs.slices] == ["ns1/svc1-abc"]
    assert objs.errors == []


def test_bad_object_is_skipped_and_the_rest_loaded() -> None:
    bad = svc(clusterIP="300.1.1.1")
    bad["metadata"]["name"] = "broken"
    objs = load_text(json.dumps(bad) + "\n---\n" + json.dumps(svc()), origin="f.yaml")
    assert [s.key for s in objs.services] == ["ns1/svc1"]
    assert objs.errors == ["f.yaml: document 1: Service ns1/broken: spec.clusterIP: '300.1.1.1' is not a valid IP address"]


def test_invalid_yaml_is_an_error_not_a_crash() -> None:
    objs = load_text("kind: Service\n  metadata: [", origin="bad.yaml")
    assert objs.services == [] and objs.errors and objs.errors[0].startswith("bad.yaml: document 1 (line 1): not valid YAML")


def test_a_document_that_does_not_parse_is_named_and_the_others_load() -> None:
    good = yaml.safe_dump(svc(), sort_keys=False)
    other = svc()
    other["metadata"]["name"] = "svc2"
    text = good + "---\nkind: Service\nmetadata: [oops\n---\n" + yaml.safe_dump(other, sort_keys=False)
    objs = load_text(text, origin="big.yaml")
    assert sorted(s.key for s in objs.services) == ["ns1/svc1", "ns1/svc2"]
    bad_line = good.count("\n") + 1  # the `---` line of document 2
    assert len(objs.errors) == 1
    assert objs.errors[0].startswith(f"big.yaml: document 2 (line {bad_line}): not valid YAML: ")
    assert f"at line {bad_line + 2}, column" in objs.errors[0]  # the file's line, not the document's


def test_a_bad_item_of_a_big_json_list_is_named_by_index() -> None:
    items = [svc() for _ in range(50)]
    for i, item in enumerate(items):
        item["metadata"]["name"] = f"s{i}"
    items[37]["spec"]["ports"][0]["port"] = 70000
    objs = load_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": items}), origin="c.json")
    assert len(objs.services) == 49
    assert objs.errors == ["c.json: document 1, items[37]: Service ns1/s37: spec.ports[0].port: "
                           "70000 is out of range (1-65535)"]


def test_several_json_values_in_one_file_and_broken_json() -> None:
    a, b = svc(), svc()
    b["metadata"]["name"] = "svc2"
    objs = load_text(json.dumps(a) + "\n" + json.dumps(b, indent=2), origin="two.json")
    assert sorted(s.key for s in objs.services) == ["ns1/svc1", "ns1/svc2"] and objs.errors == []
    objs = load_text(json.dumps(a) + '\n{"kind": "Service", ', origin="cut.json")
    assert [s.key for s in objs.services] == ["ns1/svc1"]
    assert objs.errors == ["cut.json: document 2: not valid JSON at line 2, column 21: Expecting property name "
                           "enclosed in double quotes; the rest of the file is skipped"]


def test_missing_path_is_reported(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_paths([tmp_path / "nope.yaml"])


def test_leading_zeros_accepted_like_kube_proxy() -> None:
    s = parse_service(svc(type="LoadBalancer", clusterIP="172.30.0.041", externalIPs=["192.168.099.022"],
                          loadBalancerSourceRanges=["203.0.113.000/025"]))
    assert s.cluster_ips == ("172.30.0.41",) and s.external_ips == ("192.168.99.22",)
    assert s.load_balancer_source_ranges == ("203.0.113.0/25",)


def test_service_cidr_objects_reach_the_state() -> None:
    from svcproxy.config import NodeConfig
    from svcproxy.state import build_state

    text = ("apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\n"
            "spec: {cidrs: [172.30.0.0/16, 'fd00:30::/112']}\n---\n"
            "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: bad}\nspec: {cidrs: [nope]}\n")
    objs = load_text(text)
    assert objs.errors == ["document 2: ServiceCIDR bad: spec.cidrs[0]: 'nope' is not a valid CIDR"]
    assert build_state(objs, NodeConfig()).service_cidrs == ("172.30.0.0/16",)
    assert build_state(objs, NodeConfig(ip_family=6)).service_cidrs == ("fd00:30::/112",)


INJECTED = 'x"; -j ACCEPT\n-A INPUT -j DROP'


@pytest.mark.parametrize(("kind", "path", "field"), [
    ("Service", ("metadata", "name"), "metadata.name"),
    ("Service", ("metadata", "namespace"), "metadata.namespace"),
    ("Service", ("spec", "ports", 0, "name"), "spec.ports[0].name"),
    ("EndpointSlice", ("metadata", "labels", "kubernetes.io/service-name"),
     "metadata.labels[kubernetes.io/service-name]"),
    ("EndpointSlice", ("ports", 0, "name"), "ports[0].name"),
    ("EndpointSlice", ("endpoints", 0, "nodeName"), "endpoints[0].nodeName"),
])
def test_names_that_would_be_rule_text_are_refused(kind: str, path: tuple, field: str) -> None:
    """Found by bench/reliability: a Service named `x"; -j ACCEPT<newline>-A INPUT -j DROP` in a
    manifest became iptables rules (and nft chain names). Names keep Kubernetes' rules now; the
    error names the field and shows the value escaped, on one line."""
    import json

    from svcproxy.config import NodeConfig
    from svcproxy.dataplane.iptables.render import render_ruleset as iptables
    from svcproxy.dataplane.nftables.render import render_ruleset as nftables
    from svcproxy.model import load_text
    from svcproxy.state import build_state

    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
           "spec": {"clusterIP": "172.30.0.5", "ports": [{"name": "http", "port": 80}]}}
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": "web-1", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
          "ports": [{"name": "http", "port": 80}], "endpoints": [{"addresses": ["10.0.0.5"], "nodeName": "n"}]}
    node: object = svc if kind == "Service" else sl
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = INJECTED  # type: ignore[index]
    cfg = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",))
    state = build_state(load_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": [svc, sl]})), cfg)
    errors = [e for e in state.errors if f": {field}: " in e]
    assert errors and "\n" not in errors[0] and "must be a lowercase" in errors[0], state.errors
    for text in (iptables(state, cfg), nftables(state, cfg)):
        assert "-A INPUT -j DROP" not in text.splitlines() and "x\"" not in text


@pytest.mark.parametrize("spec", [{"clusterIP": ""}, {}, {"clusterIPs": []}, {"clusterIPs": [""]}])
def test_service_without_a_cluster_ip_is_named(spec: dict) -> None:
    """Found by bench/reliability's generated manifests: a Service without a ClusterIP (which the
    API server would allocate) was skipped without a word; from a file that hides a missing field."""
    from svcproxy.model.parse import ObjectError, parse_service

    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
           "spec": {**spec, "ports": [{"port": 80}]}}
    with pytest.raises(ObjectError, match=r"Service d/web: spec\.clusterIP: is not set"):
        parse_service(obj)
    headless = {**obj, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}
    assert parse_service(headless).cluster_ips == ("None",)


def test_service_without_ports_is_named_unless_headless() -> None:
    """Found by bench/reliability: `spec.ports: null` was skipped without a word."""
    from svcproxy.model.parse import ObjectError, parse_service

    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
           "spec": {"clusterIP": "172.30.0.5", "ports": None}}
    with pytest.raises(ObjectError, match=r"Service d/web: spec\.ports: must hold at least one port"):
        parse_service(obj)
    assert parse_service({**obj, "spec": {"clusterIP": "None"}}).ports == ()


def test_an_ipv6_zone_is_not_an_address() -> None:
    """Found by bench/reliability: `fe80::1%eth0` was taken as a ClusterIP."""
    from svcproxy.model.parse import ObjectError, parse_service

    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
           "spec": {"clusterIP": "fe80::1%eth0", "ports": [{"port": 80}]}}
    with pytest.raises(ObjectError, match=r"spec\.clusterIP: 'fe80::1%eth0' is not a valid IP address"):
        parse_service(obj)
