"""How to reach the Kubernetes API: config and auth from the kubernetes client, transport on aiohttp.

The kubernetes library resolves kubeconfig files (--kubeconfig, $KUBECONFIG), exec/token
plugins and in-cluster service-account config into a Configuration; from it we take the
server URL, TLS settings and the Authorization header, and speak plain HTTP list/watch with
aiohttp, reading raw JSON straight into svcproxy's light model objects.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field


class ApiConfigError(RuntimeError):
    """No usable way to reach an API server."""


@dataclass
class ApiConfig:
    host: str  # https://10.0.0.1:6443
    ssl_context: ssl.SSLContext | bool | None = None  # None: plain http or default verification
    auth: Callable[[], dict[str, str]] = field(default=lambda: {})  # fresh headers per request (token rotation)
    server_hostname: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json", "User-Agent": "svcproxy", **self.auth()}


def from_configuration(c) -> ApiConfig:  # c: kubernetes.client.Configuration
    """Turn a kubernetes Configuration into what aiohttp needs: URL, TLS context, auth headers."""
    host = c.host.rstrip("/")
    ctx: ssl.SSLContext | bool | None = None
    if host.startswith("https"):
        if not c.verify_ssl:
            ctx = False
        else:
            ctx = ssl.create_default_context(cafile=c.ssl_ca_cert or None, cadata=getattr(c, "ca_cert_data", None))
            if getattr(c, "assert_hostname", None) is False:
                ctx.check_hostname = False
        if c.cert_file:
            if not isinstance(ctx, ssl.SSLContext):
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.load_cert_chain(c.cert_file, c.key_file)

    def auth() -> dict[str, str]:
        # runs the refresh hook (token files rotate); newer clients store it as "BearerToken"
        token = c.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            return {"Authorization": token}
        if c.username or c.password:
            return {"Authorization": c.get_basic_auth_token()}
        return {}

    return ApiConfig(host=host, ssl_context=ctx, auth=auth, server_hostname=getattr(c, "tls_server_name", None))


def load_api_config(kubeconfig: str | None = None, master: str | None = None) -> ApiConfig:
    """kube-proxy's order: --kubeconfig (or $KUBECONFIG), else in-cluster; --master overrides the URL."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    c = client.Configuration()
    if kubeconfig:
        if not os.path.exists(kubeconfig):
            raise ApiConfigError(f"kubeconfig {kubeconfig}: no such file")
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=c, persist_config=False)
        except (ConfigException, OSError, ValueError) as e:
            raise ApiConfigError(f"kubeconfig {kubeconfig}: {e}") from None
    elif master:
        c.host = master
    else:
        try:
            config.load_incluster_config(client_configuration=c)
        except ConfigException as e:
            raise ApiConfigError(f"no API server configured: not in a cluster ({e}); "
                                 "give --kubeconfig FILE or --master URL") from None
    if master:
        c.host = master
    return from_configuration(c)
