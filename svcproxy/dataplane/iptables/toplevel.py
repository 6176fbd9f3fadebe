"""The top-level chains every node gets (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-FORWARD, ...): the
port blocks' shares joined in service order, plus kube-proxy's fixed rules around them."""

from __future__ import annotations

from ...config import NodeConfig
from . import names as n
from .blocks import INVALID_NFACCT, PortBlock


def localhost_nodeports(cfg: NodeConfig) -> bool:
    """kube-proxy turns localhost NodePorts off for IPv6 and when --nodeport-addresses excludes 127.0.0.1."""
    if cfg.ip_family != 4 or not cfg.localhost_nodeports:
        return False
    ips = cfg.nodeport_ips
    return ips is None or "127.0.0.1" in ips


def filter_top(blocks: list[PortBlock], cfg: NodeConfig) -> dict[str, str]:
    mark = masquerade_mark(cfg)
    out = {
        n.NODEPORTS: "".join([b.filter_nodeports for b in blocks]),
        n.SERVICES: "".join([b.filter_services for b in blocks]),
        n.EXTERNAL_SERVICES: "".join([b.filter_external for b in blocks]),
    }
    if localhost_nodeports(cfg):
        out[n.KUBELET_FIREWALL] = (
            f'-A {n.KUBELET_FIREWALL} -m comment --comment "block incoming localnet connections" '
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n")
    # kube-proxy drops INVALID packets (a reset for an out-of-window segment would break the
    # connection) unless nf_conntrack_tcp_be_liberal already keeps them VALID
    # (counted into kube-proxy's nfacct object when it exists)
    counted = f" -m nfacct --nfacct-name {INVALID_NFACCT}" if INVALID_NFACCT in cfg.nfacct_counters else ""
    invalid = "" if cfg.conntrack_tcp_be_liberal else f"-A {n.FORWARD} -m conntrack --ctstate INVALID{counted} -j DROP\n"
    out[n.FORWARD] = (
        invalid +
        f'-A {n.FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT\n'
        f'-A {n.FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
    out[n.PROXY_FIREWALL] = "".join([b.filter_firewall for b in blocks])
    out[n.PROXY_CANARY] = ""
    return out


def nat_top(blocks: list[PortBlock], cfg: NodeConfig) -> dict[str, str]:
    mark = masquerade_mark(cfg)
    tail_comment = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    ips = cfg.nodeport_ips
    if ips is None:
        dest = "-m addrtype --dst-type LOCAL"
        if cfg.ip_family == 6:
            dest += " ! -d ::1/128"
        elif not localhost_nodeports(cfg):
            dest += " ! -d 127.0.0.0/8"
        tail = f"-A {n.SERVICES} {tail_comment} {dest} -j {n.NODEPORTS}\n"
    else:
        loop_ok = localhost_nodeports(cfg)
        tail = "".join(f"-A {n.SERVICES} {tail_comment} -d {ip} -j {n.NODEPORTS}\n" for ip in ips
                       if not _is_loopback(ip) or loop_ok)
    return {
        n.NODEPORTS: "".join([b.nat_nodeports for b in blocks]),
        n.SERVICES: "".join([b.nat_services for b in blocks]) + tail,
        n.MARK_MASQ: f"-A {n.MARK_MASQ} -j MARK --or-mark {mark}\n",
        n.POSTROUTING: (
            f"-A {n.POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN\n"
            f"-A {n.POSTROUTING} -j MARK --xor-mark {mark}\n"
            f'-A {n.POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully\n"),
        n.PROXY_CANARY: "",
    }


def masquerade_mark(cfg: NodeConfig) -> str:
    return f"{1 << cfg.masquerade_bit:#x}"


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"
