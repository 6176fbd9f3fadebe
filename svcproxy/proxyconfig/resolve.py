"""Flags + config file -> one Settings, with kube-proxy 1.36's precedence (options.go):

- without --config: kube-proxy's defaults, then every flag given on the command line;
- with --config: the file alone; the flags kube-proxy ignores then are reported, not used;
  --hostname-override, the logging flags (-v, --logging-format) and --master still apply;
- then kube-proxy's platform defaults (mode iptables; nftables mode answers NodePorts on the
  node's primary IPs; detect-local ClusterCIDR) and validation (every problem, named);
- svcproxy's own flags (--node-ip, --sync-period, --nftables-layout, ...) apply on top.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from ..config import NodeConfig, ip_family
from . import v1alpha1
from .flags import BY_NAME, apply_flags, set_attr
from .model import HEALTHZ_PORT, METRICS_PORT, NFTABLES_SECTION_MODES, KubeProxyConfiguration
from .v1alpha1 import ConfigError, with_default_port
from .validation import validate

# settings that do nothing in svcproxy when set away from their defaults in a file
_FILE_NO_EFFECT = {
    "config_sync_period": "configSyncPeriod", "enable_profiling": "enableProfiling",
    "show_hidden_metrics_for_version": "showHiddenMetricsForVersion", "port_range": "portRange",
    "windows_run_as_service": "windowsRunAsService", "feature_gates": "featureGates",
}


@dataclass
class OwnFlags:
    """svcproxy's own flags (no kube-proxy equivalent); None/empty: not given."""

    ip_family: int | None = None
    node_ips: tuple[str, ...] = ()
    local_addresses: tuple[str, ...] = ()
    nftables_layout: str | None = None
    sync_period: float | None = None
    min_sync_period: float | None = None


@dataclass
class Settings:
    """What a command runs with: the resolved kube-proxy config, the mode that runs, this
    node's NodeConfig, and the lines to log once (ignored flags, settings without effect)."""

    config: KubeProxyConfiguration
    mode: str
    node: NodeConfig
    notes: list[str] = field(default_factory=list)
    config_file: str = ""
    master: str = ""
    cleanup: bool = False
    init_only: bool = False
    write_config_to: str = ""
    only_family: int | None = None  # svcproxy's --ip-family: proxy this family alone


def effective_mode(mode: str) -> tuple[str, str]:
    """The mode svcproxy runs for a configured mode, and a note when they differ."""
    if mode == "":
        return "iptables", ""
    if mode == "ipvs":
        return "iptables", ("mode ipvs: svcproxy has no ipvs mode (deprecated upstream); running iptables "
                            "mode, which serves every Service the same way (set mode: nftables or "
                            "iptables to silence this)")
    return mode, ""


def resolve(given: dict[str, Any], own: OwnFlags | None = None) -> Settings:
    """Settings from the kube-proxy flags given on the command line (flag name -> parsed value)
    and svcproxy's own flags. ConfigError names every problem."""
    own = own or OwnFlags()
    notes: list[str] = []
    config_file = given.get("config") or ""
    c, file_notes = _from_file(config_file, given) if config_file else (_from_flags(given), [])
    notes += file_notes
    _hostname_override(c, given.get("hostname-override"))
    if own.sync_period is not None:
        c.sync_period = own.sync_period
    if own.min_sync_period is not None:
        c.min_sync_period = own.min_sync_period
    if own.nftables_layout:
        c.nftables_layout = own.nftables_layout
    _platform_defaults(c)
    problems = validate(c)
    if problems:
        where = f"the config file {config_file}" if config_file else "the flags"
        raise ConfigError(f"invalid configuration ({where}):\n  " + "\n  ".join(problems))
    mode, note = effective_mode(c.mode)
    notes += [note] if note else []
    notes += _no_effect(c, given, config_file)
    return Settings(config=c, mode=mode, node=node_config(c, mode, own), notes=notes,
                    config_file=config_file, master=given.get("master") or "",
                    cleanup=bool(given.get("cleanup")), init_only=bool(given.get("init-only")),
                    write_config_to=given.get("write-config-to") or "", only_family=own.ip_family)


