"""Every Linux kube-proxy 1.36 flag, with kube-proxy's name, type and default, and what it sets.

One table (FLAGS) drives the click options of run, render and trace and how a given flag lands
in the config (apply_flags). A flag that has no meaning for svcproxy carries the reason
(`no_effect`); it is accepted and logged once, never refused. Values are parsed as kube-proxy's
pflag parses them: Go booleans (--masquerade-all, --masquerade-all=true), Go durations,
comma-separated lists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..runtime.durations import parse_go_duration
from .model import KubeProxyConfiguration

GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def go_bool(text: str) -> bool:
    """strconv.ParseBool, which pflag uses for boolean flags."""
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true or false)")


def _int32(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if not -(2**31) <= v < 2**31:
        raise ValueError(f"{v} does not fit in an int32")
    return v


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _ip_port(text: str) -> str:
    """utilflag.IPPortVar: empty, an IP, or IP:port (validation checks the parts)."""
    text = text.strip()
    if not text:
        return ""
    host = text
    if text.startswith("["):
        host = text[1:text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        host = text.split(":")[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not IP or IP:port (e.g. 0.0.0.0:10256)") from None
    return text


def _strings(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _bool_map(text: str) -> dict[str, bool]:
    """cliflag.MapStringBool: key=value pairs, comma-separated."""
    out = {}
    for item in _strings(text):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: write feature gates as Name=true or Name=false")
        out[key.strip()] = go_bool(value.strip())
    return out


PARSERS: dict[str, Callable[[str], Any]] = {
    "bool": go_bool, "string": str, "int32": _int32, "float32": _float, "duration": parse_go_duration,
    "ip": _ip, "ipport": _ip_port, "strings": _strings, "mapStringBool": _bool_map, "level": _int32,
}


@dataclass(frozen=True)
class Flag:
    """A kube-proxy flag: its name, pflag type, the config attribute it sets ("" for flags that
    act outside the config), and why it does nothing here (empty when it does something)."""

    name: str
    kind: str
    target: str
    help: str
    no_effect: str = ""
    # flags that keep effect when --config is given (kube-proxy reads them besides the file)
    beside_file: bool = False


_NO_IPVS = "svcproxy has no ipvs mode (deprecated upstream)"
_LOG = "svcproxy's logging has no such setting"
FLAGS = [Flag(*row) if len(row) == 4 else Flag(*row[:4], **row[4]) for row in (  # type: ignore[arg-type]
    ("bind-address", "ip", "bind_address", "The node's primary IP (kube-proxy binds no socket to it)."),
    ("bind-address-hard-fail", "bool", "bind_address_hard_fail",
     "If true, failing to bind the healthz or metrics port is fatal."),
    ("boot-id-file", "string", "", "Comma-separated files to read the boot ID from.",
     {"no_effect": "svcproxy does not read the boot ID", "beside_file": True}),
    ("cleanup", "bool", "", "If true, remove everything kube-proxy and svcproxy programmed, then exit.",
     {"beside_file": True}),
    ("cluster-cidr", "string", "@cluster-cidr",
     "The pods' CIDR range(s) (a dual-stack pair comma-separated): traffic from there is local (ClusterCIDR mode)."),
    ("config", "string", "", "The path to a KubeProxyConfiguration file; most other flags are then ignored.",
     {"beside_file": True}),
    ("config-sync-period", "duration", "config_sync_period", "How often the API objects are re-listed.",
     {"no_effect": "svcproxy's watches do not re-list periodically"}),
    ("conntrack-max-per-core", "int32", "conntrack.max_per_core",
     "Maximum conntrack entries per CPU core (0 leaves the limit and --conntrack-min as they are)."),
    ("conntrack-min", "int32", "conntrack.min", "Minimum conntrack entries, whatever --conntrack-max-per-core."),
    ("conntrack-tcp-be-liberal", "bool", "conntrack.tcp_be_liberal",
     "Set nf_conntrack_tcp_be_liberal to 1 (track TCP liberally)."),
    ("conntrack-tcp-timeout-close-wait", "duration", "conntrack.tcp_close_wait_timeout",
     "NAT timeout for TCP connections in CLOSE_WAIT."),
    ("conntrack-tcp-timeout-established", "duration", "conntrack.tcp_established_timeout",
     "Idle timeout for established TCP connections (0 leaves it as is)."),
    ("conntrack-udp-timeout", "duration", "conntrack.udp_timeout",
     "Idle timeout for UNREPLIED UDP connections (0 leaves it as is)."),
    ("conntrack-udp-timeout-stream", "duration", "conntrack.udp_stream_timeout",
     "Idle timeout for ASSURED UDP connections (0 leaves it as is)."),
    ("detect-local-mode", "string", "detect_local_mode",
     "How pod traffic is told: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix."),
    ("feature-gates", "mapStringBool", "feature_gates", "Feature gates, Name=true,Name2=false.",
     {"no_effect": "svcproxy has no feature gates; it behaves as kube-proxy 1.36 with its defaults"}),
    ("healthz-bind-address", "ipport", "healthz_bind_address",
     "IP:port for /healthz and /livez (default 0.0.0.0:10256; empty turns it off)."),
    ("healthz-port", "int32", "@healthz-port", "Deprecated: the port of --healthz-bind-address (0 turns it off)."),
    ("hostname-override", "string", "@hostname-override",
     "This node's name, as in EndpointSlices' nodeName (default: the hostname). Wins over the file.",
     {"beside_file": True}),
    ("init-only", "bool", "", "If true, do the node setup that needs full privileges (sysctls), then exit.",
     {"beside_file": True}),
    ("iptables-localhost-nodeports", "bool", "iptables_localhost_nodeports",
     "If false, NodePorts do not answer on 127.0.0.1 (iptables mode, IPv4)."),
    ("iptables-masquerade-bit", "int32", "iptables_masquerade_bit",
     "The fwmark bit that marks packets for SNAT in iptables mode [0, 31]."),
    ("iptables-min-sync-period", "duration", "@iptables-min-sync-period",
     "Minimum time between syncs (iptables and nftables modes); 0 syncs on every change."),
    ("iptables-sync-period", "duration", "@iptables-sync-period",
     "How often a full resync repairs the rules (iptables and nftables modes)."),
    ("ipvs-exclude-cidrs", "strings", "ipvs.exclude_cidrs", "CIDRs the ipvs proxier leaves alone.",
     {"no_effect": _NO_IPVS}),
    ("ipvs-min-sync-period", "duration", "@ipvs-min-sync-period", "ipvs mode's --iptables-min-sync-period.",
     {"no_effect": _NO_IPVS}),
    ("ipvs-scheduler", "string", "ipvs.scheduler", "The ipvs scheduler.", {"no_effect": _NO_IPVS}),
    ("ipvs-strict-arp", "bool", "ipvs.strict_arp", "Strict ARP for ipvs.", {"no_effect": _NO_IPVS}),
    ("ipvs-sync-period", "duration", "@ipvs-sync-period", "ipvs mode's --iptables-sync-period.",
     {"no_effect": _NO_IPVS}),
    ("ipvs-tcp-timeout", "duration", "ipvs.tcp_timeout", "ipvs TCP idle timeout.", {"no_effect": _NO_IPVS}),
    ("ipvs-tcpfin-timeout", "duration", "ipvs.tcp_fin_timeout", "ipvs TCP FIN timeout.", {"no_effect": _NO_IPVS}),
    ("ipvs-udp-timeout", "duration", "ipvs.udp_timeout", "ipvs UDP timeout.", {"no_effect": _NO_IPVS}),
    ("kube-api-burst", "int32", "client_connection.burst", "Burst for API requests.",
     {"no_effect": "svcproxy makes one list and one watch per resource; it has no request rate limiter"}),
    ("kube-api-content-type", "string", "client_connection.content_type", "Content type of API requests.",
     {"no_effect": "svcproxy talks JSON to the API server"}),
    ("kube-api-qps", "float32", "client_connection.qps", "QPS for API requests.",
     {"no_effect": "svcproxy makes one list and one watch per resource; it has no request rate limiter"}),
    ("kubeconfig", "string", "client_connection.kubeconfig", "Path to a kubeconfig file for the API server."),
    ("log-flush-frequency", "duration", "logging.flush_frequency", "Maximum seconds between log flushes.",
     {"no_effect": "svcproxy writes each log line at once", "beside_file": True}),
    ("log-json-info-buffer-size", "string", "", "JSON logging: info buffer size.",
     {"no_effect": _LOG, "beside_file": True}),
    ("log-json-split-stream", "bool", "", "JSON logging: errors to stderr, info to stdout.",
     {"no_effect": _LOG, "beside_file": True}),
    ("log-text-info-buffer-size", "string", "", "Text logging: info buffer size.",
     {"no_effect": _LOG, "beside_file": True}),
    ("log-text-split-stream", "bool", "", "Text logging: errors to stderr, info to stdout.",
     {"no_effect": _LOG, "beside_file": True}),
    ("logging-format", "string", "logging.format", "Log format: text or json.", {"beside_file": True}),
    ("machine-id-file", "string", "", "Comma-separated files to read the machine ID from.",
     {"no_effect": "svcproxy does not read the machine ID", "beside_file": True}),
    ("masquerade-all", "bool", "masquerade_all", "SNAT all traffic sent to Service cluster IPs."),
    ("master", "string", "", "The API server's address (overrides the kubeconfig's).", {"beside_file": True}),
    ("metrics-bind-address", "ipport", "metrics_bind_address",
     "IP:port for /metrics (default 127.0.0.1:10249; empty turns it off)."),
    ("metrics-port", "int32", "@metrics-port", "Deprecated: the port of --metrics-bind-address (0 turns it off)."),
    ("nodeport-addresses", "strings", "node_port_addresses",
     "CIDRs NodePorts answer on, or 'primary' (the node's IPs); default: all (nftables mode: primary)."),
    ("oom-score-adj", "int32", "oom_score_adj", "The process's oom_score_adj [-1000, 1000]."),
    ("pod-bridge-interface", "string", "detect_local.bridge_interface",
     "With --detect-local-mode BridgeInterface: traffic in from this bridge is pod traffic."),
    ("pod-interface-name-prefix", "string", "detect_local.interface_name_prefix",
     "With --detect-local-mode InterfaceNamePrefix: traffic in from interfaces named PREFIX* is pod traffic."),
    ("profiling", "bool", "enable_profiling", "Serve /debug/pprof.",
     {"no_effect": "svcproxy has no Go profiler; profile it with py-spy"}),
    ("proxy-mode", "string", "mode",
     "iptables (default), nftables, ipvs (runs iptables mode here); svcproxy adds userspace and ebpf."),
    ("show-hidden-metrics-for-version", "string", "show_hidden_metrics_for_version",
     "Show metrics hidden since this version.", {"no_effect": "svcproxy hides no metrics"}),
    ("v", "level", "logging.verbosity", "Log verbosity (0: info; 2: each sync; 4 and up: debug).",
     {"beside_file": True}),
    ("vmodule", "strings", "logging.vmodule", "Per-file verbosity (pattern=N,...).",
     {"no_effect": "svcproxy has one verbosity for every module", "beside_file": True}),
    ("write-config-to", "string", "", "Write the resulting configuration to this file and exit.",
     {"beside_file": True}),
)]
BY_NAME = {f.name: f for f in FLAGS}


def parse_flag(flag: Flag, text: str) -> Any:
    """A flag's value from its text; ValueError names what is wrong."""
    return PARSERS[flag.kind](text)


