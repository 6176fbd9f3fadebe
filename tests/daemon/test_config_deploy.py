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


def test_config_file_unknown_fields_reported_and_bad_mode_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "kpc.yaml"
    cfg.write_text(yaml.safe_dump({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                   "kind": "KubeProxyConfiguration", "mode": "ipvs",
                                   "conntrack": {"maxPerCore": 1}, "iptables": {"minSyncPeriod": "2s"}}))
    result = CliRunner().invoke(run, ["-f", str(tmp_path), "--config", str(cfg)])
    assert result.exit_code == 2
    assert "field 'conntrack' is not supported" in result.output
    assert "mode 'ipvs' is not supported" in result.output


def test_bad_duration_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(run, ["-f", str(tmp_path), "--min-sync-period", "soon"])
    assert result.exit_code == 2 and "not a duration" in result.output


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


def test_daemonset_runs_a_command_the_cli_accepts() -> None:
    ds = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    c = spec["containers"][0]
    assert c["command"][:2] == ["svcproxy", "run"]
    args = [a.replace("$(NODE_NAME)", "n1").replace("$(NODE_IP)", "10.1.2.3") for a in c["command"][2:]]
    cfg = yaml.safe_load((DEPLOY / "configmap.yaml").read_text())["data"]["config.yaml"]
    assert yaml.safe_load(cfg)["kind"] == "KubeProxyConfiguration"
    args = [a for a in args if not a.startswith("--config")]
    ctx = run.make_context("run", args)  # parses and validates every flag
    assert ctx.params["hostname_override"] == "n1"
    assert c["livenessProbe"]["httpGet"]["port"] == 10256
    assert any(v["hostPath"]["path"] == "/run/xtables.lock" for v in spec["volumes"] if "hostPath" in v)


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