def _from_flags(given: dict[str, Any]) -> KubeProxyConfiguration:
    c = KubeProxyConfiguration()
    apply_flags(c, given)
    if "healthz-port" not in given and c.healthz_bind_address:
        c.healthz_bind_address = with_default_port(c.healthz_bind_address, HEALTHZ_PORT)
    if "metrics-port" not in given and c.metrics_bind_address:
        c.metrics_bind_address = with_default_port(c.metrics_bind_address, METRICS_PORT)
    return c


def _from_file(path: str, given: dict[str, Any]) -> tuple[KubeProxyConfiguration, list[str]]:
    c, unknown = v1alpha1.load(path)
    notes = [f"{path}: field {u!r} is not a KubeProxyConfiguration field; ignored (kube-proxy ignores it "
             "too, with a warning)" for u in unknown]
    for name, value in given.items():
        flag = BY_NAME[name]
        if flag.beside_file:
            if flag.target and not flag.target.startswith("@"):  # logging flags win over the file
                set_attr(c, flag.target, value)
        else:
            notes.append(f"--{name} is ignored because --config is given (as kube-proxy does); set it in {path}")
    return c, notes


def _hostname_override(c: KubeProxyConfiguration, flag: str | None) -> None:
    """processHostnameOverrideFlag: the flag wins over the file, trimmed and lowercased."""
    if flag is None or flag == "":
        return
    name = flag.strip()
    if not name:
        raise ConfigError("--hostname-override: an empty (all-blank) hostname is invalid")
    c.hostname_override = name.lower()


def _platform_defaults(c: KubeProxyConfiguration) -> None:
    """server_linux.go platformApplyDefaults."""
    if c.mode == "":
        c.mode = "iptables"
    if c.mode in NFTABLES_SECTION_MODES and not c.node_port_addresses:
        c.node_port_addresses = ["primary"]
    if c.detect_local_mode == "":
        c.detect_local_mode = "ClusterCIDR"


def _no_effect(c: KubeProxyConfiguration, given: dict[str, Any], config_file: str) -> list[str]:
    notes = []
    for name in given:
        flag = BY_NAME[name]
        if flag.no_effect and (not config_file or flag.beside_file):
            notes.append(f"--{name} has no effect in svcproxy: {flag.no_effect}")
    if config_file:
        default = KubeProxyConfiguration()
        for attr, json_name in _FILE_NO_EFFECT.items():
            if getattr(c, attr) != getattr(default, attr):
                notes.append(f"{config_file}: {json_name} has no effect in svcproxy")
        if c.ipvs != default.ipvs and c.mode == "ipvs":
            notes.append(f"{config_file}: ipvs settings have no effect: svcproxy has no ipvs mode")
    return notes


def _unspecified(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


def node_config(c: KubeProxyConfiguration, mode: str, own: OwnFlags) -> NodeConfig:
    """This node's NodeConfig (primary family) from the resolved config and svcproxy's flags.

    Node IPs: --node-ip, else a specific bindAddress (kube-proxy's node IP override); the daemon
    adds the Node object's addresses when it has none."""
    node_ips = own.node_ips
    if not node_ips and not _unspecified(c.bind_address):
        node_ips = (str(ipaddress.ip_address(c.bind_address)),)
    family = own.ip_family or (ip_family(node_ips[0]) if node_ips else 4)
    hostname = (c.hostname_override or socket.gethostname()).strip().lower()
    cidrs = tuple(str(ipaddress.ip_network(x.strip(), strict=False)) for x in c.detect_local.cluster_cidrs
                  if x.strip())
    return NodeConfig(
        hostname=hostname, ip_family=family, cluster_cidrs=cidrs, node_ips=tuple(node_ips),
        local_addresses=own.local_addresses, nodeport_addresses=tuple(
            a if a == "primary" else str(ipaddress.ip_network(a, strict=False)) for a in c.node_port_addresses),
        masquerade_all=c.masquerade_all, localhost_nodeports=c.iptables_localhost_nodeports,
        masquerade_bit=c.masquerade_bit, nftables_layout=c.nftables_layout,
        detect_local_mode=c.detect_local_mode, bridge_interface=c.detect_local.bridge_interface,
        interface_name_prefix=c.detect_local.interface_name_prefix)


__all__ = ["ConfigError", "OwnFlags", "Settings", "node_config", "resolve"]
