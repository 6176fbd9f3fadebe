"""Builders for Service and EndpointSlice JSON objects, shared by the daemon tests and benchmarks."""

from __future__ import annotations

from typing import Any


def service(name: str, cluster_ip: str, port: int = 80, protocol: str = "TCP", ns: str = "default",
            target: int = 8080, **spec: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "ports": [{"name": "p", "protocol": protocol, "port": port, "targetPort": target}], **spec}}


def endpoint(ip: str, node: str = "", ready: bool = True, serving: bool | None = None,
             terminating: bool = False) -> dict:
    ep: dict[str, Any] = {"addresses": [ip], "conditions": {
        "ready": ready, "serving": ready if serving is None else serving, "terminating": terminating}}
    if node:
        ep["nodeName"] = node
    return ep


def endpoint_slice(name: str, service_name: str, endpoints: list[dict], port: int = 8080,
                   protocol: str = "TCP", ns: str = "default") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "p", "protocol": protocol, "port": port}],
            "endpoints": endpoints}
