#!/usr/bin/env bash
# The demo: the pointing node over real DDS on a synthetic video (see README).
# Makes the environment first if needed. Extra arguments go to `python -m videomolmo_ros.demo`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
vmr_env
cd "$VMR_ROOT"
exec python -m videomolmo_ros.demo "$@"
