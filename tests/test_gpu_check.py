"""benchmarks/gpu_check.sh in its dry run (every stage on CPU at tiny sizes, the existing
build): each stage reports ok, the JSON files parse, and OUTDIR stays within the 8 files
the device tool brings back. So the one-shot GPU check is known to work before device
time is spent on it."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["deps", "env", "build", "tests", "bench-ops", "bench-search", "bench-search-extra"]


@pytest.mark.slow(seconds=60)
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), str(out), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=300)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.glob("*.log")))
    assert done.returncode == 0, done.stderr + logs

    summary = (out / "summary.txt").read_text()
    status = {}
    for line in summary.splitlines()[2:]:
        name, _, rest = line.partition(" ")
        if name in STAGES:
            status[name] = rest.split()[0]
    assert status == {name: "ok" for name in STAGES}, summary + logs
    assert "tests: " in summary and " in " in summary.split("tests: ", 1)[1], summary

    env_record = json.loads((out / "env.json").read_text())
    assert env_record["dry_run"] and env_record["torch"] and env_record["date"]
    ops = json.loads((out / "ops.json").read_text())
    assert ops["device"] == "cpu" and ops["rows"]
    search = json.loads((out / "search.json").read_text())
    # The main run's methods and the extra run's, merged into one file.
    assert [row["method"] for row in search["rows"]] == ["darts", "gdas"]
    assert set(search["check"]) == {"darts", "gdas"}
    assert all(row["fused"]["images_per_s"] > 0 for row in search["rows"])

    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["summary.txt", "env.json", "build.log", "tests.log", "bench.log", "ops.json",
                            "search.json"]), files
