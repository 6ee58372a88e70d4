#!/usr/bin/env bash
# Set up (first use) and run pynas from a fresh clone.
#   ./run.sh search [args]  an architecture search (pynas search; default: DARTS on the embedded digits)
#   ./run.sh bench  [args]  the fused-vs-eager kernel benchmark (pynas bench)
#   ./run.sh test   [args]  the test suite (pytest)
# The first run creates .venv with the CUDA 13.0 build of torch 2.13.0 and
# builds pynas into it; later runs reuse both and rebuild only what changed.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=$VENV/bin/python

TORCH_DEPS='torch==2.13.0 torchvision==0.28.0'
OTHER_DEPS='ninja pytest pytest-xdist hypothesis numpy scipy expecttest scikit-learn matplotlib tensorboard tqdm nats_bench nas-bench-201'

setup_venv() {
  # The stamp records what was installed, so a changed dependency list reinstalls.
  if [ "$(cat $VENV/.pynas-deps 2>/dev/null)" != "$TORCH_DEPS $OTHER_DEPS" ]; then
    [ -x $PY ] || python3 -m venv $VENV
    # --isolated: the PyPI CUDA wheels, not a locally configured CPU-only one.
    $PY -m pip install --isolated $TORCH_DEPS
    $PY -m pip install --isolated $OTHER_DEPS
    echo "$TORCH_DEPS $OTHER_DEPS" > $VENV/.pynas-deps
  fi
}

build() {
  # nvcc on PATH may not be the toolkit's; torch would guess the wrong CUDA_HOME.
  if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
  fi
  local stamp
  stamp=$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
  stamp="$stamp ${PYNAS_FORCE_CPU:-} ${PYNAS_FORCE_CUDA:-} ${PYNAS_DEBUG:-} ${TORCH_CUDA_ARCH_LIST:-}"
  if [ "$(cat $VENV/.pynas-build-stamp 2>/dev/null)" != "$stamp" ] || ! ls pynas/_C*.so >/dev/null 2>&1; then
    MAX_JOBS=${MAX_JOBS:-$(nproc)} $PY -m pip install --no-build-isolation --no-deps -e .
    echo "$stamp" > $VENV/.pynas-build-stamp
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  search) setup_venv; build; exec $PY -m pynas search "$@" ;;
  bench) setup_venv; build; exec $PY -m pynas bench "$@" ;;
  test)  setup_venv; build; exec $PY -m pytest -q -n auto --maxschedchunk 2 --durations=25 tests "$@" ;;
  *) echo "usage: ./run.sh search|bench|test [args]" >&2; exit 2 ;;
esac
