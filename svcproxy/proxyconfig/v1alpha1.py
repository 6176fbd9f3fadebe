"""The config file: kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration, read and written.

Reading is decode -> default -> convert, as kube-proxy does it:
- decode: every field by its JSON name and Go type; a wrong type is an error naming the field;
  an unknown field is reported and skipped (kube-proxy's lenient decoding logs it too);
- default: v1alpha1's defaults, which replace zero values (a `syncPeriod: 0s` becomes 30s);
- convert: the active mode's section gives the sync periods and masqueradeAll (nftables mode
  reads nftables.*, ipvs mode ipvs.*, every other mode iptables.*), so a kubeadm file that has
  both sections behaves as under kube-proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from ..runtime.durations import parse_go_duration
from .model import API_VERSION, HEALTHZ_PORT, KIND, METRICS_PORT, KubeProxyConfiguration, section_of


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names it and says what to write."""


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a string")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not a boolean (true or false)")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{v!r} is not an integer")
    if not -(2**31) <= v < 2**31:
        raise ValueError(f"{v} does not fit in an int32")
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{v!r} is not a number")
    return float(v)


def _duration(v: Any) -> float:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a duration (write it as a string with a unit: 500ms, 30s, 1m)")
    return parse_go_duration(v)


def _strings(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{v!r} is not a list of strings")
    return list(v)


def _bool_map(v: Any) -> dict[str, bool]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, bool) for k, x in v.items()):
        raise ValueError(f"{v!r} is not a map of names to true/false")
    return dict(v)


def _any(v: Any) -> Any:
    return v


@dataclass(frozen=True)
class Field:
    """One v1alpha1 field: its JSON path, Go type (as a parser) and the default that replaces
    its zero value (None: no defaulting)."""

    path: str
    parse: Callable[[Any], Any]
    default: Any = None


FIELDS = [Field(p, t, d) for p, t, d in (
    ("featureGates", _bool_map, None),
    ("clientConnection.kubeconfig", _str, None),
    ("clientConnection.acceptContentTypes", _str, None),
    ("clientConnection.contentType", _str, "application/vnd.kubernetes.protobuf"),
    ("clientConnection.qps", _float, 5.0),
    ("clientConnection.burst", _int, 10),
    ("logging.format", _str, "text"),
    ("logging.flushFrequency", _any, None),
    ("logging.verbosity", _int, None),
    ("logging.vmodule", _any, None),
    ("logging.options", _any, None),
    ("hostnameOverride", _str, None),
    ("bindAddress", _str, "0.0.0.0"),
    ("healthzBindAddress", _str, None),
    ("metricsBindAddress", _str, None),
    ("bindAddressHardFail", _bool, None),
    ("enableProfiling", _bool, None),
    ("showHiddenMetricsForVersion", _str, None),
    ("mode", _str, None),
    ("iptables.masqueradeBit", _int, None),
    ("iptables.masqueradeAll", _bool, None),
    ("iptables.localhostNodePorts", _bool, None),
    ("iptables.syncPeriod", _duration, 30.0),
    ("iptables.minSyncPeriod", _duration, 1.0),
    ("ipvs.syncPeriod", _duration, 30.0),
    ("ipvs.minSyncPeriod", _duration, None),
    ("ipvs.scheduler", _str, None),
    ("ipvs.excludeCIDRs", _strings, None),
    ("ipvs.strictARP", _bool, None),
    ("ipvs.tcpTimeout", _duration, None),
    ("ipvs.tcpFinTimeout", _duration, None),
    ("ipvs.udpTimeout", _duration, None),
    ("nftables.masqueradeBit", _int, None),
    ("nftables.masqueradeAll", _bool, None),
    ("nftables.syncPeriod", _duration, 30.0),
    ("nftables.minSyncPeriod", _duration, 1.0),
    ("nftables.layout", _str, None),  # svcproxy's own
    ("winkernel.networkName", _str, None),
    ("winkernel.sourceVip", _str, None),
    ("winkernel.enableDSR", _bool, None),
    ("winkernel.rootHnsEndpointName", _str, None),
    ("winkernel.forwardHealthCheckVip", _bool, None),
    ("detectLocalMode", _str, None),
    ("detectLocal.bridgeInterface", _str, None),
    ("detectLocal.interfaceNamePrefix", _str, None),
    ("clusterCIDR", _str, None),
    ("nodePortAddresses", _strings, None),
    ("oomScoreAdj", _int, None),
    ("conntrack.maxPerCore", _int, None),
    ("conntrack.min", _int, None),
    ("conntrack.tcpEstablishedTimeout", _duration, None),
    ("conntrack.tcpCloseWaitTimeout", _duration, None),
    ("conntrack.tcpBeLiberal", _bool, None),
    ("conntrack.udpTimeout", _duration, None),
    ("conntrack.udpStreamTimeout", _duration, None),
    ("configSyncPeriod", _duration, 900.0),
    ("portRange", _str, None),
    ("windowsRunAsService", _bool, None),
)]
_BY_PATH = {f.path: f for f in FIELDS}
_SECTIONS = {f.path.split(".")[0] for f in FIELDS if "." in f.path}


