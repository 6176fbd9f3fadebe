"""KubeProxyConfiguration files (--config): the fields svcproxy implements, unknown ones reported."""

from __future__ import annotations

from typing import Any

import click
import yaml

# KubeProxyConfiguration field -> node_options parameter name.
_FIELDS = {
    "hostnameOverride": "hostname_override",
    "clusterCIDR": "cluster_cidr",
    "mode": "proxy_mode",
    "nodePortAddresses": "nodeport_addresses",
    "bindAddress": None,
}
_IGNORED = {"apiVersion", "kind"}


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
        if key == "iptables" and isinstance(value, dict):
            for k, v in value.items():
                if k == "masqueradeAll" and not from_cli("masquerade_all"):
                    out["masquerade_all"] = bool(v)
                elif k == "masqueradeBit" and not from_cli("masquerade_bit"):
                    out["masquerade_bit"] = int(v)
                elif k == "localhostNodePorts" and not from_cli("iptables_localhost_nodeports"):
                    out["iptables_localhost_nodeports"] = bool(v)
                elif k in ("syncPeriod", "minSyncPeriod"):
                    name = "sync_period" if k == "syncPeriod" else "min_sync_period"
                    if not from_cli(name):
                        out[name] = v
                else:
                    unknown.append(f"iptables.{k}")
            continue
        if key == "nftables" and isinstance(value, dict):
            for k, v in value.items():
                if k in ("syncPeriod", "minSyncPeriod"):
                    name = "sync_period" if k == "syncPeriod" else "min_sync_period"
                    if not from_cli(name):
                        out[name] = v
                else:
                    unknown.append(f"nftables.{k}")
            continue
        target = _FIELDS.get(key, "")
        if target == "":
            unknown.append(key)
            continue
        if target is None or from_cli(target):
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
