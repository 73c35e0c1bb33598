#!/usr/bin/env bash
# Runs the whole test suite; makes the environment first if needed (scripts/env.sh).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k fusion`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
vmr_env
cd "$VMR_ROOT"
exec python -m pytest -q "$@"
