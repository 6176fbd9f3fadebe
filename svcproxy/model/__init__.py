"""Kubernetes objects as svcproxy sees them: parsed, validated, and per-node endpoint selection."""

from .load import Objects, load_paths, load_text, parse_objects
from .objects import Endpoint, EndpointPort, EndpointSlice, LoadBalancerIngress, Node, Service, ServicePort
from .parse import ObjectError, parse_endpoint_slice, parse_node, parse_service

__all__ = [
    "Endpoint", "EndpointPort", "EndpointSlice", "LoadBalancerIngress", "Node", "ObjectError", "Objects",
    "Service", "ServicePort", "load_paths", "load_text", "parse_endpoint_slice", "parse_node",
    "parse_objects", "parse_service",
]
