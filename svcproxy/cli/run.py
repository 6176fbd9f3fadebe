"""`svcproxy run`: the node daemon, fed by manifests (-f) or a Kubernetes API server."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import Any

import click

from ..dataplane import RUN_MODES
from ..runtime.daemon import DEFAULT_MIN_SYNC_PERIOD, DEFAULT_SYNC_PERIOD, DaemonOptions, run_daemon
from ..runtime.durations import format_duration, parse_duration
from .options import manifest_option, node_config, node_options


def _duration(ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@manifest_option()
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False),
              help="kubeconfig file to reach the API server (default: $KUBECONFIG, then in-cluster).")
@click.option("--master", default=None, help="API server URL (overrides the kubeconfig's server).")
@click.option("--healthz-bind-address", default="0.0.0.0:10256", show_default=True,
              help="host:port for /healthz and /livez; empty to disable.")
@click.option("--metrics-bind-address", default="127.0.0.1:10249", show_default=True,
              help="host:port for Prometheus /metrics; empty to disable.")
@click.option("--status-bind-address", default="127.0.0.1:10257", show_default=True,
              help="host:port for the status page (what this node programmed, traffic per endpoint, "
                   "a trace form); read-only; empty to disable.")
@click.option("--sync-period", default=format_duration(DEFAULT_SYNC_PERIOD), show_default=True,
              callback=_duration, help="How often a full resync repairs the rules (e.g. 30s, 1m).")
@click.option("--min-sync-period", default=format_duration(DEFAULT_MIN_SYNC_PERIOD), show_default=True,
              callback=_duration, help="Minimum time between syncs; bursts of changes are coalesced.")
@click.option("--detect-local-addresses/--no-detect-local-addresses", default=True, show_default=True,
              help="Read this node's addresses from the kernel (adds to --local-address).")
@click.option("-v", "--v", "verbosity", default=0, type=int, help="Log verbosity (0: info; 1+: debug).")
@node_options(modes=RUN_MODES)
def run(paths: tuple[str, ...], kubeconfig: str | None, master: str | None, healthz_bind_address: str,
        metrics_bind_address: str, status_bind_address: str, sync_period: float, min_sync_period: float,
        detect_local_addresses: bool, verbosity: int, proxy_mode: str, **params: Any) -> None:
    """Run the node daemon: follow the sources and keep this node's rules in step with them.

    Sources: -f PATH (files/directories, watched), or the Kubernetes API (--kubeconfig,
    $KUBECONFIG, --master, or the in-cluster service account). SIGTERM stops the daemon and
    leaves the rules in place.
    """
    logging.basicConfig(level=logging.DEBUG if verbosity > 0 else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s")
    ctx = click.get_current_context()
    values: dict[str, Any] = {"proxy_mode": proxy_mode, "sync_period": sync_period,
                              "min_sync_period": min_sync_period, "kubeconfig": kubeconfig,
                              "healthz_bind_address": healthz_bind_address,
                              "metrics_bind_address": metrics_bind_address,
                              "status_bind_address": status_bind_address, **params}
    if params.get("config_file"):
        from .config_file import apply_config_file

        values = apply_config_file(params["config_file"], values, ctx)
        if values["proxy_mode"] not in RUN_MODES:
            raise click.UsageError(f"{params['config_file']}: mode {values['proxy_mode']!r} is not supported "
                                   f"(svcproxy implements {', '.join(RUN_MODES)})")
        for name in ("sync_period", "min_sync_period"):
            values[name] = _duration(ctx, None, values[name])  # type: ignore[arg-type]
    cfg = node_config({**values, "config_file": None})
    from ..runtime.addresses import kernel_addresses, kernel_links, node_address_families, run_families

    links = kernel_links() if detect_local_addresses else []
    if detect_local_addresses:
        extra = tuple(a for a in kernel_addresses(links) if a not in cfg.local_addresses and a not in cfg.node_ips)
        cfg = replace(cfg, local_addresses=cfg.local_addresses + extra)
    explicit = int(values["ip_family"][-1]) if values.get("ip_family") else None
    families = run_families(explicit, cfg.ip_family, [*cfg.node_ips, *cfg.cluster_cidrs],
                            node_address_families(links))
    cfg = replace(cfg, ip_family=families[0])

    sources: list[Any] = []
    if paths:
        from ..sources.manifests import ManifestSource

        try:
            sources.append(ManifestSource(paths))
        except FileNotFoundError as e:
            raise click.UsageError(str(e)) from None
    kubeconfig = values.get("kubeconfig")
    if kubeconfig or master or not paths:
        from ..sources.apiclient import ApiConfigError, load_api_config
        from ..sources.kubernetes import ApiSource

        try:
            api = load_api_config(kubeconfig or os.environ.get("KUBECONFIG"), master)
        except ApiConfigError as e:
            raise click.UsageError(f"{e} (or give -f PATH to run from manifests)") from None
        sources.append(ApiSource(api, cfg.hostname))
    logging.getLogger("svcproxy").info(
        "svcproxy run: mode %s, node %s (%s), min-sync-period %s, sync-period %s",
        values["proxy_mode"], cfg.hostname, " + ".join(f"IPv{f}" for f in families) +
        (" dual-stack" if len(families) > 1 else ""), format_duration(values["min_sync_period"]),
        format_duration(values["sync_period"]))
    run_daemon(DaemonOptions(
        cfg=cfg, mode=values["proxy_mode"], sources=sources, min_sync_period=values["min_sync_period"],
        sync_period=values["sync_period"], families=families, healthz_bind_address=values["healthz_bind_address"],
        metrics_bind_address=values["metrics_bind_address"], status_bind_address=values["status_bind_address"]))
