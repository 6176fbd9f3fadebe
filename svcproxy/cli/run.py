"""`svcproxy run` (also `kube-proxy` when invoked under that name): the node daemon, fed by
manifests (-f) or a Kubernetes API server, configured as kube-proxy is (its flags, --config)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import click
import yaml

from ..config import NodeConfig
from ..dataplane import RUN_MODES
from ..proxyconfig import Settings
from ..proxyconfig.model import Conntrack
from ..proxyconfig.v1alpha1 import encode
from ..runtime.durations import format_duration
from ..runtime.logsetup import setup_logging
from ..runtime.status import DEFAULT_BIND_ADDRESS
from .options import manifest_option, proxy_options

log = logging.getLogger("svcproxy")


@click.command()
@click.version_option(package_name="svcproxy", message="svcproxy %(version)s (kube-proxy 1.36 compatible)")
@manifest_option()
@click.option("--status-bind-address", default=DEFAULT_BIND_ADDRESS, show_default=True,
              help="[svcproxy] host:port for the status page (what this node programmed, traffic per "
                   "endpoint, a trace form); read-only; empty to disable.")
@click.option("--detect-local-addresses/--no-detect-local-addresses", default=True, show_default=True,
              help="[svcproxy] Read this node's addresses from the kernel (adds to --local-address).")
@click.option("--bpf-cgroup", default="", type=click.Path(file_okay=False),
              help="[svcproxy] ebpf mode: the cgroup v2 directory whose processes' connections the BPF "
                   "programs balance (default: the hierarchy's root, every process).")
@proxy_options(modes=RUN_MODES)
def run(paths: tuple[str, ...], status_bind_address: str, detect_local_addresses: bool, bpf_cgroup: str,
        settings: Settings) -> None:
    """Run the node daemon: follow the sources and keep this node's rules in step with them.

    Takes every kube-proxy 1.36 flag and its --config file, with kube-proxy's precedence (the
    file wins over flags other than --hostname-override and logging). Sources: -f PATH
    (files/directories, watched), or the Kubernetes API (clientConnection.kubeconfig /
    --kubeconfig, $KUBECONFIG, --master, or the in-cluster service account). SIGTERM stops the
    daemon and leaves the rules in place; a change to the --config file stops it with an error,
    so that its pod restarts with the new file, as kube-proxy does.
    """
    c = settings.config
    setup_logging(c.logging.verbosity, c.logging.format)
    for note in settings.notes:
        log.warning("%s", note)
    if settings.write_config_to:
        _write_config(settings)
        return
    if settings.cleanup:
        from .cleanup import cleanup_everything

        raise SystemExit(0 if cleanup_everything(echo=log.info) else 1)
    if settings.init_only:
        _init_only(settings, detect_local_addresses)
        return
    if bpf_cgroup:
        settings.node = replace(settings.node, bpf_cgroup=bpf_cgroup)
    _run_daemon(paths, status_bind_address, detect_local_addresses, settings)


def _conntrack(settings: Settings) -> Conntrack:
    return replace(settings.config.conntrack)  # a copy: the daemon's to keep


def _node(settings: Settings, detect_local_addresses: bool) -> tuple[NodeConfig, tuple[int, ...]]:
    """This node's config completed from the kernel (its other addresses) and the IP families to
    program, primary first (its ip_family is the primary's): shared by the daemon and --init-only."""
    from ..runtime.addresses import (
        kernel_addresses,
        kernel_links,
        node_address_families,
        platform_families,
        run_families,
    )

    cfg = settings.node
    links = kernel_links() if detect_local_addresses else []
    if detect_local_addresses:
        extra = tuple(a for a in kernel_addresses(links) if a not in cfg.local_addresses and a not in cfg.node_ips)
        cfg = replace(cfg, local_addresses=cfg.local_addresses + extra)
    supported = None
    if settings.mode != "userspace":  # kube-proxy has no userspace mode: its rule is for the others
        supported, missing = platform_families(settings.mode)
        for why in missing:
            log.info("%s", why)
    try:
        families = run_families(settings.only_family, cfg.ip_family, [*cfg.node_ips, *cfg.cluster_cidrs],
                                node_address_families(links), supported)
    except ValueError as e:
        log.error("%s: give --node-ip (or --bind-address) of a family this host supports", e)
        raise SystemExit(1) from None
    return replace(cfg, ip_family=families[0]), families


def _init_only(settings: Settings, detect_local_addresses: bool) -> None:
    """--init-only: the node setup that needs full privileges (kube-proxy's init container),
    after removing other modes' leftovers as kube-proxy's start does, then exit."""
    from ..runtime.node_setup import NodeSetupError, init_node

    cfg, families = _node(settings, detect_local_addresses)
    try:
        lines = init_node(settings.mode, families, _conntrack(settings),
                          localhost_nodeports=cfg.localhost_nodeports, nodeport_addresses=cfg.nodeport_addresses,
                          node_ips=cfg.node_ips, cleanup_leftovers=True)
    except NodeSetupError as e:
        log.error("%s", e)
        raise SystemExit(1) from None
    for line in lines:
        log.info("node setup: %s", line)
    log.info("--init-only: node set up; exiting")


def _write_config(settings: Settings) -> None:
    """--write-config-to: the resolved configuration as a v1alpha1 file, then exit."""
    path = settings.write_config_to
    try:
        with open(path, "w") as f:
            yaml.safe_dump(encode(settings.config), f, sort_keys=True)
    except OSError as e:
        raise click.ClickException(f"--write-config-to {path}: {e.strerror}") from None
    log.info("Wrote configuration to %s", path)


def _run_daemon(paths: tuple[str, ...], status_bind_address: str, detect_local_addresses: bool,
                settings: Settings) -> None:
    from ..runtime.daemon import DaemonOptions, run_daemon

    c = settings.config
    cfg, families = _node(settings, detect_local_addresses)
    sources = _sources(paths, settings, cfg.hostname)
    log.info("svcproxy run: mode %s, node %s (%s), min-sync-period %s, sync-period %s", settings.mode,
             cfg.hostname, " + ".join(f"IPv{f}" for f in families) + (" dual-stack" if len(families) > 1 else ""),
             format_duration(c.min_sync_period), format_duration(c.sync_period))
    run_daemon(DaemonOptions(
        cfg=cfg, mode=settings.mode, sources=sources, min_sync_period=c.min_sync_period,
        sync_period=c.sync_period, families=families, healthz_bind_address=c.healthz_bind_address,
        metrics_bind_address=c.metrics_bind_address, status_bind_address=status_bind_address,
        bind_address_hard_fail=c.bind_address_hard_fail, config_file=settings.config_file,
        conntrack=_conntrack(settings), oom_score_adj=c.oom_score_adj))


def _sources(paths: tuple[str, ...], settings: Settings, hostname: str) -> list[Any]:
    sources: list[Any] = []
    if paths:
        from ..sources.manifests import ManifestSource

        try:
            sources.append(ManifestSource(paths))
        except FileNotFoundError as e:
            raise click.UsageError(str(e)) from None
    kubeconfig = settings.config.client_connection.kubeconfig
    if kubeconfig or settings.master or not paths:
        from ..sources.apiclient import ApiConfigError, load_api_config
        from ..sources.kubernetes import ApiSource

        try:
            api = load_api_config(kubeconfig or os.environ.get("KUBECONFIG"), settings.master or None)
        except ApiConfigError as e:
            raise click.UsageError(f"{e} (or give -f PATH to run from manifests)") from None
        sources.append(ApiSource(api, hostname))
    return sources
