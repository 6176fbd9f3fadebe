#!/usr/bin/env bash
# Set up (see setup.sh) and run svcproxy's main job: `svcproxy lab demo`, a two-node cluster in
# network namespaces with svcproxy on every node, real traffic, then everything removed again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/svcproxy lab demo "$@"
