#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite: lint, unit tests, real-kernel tests in
# network namespaces (root needed), in under 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check svcproxy tests bench
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
