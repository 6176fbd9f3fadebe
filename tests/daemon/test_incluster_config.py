"""In-cluster config: the service account's token and CA plus KUBERNETES_SERVICE_HOST/PORT."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from svcproxy.sources.apiclient import ApiConfigError, load_api_config


@pytest.fixture
def service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import kubernetes.config.incluster_config as incluster

    ca, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
                    "-keyout", str(key), "-out", str(ca)], check=True, capture_output=True)
    token = tmp_path / "token"
    token.write_text("sa-token-1")
    monkeypatch.setattr(incluster, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster, "SERVICE_CERT_FILENAME", str(ca))
    return token


def test_in_cluster_config(service_account: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api = load_api_config()
    assert api.host == "https://10.96.0.1:443"
    assert isinstance(api.ssl_context, ssl.SSLContext) and api.ssl_context.verify_mode == ssl.CERT_REQUIRED
    scheme, token = api.headers()["Authorization"].split(" ")
    assert scheme.lower() == "bearer" and token == "sa-token-1"  # the client writes "bearer"; schemes are case-insensitive


def test_not_in_a_cluster_says_what_to_do(service_account: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(ApiConfigError, match="give --kubeconfig FILE or --master URL"):
        load_api_config()
