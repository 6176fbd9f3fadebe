"""--config (KubeProxyConfiguration) handling, and the deploy/ manifests being consistent with the CLI."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from svcproxy.cli.run import run
from svcproxy.runtime.durations import parse_duration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_durations_as_kube_proxy_writes_them() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m30s") == 90
    assert parse_duration("2h") == 7200
    assert parse_duration(3) == 3
    for bad in ("", "1x", "fast"):
        try:
            parse_duration(bad)
        except ValueError as e:
            assert "duration" in str(e)
        else:
            raise AssertionError(bad)


def test_config_file_bad_mode_refused_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "kpc.yaml"
    cfg.write_text(yaml.safe_dump({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                   "kind": "KubeProxyConfiguration", "mode": "kernelspace",
                                   "conntrack": {"maxPerCore": 1}, "iptables": {"minSyncPeriod": "2s"}}))
    result = CliRunner().invoke(run, ["-f", str(tmp_path), "--config", str(cfg)])
    assert result.exit_code == 1
    assert "mode: 'kernelspace' must be iptables, ipvs, nftables or blank" in result.output


def test_bad_duration_flag_is_a_usage_error(tmp_path: Path) -> None:
    for flag in ("--min-sync-period", "--iptables-min-sync-period"):
        result = CliRunner().invoke(run, ["-f", str(tmp_path), flag, "soon"])
        assert result.exit_code == 2 and "not a duration" in result.output and flag in result.output


def test_no_source_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(run, [])
    assert result.exit_code == 2
    assert "--kubeconfig" in result.output and "-f PATH" in result.output


def test_rbac_is_least_privilege() -> None:
    """Reads, plus the one write kube-proxy's Events need (create, as svcproxy's recorder does)."""
    docs = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == {("", "services", "list"), ("", "services", "watch"),
                       ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
                       ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch"),
                       ("networking.k8s.io", "servicecidrs", "list"), ("networking.k8s.io", "servicecidrs", "watch"),
                       ("events.k8s.io", "events", "create")}


def _containers(spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def test_daemonset_has_kube_proxys_shape_and_a_command_the_cli_accepts(tmp_path: Path) -> None:
    """kubeadm's command line, ConfigMap keys and mounts; an --init-only init container."""
    from svcproxy.cli.options import settings_from

    ds = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    data = yaml.safe_load((DEPLOY / "configmap.yaml").read_text())["data"]
    (tmp_path / "config.conf").write_text(data["config.conf"])
    containers = _containers(spec)
    assert containers["node-setup"]["securityContext"]["privileged"] is True
    assert "--init-only" in containers["node-setup"]["command"]
    assert "privileged" not in containers["svcproxy"]["securityContext"]
    for c in containers.values():
        assert c["command"][0] == "/usr/local/bin/kube-proxy"
        assert "/var/lib/kube-proxy" in {m["mountPath"] for m in c["volumeMounts"]}
        args = [a.replace("$(NODE_NAME)", "Node-1").replace("/var/lib/kube-proxy", str(tmp_path))
                for a in c["command"][1:]]
        settings = settings_from(dict(run.make_context("run", args).params), ("iptables", "nftables"))
        assert settings.node.hostname == "node-1" and settings.node.cluster_cidrs == ("10.244.0.0/16",)
        assert settings.config.client_connection.kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf"
        assert not [n for n in settings.notes if "not a KubeProxyConfiguration field" in n]
    main = containers["svcproxy"]
    assert main["livenessProbe"]["httpGet"]["port"] == 10256
    assert main["readinessProbe"]["initialDelaySeconds"] > 0
    assert any(v["hostPath"]["path"] == "/run/xtables.lock" for v in spec["volumes"] if "hostPath" in v)


def test_deploy_kubeconfig_names_the_control_plane_not_a_cluster_ip() -> None:
    data = yaml.safe_load((DEPLOY / "configmap.yaml").read_text())["data"]
    kc = yaml.safe_load(data["kubeconfig.conf"])
    server = kc["clusters"][0]["cluster"]["server"]
    assert server.startswith("https://") and "kubernetes.default" not in server
    assert kc["users"][0]["user"]["tokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kust["images"][0]["name"] == "svcproxy" and "/" in kust["images"][0]["newName"]


def test_image_installs_kube_proxy_and_cairo() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert "libcairo2" in text and "/usr/local/bin/kube-proxy" in text and "iptables-wrapper" in text
    workdirs = [line.split()[1] for line in text.splitlines() if line.startswith("WORKDIR")]
    assert workdirs[-1] == "/"


def test_kubeconfig_gives_url_tls_and_auth(tmp_path: Path) -> None:
    from svcproxy.sources.apiclient import ApiConfigError, load_api_config

    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://10.9.8.7:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "s3cret"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    api = load_api_config(str(kc))
    assert api.host == "https://10.9.8.7:6443"
    assert api.ssl_context is False, "insecure-skip-tls-verify turns verification off"
    assert api.headers()["Authorization"] == "Bearer s3cret"
    assert load_api_config(str(kc), "http://127.0.0.1:18080").host == "http://127.0.0.1:18080", "--master wins"
    try:
        load_api_config(str(tmp_path / "missing"))
    except ApiConfigError as e:
        assert "no such file" in str(e)
    else:
        raise AssertionError("a missing kubeconfig is an error")
