"""The flags of run, render and trace: every kube-proxy flag (from proxyconfig.flags.FLAGS) and
svcproxy's own node flags, resolved into one Settings by proxyconfig.resolve.

A command decorated with @proxy_options receives `settings` instead of the individual flags.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Any

import click

from ..proxyconfig import ConfigError, OwnFlags, Settings, resolve
from ..proxyconfig.flags import FLAGS, Flag, parse_flag
from ..runtime.durations import parse_go_duration


def _param(flag: Flag) -> str:
    return "kp_" + flag.name.replace("-", "_")


def _click_option(flag: Flag) -> Callable:
    names = ["-v", "--v"] if flag.name == "v" else [f"--{flag.name}"]
    if flag.kind == "bool":  # Go style: --flag, --flag=true, --flag=false
        return click.option(*names, _param(flag), is_flag=False, flag_value="true", default=None,
                            metavar="[=BOOL]", help=flag.help)
    multiple = flag.kind in ("strings", "mapStringBool") or flag.name == "cluster-cidr"
    return click.option(*names, _param(flag), default=None, multiple=multiple, metavar=flag.kind.upper(),
                        help=flag.help + (f" [no effect in svcproxy: {flag.no_effect}]" if flag.no_effect else ""))


def _ips(values: tuple[str, ...], flag: str) -> tuple[str, ...]:
    out = []
    for item in ",".join(values).split(","):
        if item.strip():
            try:
                out.append(str(ipaddress.ip_address(item.strip())))
            except ValueError:
                raise click.BadParameter(f"{item!r} is not an IP address", param_hint=flag) from None
    return tuple(out)


def _duration(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_go_duration(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None


_OWN = [
    click.option("--ip-family", type=click.Choice(["IPv4", "IPv6"]), default=None,
                 help="[svcproxy] Proxy only this family (default: the node's families)."),
    click.option("--node-ip", multiple=True, help="[svcproxy] The node's primary address, one per family "
                 "(default: --bind-address, else the Node object's addresses)."),
    click.option("--local-address", multiple=True, help="[svcproxy] Another address on this node's "
                 "interfaces (for --nodeport-addresses). Repeatable."),
    click.option("--nftables-layout", type=click.Choice(["kube-proxy", "maps"]), default=None,
                 help="[svcproxy] nftables table layout: kube-proxy's (default), or 'maps' (endpoint "
                      "changes are map elements only: cheap at 10,000 Services)."),
    click.option("--sync-period", default=None,
                 help="[svcproxy] Full resync period in any mode (wins over --iptables-sync-period and the file)."),
    click.option("--min-sync-period", default=None,
                 help="[svcproxy] Minimum time between syncs in any mode (wins over the file)."),
]


def given_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the kube-proxy flags from a command's kwargs: {flag name: parsed value} for those on
    the command line."""
    given = {}
    for flag in FLAGS:
        raw = kwargs.pop(_param(flag), None)
        if raw is None or raw == ():
            continue
        text = ",".join(raw) if isinstance(raw, tuple) else raw
        try:
            given[flag.name] = parse_flag(flag, text)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=f"--{flag.name}") from None
    return given


def own_flags(kwargs: dict[str, Any]) -> OwnFlags:
    family = kwargs.pop("ip_family")
    return OwnFlags(
        ip_family=int(family[-1]) if family else None,
        node_ips=_ips(kwargs.pop("node_ip"), "--node-ip"),
        local_addresses=_ips(kwargs.pop("local_address"), "--local-address"),
        nftables_layout=kwargs.pop("nftables_layout"),
        sync_period=_duration(kwargs.pop("sync_period"), "--sync-period"),
        min_sync_period=_duration(kwargs.pop("min_sync_period"), "--min-sync-period"))


def settings_from(kwargs: dict[str, Any], modes: tuple[str, ...]) -> Settings:
    try:
        settings = resolve(given_flags(kwargs), own_flags(kwargs))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if settings.mode not in modes:
        raise click.ClickException(f"proxy mode {settings.mode!r} cannot be used here: this command "
                                   f"supports {', '.join(modes)}")
    return settings


def proxy_options(func: Callable | None = None, *,
                  modes: tuple[str, ...] = ("iptables", "nftables", "ebpf")) -> Callable:
    """Add every kube-proxy flag and svcproxy's node flags; call func(settings=..., **rest)."""
    if func is None:
        return lambda f: proxy_options(f, modes=modes)

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        return func(settings=settings_from(kwargs, modes), **kwargs)

    for opt in reversed([*(_click_option(f) for f in FLAGS), *_OWN]):
        wrapper = opt(wrapper)
    return wrapper


def manifest_option(required: bool = False) -> Callable:
    return click.option("-f", "--filename", "paths", multiple=True, required=required,
                        type=click.Path(), help="[svcproxy] Manifest file or directory (YAML/JSON); repeatable.")