def decode(data: Any, source: str) -> tuple[dict[str, Any], list[str]]:
    """The file's fields as {json path: typed value}, and the unknown fields' paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: not a KubeProxyConfiguration (a YAML/JSON object with "
                          f"kind: {KIND} and apiVersion: {API_VERSION} expected)")
    if data.get("kind") != KIND:
        raise ConfigError(f"{source}: kind is {data.get('kind')!r}; a kube-proxy config file has kind: {KIND}")
    if data.get("apiVersion") != API_VERSION:
        raise ConfigError(f"{source}: apiVersion is {data.get('apiVersion')!r}; kube-proxy 1.36 reads "
                          f"apiVersion: {API_VERSION}")
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in data.items():
        if key in ("kind", "apiVersion"):
            continue
        if key in _SECTIONS and key not in _BY_PATH:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key}: {value!r} is not an object")
            items = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            items = [(key, value)]
        for path, v in items:
            f = _BY_PATH.get(path)
            if f is None:
                unknown.append(path)
            elif v is not None:
                try:
                    values[path] = f.parse(v)
                except ValueError as e:
                    raise ConfigError(f"{source}: {path}: {e}") from None
    return values, unknown


def _defaulted(values: dict[str, Any]) -> dict[str, Any]:
    """v1alpha1 defaulting: a missing or zero value takes the field's default."""
    out = dict(values)
    for f in FIELDS:
        if f.default is not None and not out.get(f.path):
            out[f.path] = f.default
    bind = out["bindAddress"]
    try:
        v6 = ipaddress.ip_address(bind).version == 6
    except ValueError:
        v6 = False  # validation names the bad bindAddress
    out["healthzBindAddress"] = with_default_port(out.get("healthzBindAddress") or ("[::]" if v6 else "0.0.0.0"), HEALTHZ_PORT)
    out["metricsBindAddress"] = with_default_port(out.get("metricsBindAddress") or ("[::1]" if v6 else "127.0.0.1"),
                                               METRICS_PORT)
    return out


