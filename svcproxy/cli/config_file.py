"""KubeProxyConfiguration files (--config): the fields svcproxy implements, unknown ones reported."""

from __future__ import annotations

from typing import Any

import click
import yaml

from ..config import NFTABLES_LAYOUTS

# KubeProxyConfiguration field -> node_options parameter name.
_FIELDS = {
    "hostnameOverride": "hostname_override",
    "clusterCIDR": "cluster_cidr",
    "mode": "proxy_mode",
    "nodePortAddresses": "nodeport_addresses",
    "bindAddress": None,
    "healthzBindAddress": "healthz_bind_address",
    "metricsBindAddress": "metrics_bind_address",
    "syncPeriod": "sync_period",  # v1alpha2 moved these to the top level
    "minSyncPeriod": "min_sync_period",
}
# Nested sections: section -> {field -> parameter}.
_SECTIONS = {
    "clientConnection": {"kubeconfig": "kubeconfig"},
    "iptables": {"masqueradeAll": "masquerade_all", "masqueradeBit": "masquerade_bit",
                 "localhostNodePorts": "iptables_localhost_nodeports", "syncPeriod": "sync_period",
                 "minSyncPeriod": "min_sync_period"},
    "nftables": {"masqueradeAll": "masquerade_all", "masqueradeBit": "masquerade_bit",
                 "syncPeriod": "sync_period", "minSyncPeriod": "min_sync_period",
                 "layout": "nftables_layout"},  # svcproxy's own field: kube-proxy | maps
}
_IGNORED = {"apiVersion", "kind"}


def _typed(name: str, value: Any) -> Any:
    if name in ("masquerade_all", "iptables_localhost_nodeports"):
        return bool(value)
    if name == "masquerade_bit":
        return int(value)
    if name == "nftables_layout" and value not in NFTABLES_LAYOUTS:
        raise click.UsageError(f"nftables.layout: {value!r} is not a layout; use one of "
                               f"{', '.join(NFTABLES_LAYOUTS)}")
    return value


def apply_config_file(path: str, params: dict[str, Any], ctx: click.Context | None) -> dict[str, Any]:
    """Merge a KubeProxyConfiguration into params; explicit command-line flags win."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict) or data.get("kind") != "KubeProxyConfiguration":
        raise click.UsageError(f"{path}: not a KubeProxyConfiguration (kind: KubeProxyConfiguration expected)")
    out = dict(params)

    def from_cli(name: str) -> bool:
        if ctx is None:
            return False
        src = ctx.get_parameter_source(name)
        return src is not None and src.name == "COMMANDLINE"

    unknown = []
    for key, value in data.items():
        if key in _IGNORED:
            continue
        if key in _SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                name = _SECTIONS[key].get(k)
                if name is None:
                    unknown.append(f"{key}.{k}")
                elif not from_cli(name) and v not in (None, ""):
                    out[name] = _typed(name, v)
            continue
        target = _FIELDS.get(key, "")
        if target == "":
            unknown.append(key)
            continue
        if target is None or from_cli(target) or value in (None, ""):
            continue
        if target in ("cluster_cidr",):
            out[target] = tuple(c.strip() for c in str(value).split(",") if c.strip())
        elif target == "nodeport_addresses":
            out[target] = tuple(value or ())
        else:
            out[target] = value
    for name in unknown:
        click.echo(f"warning: {path}: field {name!r} is not supported by svcproxy and was ignored", err=True)
    return out
