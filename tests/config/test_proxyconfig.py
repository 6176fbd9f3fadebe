"""kube-proxy 1.36's flags and config file, resolved as kube-proxy resolves them (options.go,
v1alpha1 defaults and conversion, validation, platform defaults)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from svcproxy.cli.render import render
from svcproxy.cli.run import run
from svcproxy.proxyconfig import ConfigError, OwnFlags, resolve
from svcproxy.proxyconfig.flags import BY_NAME, FLAGS
from svcproxy.proxyconfig.v1alpha1 import FIELDS, decode, encode, load

HERE = Path(__file__).parent
KUBEADM = HERE / "kubeadm-config.conf"
MANIFESTS = HERE.parents[1] / "examples" / "cluster"

# `kube-proxy --help` of 1.36.2 on Linux (shared/notes/kube-proxy-1.36-contract.md), each with a
# value to give and, where it lands in the config, the attribute and the value expected there.
HELP_FLAGS = [
    ("bind-address", "192.168.0.2", "bind_address", "192.168.0.2"),
    ("bind-address-hard-fail", "true", "bind_address_hard_fail", True),
    ("boot-id-file", "/tmp/boot_id", None, None),
    ("cleanup", "false", None, None),
    ("cluster-cidr", "10.0.0.0/8,fd00::/48", "detect_local.cluster_cidrs", ["10.0.0.0/8", "fd00::/48"]),
    ("config", str(KUBEADM), "client_connection.kubeconfig", "/var/lib/kube-proxy/kubeconfig.conf"),
    ("config-sync-period", "10m", "config_sync_period", 600.0),
    ("conntrack-max-per-core", "0", "conntrack.max_per_core", 0),
    ("conntrack-min", "1000", "conntrack.min", 1000),
    ("conntrack-tcp-be-liberal", "true", "conntrack.tcp_be_liberal", True),
    ("conntrack-tcp-timeout-close-wait", "30m", "conntrack.tcp_close_wait_timeout", 1800.0),
    ("conntrack-tcp-timeout-established", "1h0m0s", "conntrack.tcp_established_timeout", 3600.0),
    ("conntrack-udp-timeout", "30s", "conntrack.udp_timeout", 30.0),
    ("conntrack-udp-timeout-stream", "2m", "conntrack.udp_stream_timeout", 120.0),
    ("detect-local-mode", "NodeCIDR", "detect_local_mode", "NodeCIDR"),
    ("feature-gates", "SomeGate=true,Other=false", "feature_gates", {"SomeGate": True, "Other": False}),
    ("healthz-bind-address", "127.0.0.1:10266", "healthz_bind_address", "127.0.0.1:10266"),
    ("hostname-override", "  Node-A ", "hostname_override", "node-a"),
    ("init-only", "false", None, None),
    ("iptables-localhost-nodeports", "false", "iptables_localhost_nodeports", False),
    ("iptables-masquerade-bit", "5", "iptables_masquerade_bit", 5),
    ("iptables-min-sync-period", "0s", "min_sync_period", 0.0),
    ("iptables-sync-period", "45s", "sync_period", 45.0),
    ("ipvs-exclude-cidrs", "10.1.0.0/16", "ipvs.exclude_cidrs", ["10.1.0.0/16"]),
    ("ipvs-min-sync-period", "2s", None, None),
    ("ipvs-scheduler", "rr", "ipvs.scheduler", "rr"),
    ("ipvs-strict-arp", "true", "ipvs.strict_arp", True),
    ("ipvs-sync-period", "40s", None, None),
    ("ipvs-tcp-timeout", "5s", "ipvs.tcp_timeout", 5.0),
    ("ipvs-tcpfin-timeout", "5s", "ipvs.tcp_fin_timeout", 5.0),
    ("ipvs-udp-timeout", "5s", "ipvs.udp_timeout", 5.0),
    ("kube-api-burst", "20", "client_connection.burst", 20),
    ("kube-api-content-type", "application/json", "client_connection.content_type", "application/json"),
    ("kube-api-qps", "7.5", "client_connection.qps", 7.5),
    ("kubeconfig", "/etc/kube/config", "client_connection.kubeconfig", "/etc/kube/config"),
    ("log-flush-frequency", "3s", "logging.flush_frequency", 3.0),
    ("log-json-info-buffer-size", "0", None, None),
    ("log-json-split-stream", "true", None, None),
    ("log-text-info-buffer-size", "0", None, None),
    ("log-text-split-stream", "true", None, None),
    ("logging-format", "json", "logging.format", "json"),
    ("machine-id-file", "/etc/machine-id", None, None),
    ("masquerade-all", "true", "masquerade_all", True),
    ("master", "https://10.0.0.1:6443", None, None),
    ("metrics-bind-address", "0.0.0.0:10249", "metrics_bind_address", "0.0.0.0:10249"),
    ("nodeport-addresses", "192.168.0.0/24,fd00::/64", "node_port_addresses", ["192.168.0.0/24", "fd00::/64"]),
    ("oom-score-adj", "-500", "oom_score_adj", -500),
    ("pod-bridge-interface", "cni0", "detect_local.bridge_interface", "cni0"),
    ("pod-interface-name-prefix", "veth", "detect_local.interface_name_prefix", "veth"),
    ("profiling", "true", "enable_profiling", True),
    ("proxy-mode", "nftables", "mode", "nftables"),
    ("show-hidden-metrics-for-version", "1.35", "show_hidden_metrics_for_version", "1.35"),
    ("v", "4", "logging.verbosity", 4),
    ("vmodule", "proxier=5", "logging.vmodule", ["proxier=5"]),
    ("write-config-to", "/tmp/out.yaml", None, None),
]


def _get(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_kube_proxy_flag_has_a_row() -> None:
    assert {f.name for f in FLAGS} - {"healthz-port", "metrics-port"} == {row[0] for row in HELP_FLAGS}


@pytest.mark.parametrize(("flag", "text", "attr", "want"), HELP_FLAGS, ids=[r[0] for r in HELP_FLAGS])
def test_each_flag_is_accepted_and_lands_where_kube_proxy_puts_it(flag: str, text: str, attr: str | None,
                                                                  want: object) -> None:
    args = [f"--{flag}={text}"] + (["--detect-local-mode=BridgeInterface"] if flag == "pod-bridge-interface" else [])
    ctx = run.make_context("run", args)
    from svcproxy.cli.options import settings_from

    settings = settings_from(dict(ctx.params), ("iptables", "nftables", "userspace"))
    if attr is not None:
        assert _get(settings.config, attr) == want
    if BY_NAME[flag].no_effect:  # accepted, and said once
        assert any(f"--{flag} has no effect" in n for n in settings.notes)


@pytest.mark.parametrize("text", ["true", "True", "1", "t", "TRUE", "false", "0", "F"])
def test_booleans_are_go_booleans(text: str) -> None:
    ctx = run.make_context("run", [f"--masquerade-all={text}"])
    from svcproxy.cli.options import settings_from

    assert settings_from(dict(ctx.params), ("iptables",)).config.masquerade_all == (text in ("true", "True", "1",
                                                                                          "t", "TRUE"))


def test_bare_boolean_flag_means_true() -> None:
    ctx = run.make_context("run", ["--masquerade-all", "-f", "x"])
    assert ctx.params["kp_masquerade_all"] == "true" and ctx.params["paths"] == ("x",)


@pytest.mark.parametrize(("args", "words"), [
    (["--masquerade-all=yes"], ["--masquerade-all", "not a boolean"]),
    (["--iptables-sync-period=30"], ["--iptables-sync-period", "not a duration"]),
    (["--conntrack-min=lots"], ["--conntrack-min", "not an integer"]),
    (["--bind-address=node"], ["--bind-address", "not an IP"]),
    (["--healthz-bind-address=here:1"], ["--healthz-bind-address", "IP:port"]),
    (["--feature-gates=Foo"], ["--feature-gates", "Name=true"]),
])
def test_bad_flag_values_name_the_flag(args: list[str], words: list[str]) -> None:
    result = CliRunner().invoke(render, ["-f", str(MANIFESTS), *args])
    assert result.exit_code == 2
    for w in words:
        assert w in result.output


@pytest.mark.parametrize(("given", "problem"), [
    ({"iptables-masquerade-bit": 32}, "iptables.masqueradeBit: 32 must be within the range [0, 31]"),
    ({"oom-score-adj": 1001}, "oomScoreAdj: 1001 must be within the range [-1000, 1000]"),
    ({"conntrack-min": -1}, "conntrack.min: -1 must be greater than or equal to 0"),
    ({"proxy-mode": "kernelspace"}, "mode: 'kernelspace' must be iptables, ipvs, nftables or blank"),
    ({"iptables-sync-period": 0.5, "iptables-min-sync-period": 1.0}, "syncPeriod: must be greater than or "
                                                                      "equal to minSyncPeriod"),
    ({"iptables-sync-period": 0.0}, "syncPeriod: must be greater than 0"),
    ({"nodeport-addresses": ["primary", "10.0.0.0/8"]}, "can't use both 'primary' and CIDRs"),
    ({"nodeport-addresses": ["10.0.0.1/33"]}, "nodePortAddresses[0]: '10.0.0.1/33' must be a valid CIDR"),
    ({"detect-local-mode": "Magic"}, "detectLocalMode: 'Magic' is not supported"),
    ({"detect-local-mode": "BridgeInterface"}, "detectLocal.bridgeInterface: must not be empty"),
    ({"detect-local-mode": "InterfaceNamePrefix"}, "detectLocal.interfaceNamePrefix: must not be empty"),
    ({"cluster-cidr": "10.0.0.0/8,10.1.0.0/16"}, "must be either a single CIDR or a dual-stack pair"),
    ({"cluster-cidr": "10.0.0.0/40"}, "clusterCIDR[0]: '10.0.0.0/40' must be a valid CIDR block"),
    ({"healthz-bind-address": "0.0.0.0:70000"}, "healthzBindAddress: '70000' must be a valid port"),
    ({"kube-api-burst": -1}, "clientConnection.burst: -1 must be greater than or equal to 0"),
    ({"logging-format": "xml"}, "logging.format: 'xml' must be text or json"),
])
def test_validation_names_the_field(given: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve(given)
    assert problem in str(e.value)


def test_defaults_are_kube_proxys() -> None:
    s = resolve({})
    c = s.config
    assert (c.mode, s.mode, c.detect_local_mode) == ("iptables", "iptables", "ClusterCIDR")
    assert (c.sync_period, c.min_sync_period, c.config_sync_period) == (30.0, 1.0, 900.0)
    assert (c.healthz_bind_address, c.metrics_bind_address) == ("0.0.0.0:10256", "127.0.0.1:10249")
    assert (c.conntrack.max_per_core, c.conntrack.min) == (32768, 131072)
    assert (c.conntrack.tcp_established_timeout, c.conntrack.tcp_close_wait_timeout) == (86400.0, 3600.0)
    assert (c.oom_score_adj, c.masquerade_bit, c.iptables_localhost_nodeports) == (-999, 14, True)
    assert c.node_port_addresses == []
    assert resolve({"proxy-mode": "nftables"}).config.node_port_addresses == ["primary"]


def test_ipv6_bind_address_moves_the_default_listeners_only_in_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                 "kind": "KubeProxyConfiguration", "bindAddress": "fd00::2"}))
    c = resolve({"config": str(f)}).config
    assert (c.healthz_bind_address, c.metrics_bind_address) == ("[::]:10256", "[::1]:10249")
    s = resolve({"config": str(f)})
    assert s.node.node_ips == ("fd00::2",) and s.node.ip_family == 6


def test_deprecated_port_flags() -> None:
    c = resolve({"healthz-port": 0, "metrics-port": 9999}).config
    assert (c.healthz_bind_address, c.metrics_bind_address) == ("", "127.0.0.1:9999")
    assert resolve({"healthz-bind-address": "10.0.0.1"}).config.healthz_bind_address == "10.0.0.1:10256"


def test_mode_specific_sync_flags_apply_to_their_modes_only() -> None:
    assert resolve({"proxy-mode": "nftables", "iptables-sync-period": 45.0}).config.sync_period == 45.0
    assert resolve({"ipvs-sync-period": 45.0}).config.sync_period == 30.0
    ipvs = resolve({"proxy-mode": "ipvs", "ipvs-sync-period": 45.0, "iptables-sync-period": 50.0})
    assert ipvs.config.sync_period == 45.0
    assert ipvs.mode == "iptables" and any("no ipvs mode" in n for n in ipvs.notes)


def test_masquerade_bit_flag_is_iptables_only() -> None:
    assert resolve({"proxy-mode": "nftables", "iptables-masquerade-bit": 3}).node.masquerade_bit == 14
    assert resolve({"proxy-mode": "iptables", "iptables-masquerade-bit": 3}).node.masquerade_bit == 3


# ---- the config file


def _file(tmp_path: Path, **fields: object) -> str:
    f = tmp_path / "config.conf"
    f.write_text(yaml.safe_dump({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                 "kind": "KubeProxyConfiguration", **fields}))
    return str(f)


def test_kubeadm_file_resolves_to_kube_proxys_defaults() -> None:
    s = resolve({"config": str(KUBEADM)})
    c = s.config
    assert c.client_connection.kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf"
    assert (c.client_connection.qps, c.client_connection.burst) == (5.0, 10)
    assert c.detect_local.cluster_cidrs == ["10.244.0.0/16"] and s.node.cluster_cidrs == ("10.244.0.0/16",)
    assert (c.sync_period, c.min_sync_period, c.config_sync_period) == (30.0, 1.0, 900.0)
    assert (c.healthz_bind_address, c.metrics_bind_address) == ("0.0.0.0:10256", "127.0.0.1:10249")
    assert (c.conntrack.max_per_core, c.conntrack.tcp_established_timeout) == (32768, 86400.0)
    assert (c.oom_score_adj, c.iptables_masquerade_bit, c.iptables_localhost_nodeports) == (-999, 14, True)
    assert s.mode == "iptables" and not [n for n in s.notes if "not a KubeProxyConfiguration field" in n]


@pytest.mark.parametrize("mode", ["iptables", "nftables", ""])
def test_both_mode_sections_the_active_one_wins(tmp_path: Path, mode: str) -> None:
    path = _file(tmp_path, mode=mode,
                 iptables={"masqueradeAll": True, "masqueradeBit": 3, "syncPeriod": "10s", "minSyncPeriod": "2s"},
                 nftables={"masqueradeAll": False, "masqueradeBit": 7, "syncPeriod": "20s", "minSyncPeriod": "3s"})
    s = resolve({"config": path})
    nft = mode == "nftables"
    assert s.config.masquerade_all is (not nft) and s.node.masquerade_all is (not nft)
    assert s.node.masquerade_bit == (7 if nft else 3)
    assert (s.config.sync_period, s.config.min_sync_period) == ((20.0, 3.0) if nft else (10.0, 2.0))


def test_file_wins_over_flags_except_hostname_and_logging(tmp_path: Path) -> None:
    path = _file(tmp_path, mode="nftables", hostnameOverride="from-file", clusterCIDR="10.0.0.0/8")
    s = resolve({"config": path, "proxy-mode": "iptables", "masquerade-all": True, "hostname-override": "From-Flag",
                 "v": 3, "cluster-cidr": "10.9.0.0/16"})
    assert s.mode == "nftables" and s.config.masquerade_all is False
    assert s.node.hostname == "from-flag" and s.config.logging.verbosity == 3
    assert s.node.cluster_cidrs == ("10.0.0.0/8",)
    for flag in ("--proxy-mode", "--masquerade-all", "--cluster-cidr"):
        assert any(n.startswith(f"{flag} is ignored because --config is given") for n in s.notes)


def test_file_hostname_is_lowercased_and_trimmed(tmp_path: Path) -> None:
    assert resolve({"config": _file(tmp_path, hostnameOverride=" Node-B ")}).node.hostname == "node-b"


def test_svcproxy_own_flags_apply_on_top_of_the_file(tmp_path: Path) -> None:
    s = resolve({"config": _file(tmp_path, mode="nftables")},
                OwnFlags(nftables_layout="maps", sync_period=60.0, node_ips=("192.168.0.2",)))
    assert (s.node.nftables_layout, s.config.sync_period, s.node.primary_ip) == ("maps", 60.0, "192.168.0.2")


def _sample(path: str, parse: object) -> object:
    from svcproxy.proxyconfig import v1alpha1 as v

    samples = {v._str: "x", v._bool: True, v._int: 3, v._float: 2.5, v._duration: "7s",
               v._strings: ["10.0.0.0/8"], v._bool_map: {"G": True}, v._any: 1}
    return samples[parse]  # type: ignore[index]


@pytest.mark.parametrize("field", FIELDS, ids=[f.path for f in FIELDS])
def test_every_field_is_read_and_a_wrong_type_is_named(field) -> None:  # type: ignore[no-untyped-def]
    def doc(value: object) -> dict:
        head, _, tail = field.path.partition(".")
        body = {head: {tail: value}} if tail else {head: value}
        return {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", **body}

    values, unknown = decode(doc(_sample(field.path, field.parse)), "f.yaml")
    assert field.path in values and not unknown
    from svcproxy.proxyconfig import v1alpha1 as v

    if field.parse is v._any:
        return
    wrong = 12 if field.parse is v._str else "twelve"
    with pytest.raises(ConfigError) as e:
        decode(doc(wrong), "f.yaml")
    assert f"f.yaml: {field.path}:" in str(e.value)


def test_unknown_fields_are_reported_not_fatal(tmp_path: Path) -> None:
    s = resolve({"config": _file(tmp_path, mystery=1, iptables={"turbo": True})})
    assert any("'mystery'" in n for n in s.notes) and any("'iptables.turbo'" in n for n in s.notes)


@pytest.mark.parametrize(("doc", "words"), [
    ("kind: Service\napiVersion: v1\n", "kind is 'Service'"),
    ("kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha2\n", "apiVersion is"),
    ("kind: KubeProxyConfiguration\n  bad: [", "not valid YAML"),
    ("[1, 2]", "not a KubeProxyConfiguration"),
])
def test_bad_files_say_what_is_wrong(tmp_path: Path, doc: str, words: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(doc)
    with pytest.raises(ConfigError) as e:
        load(str(f))
    assert words in str(e.value) and str(f) in str(e.value)


def test_write_config_to_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "written.yaml"
    result = CliRunner().invoke(run, ["--proxy-mode=nftables", "--masquerade-all", "--iptables-sync-period=45s",
                                      "--cluster-cidr=10.0.0.0/8", "--conntrack-min=5000",
                                      f"--write-config-to={out}"])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text())
    assert doc["nftables"]["masqueradeAll"] is True and doc["nftables"]["syncPeriod"] == "45s"
    assert doc["iptables"]["masqueradeAll"] is False and doc["clusterCIDR"] == "10.0.0.0/8"
    again = resolve({"config": str(out)}).config
    first = resolve({"proxy-mode": "nftables", "masquerade-all": True, "iptables-sync-period": 45.0,
                     "cluster-cidr": "10.0.0.0/8", "conntrack-min": 5000}).config
    assert encode(again) == encode(first)


def test_render_takes_the_files_mode(tmp_path: Path) -> None:
    path = _file(tmp_path, mode="nftables", clusterCIDR="10.0.0.0/8")
    result = CliRunner().invoke(render, ["-f", str(MANIFESTS), "--config", path, "--bind-address", "192.168.0.2"])
    assert result.exit_code == 0
    assert result.stdout.startswith("table ip kube-proxy") or "table ip kube-proxy" in result.stdout
    assert "--bind-address is ignored because --config is given" in result.stderr


def test_invoked_as_kube_proxy_it_runs(tmp_path: Path) -> None:
    """The image installs svcproxy as /usr/local/bin/kube-proxy: kubeadm's command line works."""
    link = tmp_path / "kube-proxy"
    link.symlink_to(Path(sys.executable).parent / "svcproxy")
    out = tmp_path / "c.yaml"
    done = subprocess.run([str(link), f"--config={KUBEADM}", "--hostname-override=Node-1",
                           f"--write-config-to={out}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(out.read_text())
    assert written["hostnameOverride"] == "node-1" and written["clusterCIDR"] == "10.244.0.0/16"


def test_migrating_doc_lists_every_flag_and_field() -> None:
    doc = (HERE.parents[1] / "docs" / "migrating.md").read_text()
    for flag in FLAGS:
        assert f"`--{flag.name}`" in doc or f"`-{flag.name}`" in doc, flag.name
    for f in FIELDS:
        head, _, tail = f.path.partition(".")
        assert f"`{f.path}`" in doc or (tail and head in doc and f".{tail}" in doc), f.path


def test_run_answers_version_as_kube_proxy_does() -> None:
    result = CliRunner().invoke(run, ["--version"])
    assert result.exit_code == 0 and "kube-proxy 1.36 compatible" in result.output


def test_render_takes_node_ips_from_the_node_object(tmp_path: Path) -> None:
    """nftables mode answers NodePorts on the primary IP; without --node-ip it is the Node's."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np", "namespace": "default"},
           "spec": {"type": "NodePort", "clusterIP": "172.30.0.40",
                    "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}}
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "test-node"},
            "status": {"addresses": [{"type": "Hostname", "address": "test-node"},
                                     {"type": "InternalIP", "address": "192.168.0.2"}]}}
    (tmp_path / "svc.yaml").write_text(yaml.safe_dump(svc))
    args = ["-f", str(tmp_path), "--proxy-mode=nftables", "--hostname-override=test-node"]
    without = CliRunner().invoke(render, args)
    assert "NodePorts answer on every local address" in without.stderr
    assert "192.168.0.2" not in without.stdout
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(node))
    with_node = CliRunner().invoke(render, args)
    assert with_node.exit_code == 0 and "NodePorts answer on every local address" not in with_node.stderr
    assert "192.168.0.2" in with_node.stdout


def test_ebpf_mode_reads_the_nftables_section(tmp_path: Path) -> None:
    """ebpf mode runs the nftables maps layout for outside traffic: nftables' section, mark
    bit and NodePort default apply, as for nftables mode."""
    path = _file(tmp_path, mode="ebpf", iptables={"masqueradeAll": True, "masqueradeBit": 3, "syncPeriod": "10s"},
                 nftables={"masqueradeAll": False, "masqueradeBit": 7, "syncPeriod": "20s"})
    s = resolve({"config": path})
    assert (s.mode, s.node.masquerade_bit, s.node.masquerade_all, s.config.sync_period) == ("ebpf", 7, False, 20.0)
    assert s.config.node_port_addresses == ["primary"]
    written = yaml.safe_load(yaml.safe_dump(encode(s.config)))
    assert written["nftables"]["syncPeriod"] == "20s" and written["iptables"]["syncPeriod"] == "30s"


def test_bpf_cgroup_reaches_the_node_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    import svcproxy.cli.run as run_module

    monkeypatch.setattr(run_module, "_run_daemon", lambda paths, status, detect, settings: seen.update(
        cgroup=settings.node.bpf_cgroup, mode=settings.mode))
    result = CliRunner().invoke(run, ["-f", str(tmp_path), "--proxy-mode=ebpf", "--bpf-cgroup", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == {"cgroup": str(tmp_path), "mode": "ebpf"}
