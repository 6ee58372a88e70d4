"""The benchmark command runs end to end and writes its JSON (timings are not asserted)."""
import json

from pynas.cli import main


def test_bench_quick_writes_results(tmp_path, capsys):
    assert main(["bench", "--device", "cpu", "--quick", "--min-run-time", "0.01", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("ops-cpu-float32-quick-*.json")
    result = json.loads(path.read_text())
    assert result["device"] == "cpu" and result["copy_gbps"] > 0
    ops = {row["op"] for row in result["rows"]}
    assert ops == {"mixed_sum", "edge_cost", "gumbel_softmax"}
    assert all(row["eager_ms"] > 0 and row["fused_ms"] > 0 for row in result["rows"])
    assert "speed-up" in capsys.readouterr().out