def with_default_port(address: str, port: int) -> str:
    """kube-proxy's AppendPortIfNeeded: a bare IP gets the default port."""
    host = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return address
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def convert(values: dict[str, Any]) -> KubeProxyConfiguration:
    """Defaulted v1alpha1 values -> the internal config, the active mode's section chosen."""
    v = _defaulted(values)
    c = KubeProxyConfiguration()
    c.feature_gates = v.get("featureGates", {})
    cc = c.client_connection
    cc.kubeconfig = v.get("clientConnection.kubeconfig", "")
    cc.accept_content_types = v.get("clientConnection.acceptContentTypes", "")
    cc.content_type, cc.qps, cc.burst = (v["clientConnection.contentType"], v["clientConnection.qps"],
                                         v["clientConnection.burst"])
    c.logging.format = v["logging.format"]
    c.logging.verbosity = v.get("logging.verbosity", 0)
    c.hostname_override = v.get("hostnameOverride", "")
    c.bind_address = v["bindAddress"]
    c.healthz_bind_address, c.metrics_bind_address = v["healthzBindAddress"], v["metricsBindAddress"]
    c.bind_address_hard_fail = v.get("bindAddressHardFail", False)
    c.enable_profiling = v.get("enableProfiling", False)
    c.show_hidden_metrics_for_version = v.get("showHiddenMetricsForVersion", "")
    c.mode = v.get("mode", "")
    c.iptables_masquerade_bit = v.get("iptables.masqueradeBit", 14)
    c.iptables_localhost_nodeports = v.get("iptables.localhostNodePorts", True)
    c.nftables_masquerade_bit = v.get("nftables.masqueradeBit", 14)
    c.nftables_layout = v.get("nftables.layout", "kube-proxy")
    _convert_ipvs(v, c)
    c.winkernel = {k.split(".", 1)[1]: x for k, x in v.items() if k.startswith("winkernel.")}
    c.detect_local_mode = v.get("detectLocalMode", "")
    c.detect_local.bridge_interface = v.get("detectLocal.bridgeInterface", "")
    c.detect_local.interface_name_prefix = v.get("detectLocal.interfaceNamePrefix", "")
    if v.get("clusterCIDR"):
        c.detect_local.cluster_cidrs = v["clusterCIDR"].split(",")
    c.node_port_addresses = v.get("nodePortAddresses", [])
    c.oom_score_adj = v.get("oomScoreAdj", -999)
    _convert_conntrack(v, c)
    c.config_sync_period = v["configSyncPeriod"]
    c.port_range = v.get("portRange", "")
    c.windows_run_as_service = v.get("windowsRunAsService", False)
    section = section_of(c.mode)
    c.sync_period, c.min_sync_period = v[f"{section}.syncPeriod"], v.get(f"{section}.minSyncPeriod", 0.0)
    c.masquerade_all = v.get(f"{section}.masqueradeAll", False)
    return c


def _convert_ipvs(v: dict[str, Any], c: KubeProxyConfiguration) -> None:
    i = c.ipvs
    i.sync_period, i.min_sync_period = v["ipvs.syncPeriod"], v.get("ipvs.minSyncPeriod", 0.0)
    i.scheduler, i.exclude_cidrs = v.get("ipvs.scheduler", ""), v.get("ipvs.excludeCIDRs", [])
    i.strict_arp = v.get("ipvs.strictARP", False)
    i.tcp_timeout, i.tcp_fin_timeout = v.get("ipvs.tcpTimeout", 0.0), v.get("ipvs.tcpFinTimeout", 0.0)
    i.udp_timeout = v.get("ipvs.udpTimeout", 0.0)


def _convert_conntrack(v: dict[str, Any], c: KubeProxyConfiguration) -> None:
    t = c.conntrack
    t.max_per_core = v.get("conntrack.maxPerCore", 32768)
    t.min = v.get("conntrack.min", 131072)
    t.tcp_established_timeout = v.get("conntrack.tcpEstablishedTimeout", 86400.0)
    t.tcp_close_wait_timeout = v.get("conntrack.tcpCloseWaitTimeout", 3600.0)
    t.tcp_be_liberal = v.get("conntrack.tcpBeLiberal", False)
    t.udp_timeout = v.get("conntrack.udpTimeout", 0.0)
    t.udp_stream_timeout = v.get("conntrack.udpStreamTimeout", 0.0)


