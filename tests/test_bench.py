"""The benchmark command runs end to end and writes its JSON (timings are not asserted)."""
import json
import subprocess
import sys

import pytest
import torch

import pynas.functional as PF


@pytest.mark.slow
def test_bench_quick_writes_results(tmp_path):
    # In its own process: the benchmark tunes glibc's malloc, which must not outlive it in the test process.
    done = subprocess.run([sys.executable, "-m", "pynas", "bench", "--device", "cpu", "--quick", "--min-run-time",
                           "0.01", "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (path,) = tmp_path.glob("ops-cpu-float32-quick-*.json")
    result = json.loads(path.read_text())
    assert result["device"] == "cpu" and result["copy_gbps"] > 0
    ops = {row["op"] for row in result["rows"]}
    assert ops == {"mixed_sum", "edge_cost", "gumbel_softmax"}
    assert all(row["eager_ms"] > 0 and row["fused_ms"] > 0 for row in result["rows"])
    assert "speed-up" in done.stdout


def test_the_suite_runs_the_kernels_multi_threaded_and_they_agree():
    from conftest import THREADS

    assert torch.get_num_threads() == THREADS  # not left at one thread by an earlier benchmark
    if THREADS < 2:
        torch.set_num_threads(2)  # the fixture puts it back
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 16, 32, 32, generator=g) for _ in range(4)]  # far above the kernels' grain size
    w = torch.rand(4, generator=g)
    fused = PF.mixed_sum(xs, w)
    reference = sum(wk.double() * x.double() for wk, x in zip(w, xs))
    torch.testing.assert_close(fused.double(), reference, rtol=1e-5, atol=1e-5)
    torch.set_num_threads(1)
    torch.testing.assert_close(PF.mixed_sum(xs, w), fused, rtol=0, atol=1e-6)
