#!/usr/bin/env bash
# One-shot GPU check: build pynas for the GPU present, run the CUDA tests and both
# benchmarks at the DARTS size, and write logs and JSON into OUTDIR.
#
#   benchmarks/gpu_check.sh OUTDIR [--dry-run]
#
# Made for a lent machine with its own torch and no internet (python3 with torch,
# nvcc; nothing installed, nothing downloaded): pynas is built in place
# (`setup.py build_ext --inplace`, TORCH_CUDA_ARCH_LIST read off the device, all
# cores) and found through PYTHONPATH. Test dependencies the machine lacks are
# installed from wheels in .whl/ into a temporary folder (benchmarks/README.md).
# Each stage has its own time budget (`timeout`); a stage that fails or runs out
# of time does not stop the others; the whole run ends within TOTAL_S (default
# 465 s). OUTDIR receives at most 7 files (the device tool brings back 8):
#   summary.txt  each stage's status and time, the tests' result line
#   env.json     GPU, driver, torch, CUDA, python, date
#   build.log    the build (or, in a dry run, the check of the existing one)
#   tests.log    pytest on the CUDA cases (-k cuda)
#   bench.log    both benchmarks' tables and progress
#   ops.json     `pynas bench ops --device cuda`
#   search.json  `pynas bench search` (darts, gdas, darts also with --cuda-graphs; darts-2nd, snas when
#                time is left)
#
# --dry-run: every stage on CPU at tiny sizes with the existing build (the
# project's .venv, or $PYTHON), so the script is known to work before device
# time is spent on it; tests/test_gpu_check.py runs it.
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--dry-run]" >&2; exit 2; }
OUTDIR="" DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) [ -z "$OUTDIR" ] || usage; OUTDIR=$arg ;;
  esac
done
[ -n "$OUTDIR" ] || usage

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) || exit 2
rm -f "$OUTDIR"/{summary.txt,env.json,build.log,tests.log,bench.log,ops.json,search.json}
TMPD=$(mktemp -d /tmp/pynas-gpu-check.XXXXXX)
trap 'rm -rf "$TMPD"' EXIT

# The interpreter: the machine's python3 (the one with torch); in a dry run the
# project's .venv when it exists. $PYTHON overrides either.
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ "$DRY" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3
fi

TOTAL_S=${TOTAL_S:-465}
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export ROOT OUTDIR TMPD PY DRY

# Sizes. The real run: the DARTS CIFAR-10 search (batch 64, C = 16, 8 cells, 32x32).
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  TEST_ARGS="tests/test_build.py tests/test_edge_cost.py -k cuda"   # a quick part of it: CUDA cases skip
  OPS_ARGS="--device cpu --quick --min-run-time 0.005"
  SEARCH_SIZE="--batch-size 2 --C 4 --layers 3 --image-size 8 --warmup 0 --steps 1"
  SEARCH_METHODS="darts" EXTRA_METHODS="gdas" SEARCH_GRAPHS=""  # CUDA graphs need a GPU
else
  DEVICE=cuda
  TEST_ARGS="tests -k cuda"
  OPS_ARGS="--device cuda"
  SEARCH_SIZE="--batch-size 64 --C 16 --layers 8 --image-size 32 --warmup 2 --steps 5"
  SEARCH_METHODS="darts gdas" EXTRA_METHODS="darts-2nd snas" SEARCH_GRAPHS="--cuda-graphs"
fi
export DEVICE TEST_ARGS OPS_ARGS SEARCH_SIZE SEARCH_METHODS EXTRA_METHODS SEARCH_GRAPHS

# -- test dependencies: from .whl/ when the machine lacks them ---------------------
# (before the stages: PYTHONPATH must reach every one of them)
deps_status=ok deps_note=""
missing_modules() {  # what the tests import that "$PY" (with $1 on its path) cannot find
  PYTHONPATH="${1:-}${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import importlib.util
print(' '.join(m for m in ('pytest', 'hypothesis', 'numpy', 'scipy') if importlib.util.find_spec(m) is None))" \
    2>/dev/null || echo "($PY failed)"
}
missing=$(missing_modules)
SITE=""
if [ -n "$missing" ]; then
  deps_note="missing: $missing"
  if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    SITE=$TMPD/site
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$ROOT"/.whl/*.whl >"$TMPD/deps.log" 2>&1; then
      deps_note="$deps_note; installed from .whl/: $(cd "$ROOT/.whl" && echo *.whl)"
      still=$(missing_modules "$SITE")
      [ -z "$still" ] || deps_status=failed deps_note="$deps_note; still missing: $still"
    else
      deps_status=failed deps_note="$deps_note; pip install from .whl/ failed: $(tail -n 3 "$TMPD/deps.log" | tr '\n' ' ')"
    fi
  else
    deps_status=failed deps_note="$deps_note; no .whl/ folder to install from (benchmarks/README.md)"
  fi
fi
export PYTHONPATH="$ROOT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"

