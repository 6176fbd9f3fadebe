#!/usr/bin/env bash
# Install what svcproxy needs on a Debian machine (run as root): the kernel tools it drives and a
# Python virtual environment with the pinned dependencies. Safe to run again: it only does what
# is missing. Usage: scripts/setup.sh [--test]   (--test adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for cmd_pkg in iptables:iptables nft:nftables ip:iproute2 conntrack:conntrack openssl:openssl sysctl:procps ipset:ipset; do
  command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || need_apt+=("${cmd_pkg#*:}")
done
ldconfig -p 2>/dev/null | grep -q 'libcairo.so.2' || need_apt+=(libcairo2)
# ebpf mode: clang compiles the BPF C sources, libbpf loads them, bpftool inspects them
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
[ -f /usr/include/bpf/bpf_helpers.h ] || need_apt+=(libbpf-dev)
ldconfig -p 2>/dev/null | grep -q 'libbpf.so.1' || need_apt+=(libbpf1)
command -v bpftool >/dev/null 2>&1 || need_apt+=(bpftool)
# the status page's tests drive a real browser (headless, no display needed)
[ "${1:-}" = "--test" ] && { [ -x /usr/lib/chromium/chromium ] || need_apt+=(chromium); }
# the monitoring test scrapes a daemon with a real Prometheus (kubernetes-mixin's queries, an alert)
[ "${1:-}" = "--test" ] && { command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus); }
if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  need_apt+=(python3 python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "svcproxy setup: missing packages: ${need_apt[*]}; run this script as root (or: sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  echo "svcproxy setup: installing ${need_apt[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
stamp=".venv/.svcproxy-setup$extras"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "svcproxy setup: creating the Python environment in .venv ..."
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".$extras"
  .venv/bin/python -c 'import svcproxy, yaml, click' # fail loudly if the install did not work
  echo "$want" > "$stamp"
fi

# ebpf mode's BPF object, compiled now so the daemon never needs clang at run time (it compiles
# lazily into the same place if this step was skipped; see svcproxy/dataplane/ebpf/build.py)
.venv/bin/python -c 'from svcproxy.dataplane.ebpf.build import main; main()'
