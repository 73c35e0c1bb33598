# Source this file: it makes (once) and activates the project's environment.
#   - a venv with the pinned packages of requirements.txt (torch 2.13.0 CPU first),
#   - the rosidl-generated msg/srv types, built by CMake into that venv,
#   - the variables that keep DDS on loopback and runs apart (random ROS_DOMAIN_ID).
# Rebuilds only what changed: the venv when requirements.txt changes, the interfaces when
# msg/, srv/ or CMakeLists.txt change.
# shellcheck shell=bash

VMR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VMR_VENV="${VIDEOMOLMO_VENV:-$VMR_ROOT/.venv}"
VMR_PY_VERSION="3.11"
VMR_SAM2_VERSION="1.1.0"  # its Python sources equal facebookresearch/sam2 at 2b90b9f

_vmr_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

_vmr_make_venv() {
  local want
  want="$(echo "$VMR_SAM2_VERSION" | _vmr_hash "$VMR_ROOT/requirements.txt" -)"
  if [ -f "$VMR_VENV/.vmr-requirements" ] && [ "$(cat "$VMR_VENV/.vmr-requirements")" = "$want" ]; then
    return 0
  fi
  local py
  py="$(command -v "python$VMR_PY_VERSION" || command -v python3)"
  echo "[env] creating $VMR_VENV with $("$py" --version) (first run: a few minutes)" >&2
  rm -rf "$VMR_VENV"
  "$py" -m venv "$VMR_VENV" || return 1
  # torch first and alone: 2.13.0 comes from the machine's local CPU wheel; any other spec
  # would download a CUDA build of several GB.
  "$VMR_VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0 || return 1
  "$VMR_VENV/bin/pip" install -q --disable-pip-version-check -r "$VMR_ROOT/requirements.txt" || return 1
  # sam2 declares torchvision as a requirement, but its video predictor does not use it, and
  # torchvision would replace the CPU torch: install sam2 alone, its C extension off (CPU).
  SAM2_BUILD_CUDA=0 "$VMR_VENV/bin/pip" install -q --disable-pip-version-check \
    --no-build-isolation --no-deps "sam2==$VMR_SAM2_VERSION" || return 1
  rm -f "$VMR_VENV/.vmr-interfaces"
  echo "$want" > "$VMR_VENV/.vmr-requirements"
}

_vmr_build_interfaces() {
  local want build
  want="$(_vmr_hash "$VMR_ROOT"/msg/*.msg "$VMR_ROOT"/srv/*.srv "$VMR_ROOT/CMakeLists.txt" "$VMR_ROOT/package.xml")"
  if [ -f "$VMR_VENV/.vmr-interfaces" ] && [ "$(cat "$VMR_VENV/.vmr-interfaces")" = "$want" ]; then
    return 0
  fi
  echo "[env] generating msg/srv types with rosidl (about 15 s)" >&2
  build="$(mktemp -d)"
  # The build runs in the venv's own ROS prefix; a prefix outside the venv (e.g. a sourced
  # ROS 2 install) is left out so that one consistent set of CMake configs is found.
  if ! (AMENT_PREFIX_PATH="$VMR_VENV" CMAKE_PREFIX_PATH="$VMR_VENV" \
        cmake -S "$VMR_ROOT" -B "$build" -DCMAKE_PREFIX_PATH="$VMR_VENV" \
          -DPython3_EXECUTABLE="$VMR_VENV/bin/python" -DBUILD_TESTING=OFF \
          -DCMAKE_INSTALL_PREFIX="$VMR_VENV" -DVIDEOMOLMO_ROS_INSTALL_PYTHON=OFF \
        && cmake --build "$build" -j2 && cmake --install "$build") > "$build.log" 2>&1; then
    echo "[env] interface build failed; its log:" >&2
    tail -40 "$build.log" >&2
    rm -rf "$build"
    return 1
  fi
  rm -rf "$build" "$build.log"
  echo "$want" > "$VMR_VENV/.vmr-interfaces"
}

vmr_env() {
  _vmr_make_venv || { echo "[env] venv setup failed" >&2; return 1; }
  _vmr_build_interfaces || return 1
  export VIRTUAL_ENV="$VMR_VENV"
  export PATH="$VMR_VENV/bin:$PATH"
  export PYTHONPATH="$VMR_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export AMENT_PREFIX_PATH="$VMR_VENV"
  export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
  # DDS stays on this machine, and every run gets its own domain so that runs never meet.
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
  export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
  export PYTHONUNBUFFERED=1
}