def set_attr(obj: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def apply_flags(c: KubeProxyConfiguration, given: dict[str, Any]) -> None:
    """kube-proxy without --config: the flags given on the command line onto the defaults.
    `given` maps flag name -> parsed value, only for flags that were on the command line."""
    for name, value in given.items():
        flag = BY_NAME[name]
        if flag.target and not flag.target.startswith("@"):
            set_attr(c, flag.target, value)
    # processV1Alpha1Flags: the mode-specific sync flags apply to their modes only
    ipvs = c.mode == "ipvs"
    for name, attr, applies in (("iptables-sync-period", "sync_period", not ipvs),
                                ("iptables-min-sync-period", "min_sync_period", not ipvs),
                                ("ipvs-sync-period", "sync_period", ipvs),
                                ("ipvs-min-sync-period", "min_sync_period", ipvs)):
        if name in given and applies:
            setattr(c, attr, given[name])
    if "cluster-cidr" in given:
        c.detect_local.cluster_cidrs = given["cluster-cidr"].split(",")
    for name, attr in (("healthz-port", "healthz_bind_address"), ("metrics-port", "metrics_bind_address")):
        if name in given:  # addressFromDeprecatedFlags
            port = given[name]
            host = getattr(c, attr).rsplit(":", 1)[0] or "0.0.0.0"
            setattr(c, attr, f"{host}:{port}" if port else "")