# -- the build's environment: this GPU only, all cores, the toolkit found ------------
if [ "$DRY" = 0 ]; then
  if [ -z "${CUDA_HOME:-}" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
  fi
  [ -z "${CUDA_HOME:-}" ] || export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    # Every visible GPU's compute capability, e.g. "9.0" for an H100/H200.
    TORCH_CUDA_ARCH_LIST=$(timeout 60 "$PY" -c "import torch
print(';'.join(sorted({'%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})))" 2>/dev/null)
  fi
  [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] || export TORCH_CUDA_ARCH_LIST
  # (nproc alone would honour OMP_NUM_THREADS)
  export MAX_JOBS=${MAX_JOBS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)} PYNAS_FORCE_CUDA=1
  # torch builds with ninja only when `ninja` is on PATH (else one file at a time):
  # the pip package's binary may sit beside the interpreter, off PATH.
  NINJA_DIRS=$("$PY" -c "import os, sys
dirs = [os.path.dirname(sys.executable)]
try:
    import ninja; dirs.append(ninja.BIN_DIR)
except Exception:
    pass
print(':'.join(dirs))" 2>/dev/null)
  [ -z "$NINJA_DIRS" ] || export PATH="$PATH:$NINJA_DIRS"
fi

# -- the stages (each runs in its own bash under timeout) ---------------------------

stage_env() {
  "$PY" - <<'EOF'
import datetime, json, os, platform, subprocess, sys

def run(*cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None

import torch
from importlib import metadata

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

cuda = torch.cuda.is_available()
gpus = []
for i in range(torch.cuda.device_count() if cuda else 0):
    p = torch.cuda.get_device_properties(i)
    gpus.append(dict(name=p.name, capability="%d.%d" % (p.major, p.minor), memory_gib=round(p.total_memory / 2**30, 1),
                     multiprocessors=p.multi_processor_count))
smi = run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
nvcc = run(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else "nvcc", "--version")
env = dict(
    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    dry_run=os.environ["DRY"] == "1",
    gpus=gpus,
    driver=smi.splitlines()[0].split(", ")[1] if smi else None,
    nvidia_smi=smi,
    torch=torch.__version__,
    torch_cuda=torch.version.cuda,
    cudnn=torch.backends.cudnn.version() if cuda else None,
    nvcc=nvcc.splitlines()[-1] if nvcc else None,
    cuda_home=os.environ.get("CUDA_HOME"),
    torch_cuda_arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST"),
    max_jobs=os.environ.get("MAX_JOBS"),
    python=sys.version.split()[0],
    python_executable=sys.executable,
    platform=platform.platform(),
    cpus=os.cpu_count(),
    git_commit=run("git", "-C", os.environ["ROOT"], "rev-parse", "HEAD"),
    packages={n: version(n) for n in ("pytest", "hypothesis", "expecttest", "numpy", "scipy", "scikit-learn",
                                      "setuptools", "ninja", "triton")},
)
with open(os.path.join(os.environ["OUTDIR"], "env.json"), "w") as f:
    json.dump(env, f, indent=1)
print(json.dumps(env, indent=1))
EOF
}

stage_build() {
  if [ "$DRY" = 1 ]; then
    echo "dry run: no build; the existing one:"
  else
    echo "CUDA_HOME=${CUDA_HOME:-} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} MAX_JOBS=${MAX_JOBS:-}" \
      "nvcc=$(command -v nvcc) ninja=$(command -v ninja)"
    "$PY" setup.py build_ext --inplace || return
  fi
  # The build must import, and on a GPU machine carry its CUDA kernels.
  "$PY" -c "
import os, sys, torch, pynas
print('pynas from', os.path.dirname(pynas.__file__), '| torch', torch.__version__,
      '| CUDA kernels built:', pynas.cuda_kernels_available(), '| GPU visible:', torch.cuda.is_available())
sys.exit(0 if os.environ['DRY'] == '1' or (pynas.cuda_kernels_available() and torch.cuda.is_available()) else 1)"
}

stage_tests() {
  # -k cuda: the DEVICES fixture's CUDA cases (marked cuda) and the build's CUDA checks.
  # -v: a test that hangs until the stage's timeout is the last one named. A module that
  # fails to import under this torch is reported without stopping the others.
  local per_test=""
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then per_test="--timeout=90"; fi
  # shellcheck disable=SC2086
  "$PY" -m pytest $TEST_ARGS -v -rfEs --durations=15 -p no:cacheprovider --continue-on-collection-errors \
    --ignore=tests/test_gpu_check.py $per_test
}

stage_ops() {
  echo "== pynas bench ops $OPS_ARGS"
  # shellcheck disable=SC2086
  "$PY" -m pynas bench ops $OPS_ARGS --out "$TMPD/ops" || return
  mv "$(ls "$TMPD"/ops/*.json | head -n 1)" "$OUTDIR/ops.json"
}

stage_search() {  # $1: the methods, $2: more options
  echo "== pynas bench search --device $DEVICE $SEARCH_SIZE --methods $1 ${2:-}"
  rm -rf "$TMPD/search"
  # shellcheck disable=SC2086
  "$PY" -m pynas bench search --device "$DEVICE" $SEARCH_SIZE --methods $1 ${2:-} --out "$TMPD/search" || return
  local new
  new=$(ls "$TMPD"/search/*.json | head -n 1)
  # One file for every method: an extra run's rows join the first run's.
  "$PY" - "$new" "$OUTDIR/search.json" <<'EOF'
import json, os, sys
new, out = sys.argv[1:]
with open(new) as f:
    result = json.load(f)
if os.path.exists(out):
    with open(out) as f:
        first = json.load(f)
    first["rows"] += result["rows"]
    first["check"].update(result["check"])
    first.setdefault("dates", [first["date"]]).append(result["date"])
    result = first
with open(out, "w") as f:
    json.dump(result, f, indent=1)
EOF
}
stage_search_main() { stage_search "$SEARCH_METHODS" "$SEARCH_GRAPHS"; }  # darts also replayed from a CUDA graph
stage_search_extra() { stage_search "$EXTRA_METHODS"; }
export -f stage_env stage_build stage_tests stage_ops stage_search stage_search_main stage_search_extra

# -- running them -------------------------------------------------------------------

# name, function, log, cap (s), floor (s: kept back for it while earlier stages run;
# 0 = optional: it runs only if at least MIN_OPTIONAL_S are left).
if [ "$DRY" = 1 ]; then
  STAGES=(
    "env stage_env build.log 60 10"
    "build stage_build build.log 60 10"
    "tests stage_tests tests.log 120 20"
    "bench-ops stage_ops bench.log 60 10"
    "bench-search stage_search_main bench.log 120 20"
    "bench-search-extra stage_search_extra bench.log 120 0"
  )
  MIN_OPTIONAL_S=10
else
  STAGES=(
    "env stage_env build.log 30 10"
    "build stage_build build.log 240 60"
    "tests stage_tests tests.log 150 60"
    "bench-ops stage_ops bench.log 75 45"
    "bench-search stage_search_main bench.log 120 90"
    "bench-search-extra stage_search_extra bench.log 150 0"
  )
  MIN_OPTIONAL_S=75
fi

SUMMARY=()
row() { SUMMARY+=("$(printf '%-20s %-22s %8s %8s' "$@")"); }
row stage status seconds budget
row deps "$deps_status" - -

# Rewritten after every stage: a run cut short from outside still leaves one.
write_summary() {
  {
    echo "pynas GPU check$([ "$DRY" = 1 ] && echo " (dry run: CPU, tiny sizes)"), $(date -u +%Y-%m-%dT%H:%M:%SZ)," \
      "$((SECONDS - START)) s of $TOTAL_S"
    printf '%s\n' "${SUMMARY[@]}"
    [ -z "$deps_note" ] || echo "deps: $deps_note"
    echo "machine: $("$PY" -c "import json, sys
e = json.load(open(sys.argv[1]))
g = e['gpus'][0] if e['gpus'] else {}
print(g.get('name', 'no GPU'), g.get('capability', ''), '| driver', e['driver'], '| torch', e['torch'], '| CUDA', e['torch_cuda'],
      '| nvcc', e['nvcc'], '| python', e['python'])" "$OUTDIR/env.json" 2>/dev/null)"
    # pytest's closing line ("N passed, M skipped in T s"), if it got that far.
    echo "tests: $(grep -E '(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$OUTDIR/tests.log" 2>/dev/null |
      tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')"
    echo "files: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
  } >"$OUTDIR/summary.txt"
}

for i in "${!STAGES[@]}"; do
  read -r name fn log cap floor <<<"${STAGES[$i]}"
  reserve=0
  for later in "${STAGES[@]:$((i + 1))}"; do
    reserve=$((reserve + $(awk '{print $5}' <<<"$later")))
  done
  left=$((TOTAL_S - (SECONDS - START)))
  budget=$((left - reserve))
  [ "$budget" -le "$cap" ] || budget=$cap
  if [ "$floor" = 0 ] && [ "$budget" -lt "$MIN_OPTIONAL_S" ]; then
    row "$name" "skipped (no time)" - "$budget"
    write_summary
    continue
  fi
  [ "$budget" -ge 5 ] || budget=5
  {
    echo
    echo "======== $name ($fn, budget ${budget}s, $(date -u +%H:%M:%S))"
  } >>"$OUTDIR/$log"
  t0=$(date +%s.%N)
  timeout -k 10 "$budget" bash -c "$fn" >>"$OUTDIR/$log" 2>&1 </dev/null
  rc=$?
  took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  case $rc in
    0) status=ok ;;
    124|137) status="timed out" ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "======== $name: $status after ${took}s" >>"$OUTDIR/$log"
  row "$name" "$status" "$took" "$budget"
  echo "$name: $status (${took}s of ${budget}s)" >&2
  write_summary
done

write_summary
cat "$OUTDIR/summary.txt"
# Exit status: 1 when a stage failed or timed out (a skipped one does not count).
! grep -qE '^[a-z-]+ +(failed|timed out)' "$OUTDIR/summary.txt"