def load(path: str) -> tuple[KubeProxyConfiguration, list[str]]:
    """Read a config file: the internal config and the paths of fields kube-proxy has no such
    field for (reported, then skipped). ConfigError names the file and field on bad input."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML/JSON: {e}") from None
    values, unknown = decode(data, path)
    return convert(values), unknown


def encode(c: KubeProxyConfiguration) -> dict[str, Any]:
    """The internal config as a v1alpha1 document (kube-proxy's --write-config-to): the sync
    periods and masqueradeAll go to the active mode's section, the others keep their defaults."""
    section = section_of(c.mode)
    periods = {"iptables": {"syncPeriod": "30s", "minSyncPeriod": "1s"},
               "ipvs": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
               "nftables": {"syncPeriod": "30s", "minSyncPeriod": "1s"}}
    periods[section] = {"syncPeriod": _go(c.sync_period), "minSyncPeriod": _go(c.min_sync_period)}
    i, t = c.ipvs, c.conntrack
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "bindAddress": c.bind_address, "bindAddressHardFail": c.bind_address_hard_fail,
        "clientConnection": {"acceptContentTypes": c.client_connection.accept_content_types,
                             "burst": c.client_connection.burst,
                             "contentType": c.client_connection.content_type,
                             "kubeconfig": c.client_connection.kubeconfig, "qps": c.client_connection.qps},
        "clusterCIDR": ",".join(c.detect_local.cluster_cidrs),
        "configSyncPeriod": _go(c.config_sync_period),
        "conntrack": {"maxPerCore": t.max_per_core, "min": t.min, "tcpBeLiberal": t.tcp_be_liberal,
                      "tcpCloseWaitTimeout": _go(t.tcp_close_wait_timeout),
                      "tcpEstablishedTimeout": _go(t.tcp_established_timeout),
                      "udpStreamTimeout": _go(t.udp_stream_timeout), "udpTimeout": _go(t.udp_timeout)},
        "detectLocal": {"bridgeInterface": c.detect_local.bridge_interface,
                        "interfaceNamePrefix": c.detect_local.interface_name_prefix},
        "detectLocalMode": c.detect_local_mode, "enableProfiling": c.enable_profiling,
        "healthzBindAddress": c.healthz_bind_address, "hostnameOverride": c.hostname_override,
        "iptables": {"localhostNodePorts": c.iptables_localhost_nodeports,
                     "masqueradeAll": c.masquerade_all and section == "iptables",
                     "masqueradeBit": c.iptables_masquerade_bit, **periods["iptables"]},
        "ipvs": {"excludeCIDRs": i.exclude_cidrs or None, "scheduler": i.scheduler, "strictARP": i.strict_arp,
                 "tcpFinTimeout": _go(i.tcp_fin_timeout), "tcpTimeout": _go(i.tcp_timeout),
                 "udpTimeout": _go(i.udp_timeout), **periods["ipvs"]},
        "logging": {"flushFrequency": 0, "format": c.logging.format, "options": {},
                    "verbosity": c.logging.verbosity},
        "metricsBindAddress": c.metrics_bind_address, "mode": c.mode,
        "nftables": {"masqueradeAll": c.masquerade_all and section == "nftables",
                     "masqueradeBit": c.nftables_masquerade_bit, **periods["nftables"]},
        "nodePortAddresses": c.node_port_addresses or None, "oomScoreAdj": c.oom_score_adj,
        "portRange": c.port_range, "showHiddenMetricsForVersion": c.show_hidden_metrics_for_version,
        "winkernel": {"enableDSR": False, "forwardHealthCheckVip": False, "networkName": "",
                      "rootHnsEndpointName": "", "sourceVip": "", **c.winkernel},
    }


def _go(seconds: float | None) -> str:
    """Seconds as Go's Duration.String() writes them (1h0m0s, 30s, 500ms, 0s)."""
    if not seconds:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{int(h)}h{int(m)}m{s:g}s"
    return f"{int(m)}m{s:g}s" if m else f"{s:g}s"
