"""`pynas search --space nb201 --benchmark PATH`: each epoch's cell looked up in a benchmark file in NATS-Bench's
simple layout (written by test_nb201_benchmark's fixture writer), logged in metrics.jsonl and the summaries."""
import json

import pytest
from test_nb201_benchmark import CELLS, write_benchmark

from pynas.cli import main

SEARCH = ["search", "--space", "nb201", "--epochs", "2", "--C", "4", "--layers", "3", "--batch-size", "256",
          "--quiet"]


def test_each_epochs_cell_is_looked_up_and_a_missing_one_is_said(tmp_path, capsys):
    assert main([*SEARCH, "--out", str(tmp_path / "plain")]) == 0  # the same search without the benchmark
    cells = [json.loads(line)["genotype"] for line in open(tmp_path / "plain" / "metrics.jsonl")]
    # The first epoch's cell gets cell A's planted numbers; any other cell is missing from the file.
    planted = dict(CELLS[next(iter(CELLS))])
    path = write_benchmark(tmp_path, "nats-simple", {cells[0]: planted})
    capsys.readouterr()
    assert main([*SEARCH[:-1], "--out", str(tmp_path / "run"), "--benchmark", path]) == 0  # not quiet
    out = capsys.readouterr().out
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["genotype"] for r in records] == cells  # the look-up changes nothing of the search
    for record in records:
        logged = record["benchmark"]
        assert logged["file"] == "NATS-tss-v1_0-3ffb9-simple"
        if record["genotype"] == cells[0]:
            for key, (a, b) in planted.items():  # the mean of the two seeds
                assert logged[key] == pytest.approx((a + b) / 2, abs=1e-9)
        else:
            assert logged["missing"] is True
    first = records[0]["benchmark"]
    line = (f"cifar10 valid {first['cifar10_valid']:.2f} test {first['cifar10_test']:.2f} | cifar100 valid "
            f"{first['cifar100_valid']:.2f} test {first['cifar100_test']:.2f} | imagenet16 valid "
            f"{first['imagenet16_valid']:.2f} test {first['imagenet16_test']:.2f}")
    assert f"  NAS-Bench-201: {line}" in out  # the first epoch's summary
    final = records[-1]["benchmark"]
    assert ("NAS-Bench-201 (NATS-tss-v1_0-3ffb9-simple): "
            + (line if not final.get("missing") else f"NATS-tss-v1_0-3ffb9-simple has no record of {final['cell']}")
            in out)


def test_benchmark_needs_the_nb201_space_and_a_benchmark_file(tmp_path, capsys):
    assert main(["search", "--benchmark", str(tmp_path), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "--benchmark looks up NAS-Bench-201 cells: it needs --space nb201" in capsys.readouterr().err
    assert main([*SEARCH, "--benchmark", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "nothing.json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
