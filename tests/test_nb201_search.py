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


def test_evaluate_prints_and_writes_a_cells_numbers_without_a_run(tmp_path, capsys):
    first = next(iter(CELLS))
    path = write_benchmark(tmp_path, "nats-file", CELLS)
    shuffled = "|nor_conv_3x3~0|+|avg_pool_3x3~1|nor_conv_3x3~0|+|avg_pool_3x3~2|nor_conv_3x3~1|none~0|"  # cell A
    assert main(["evaluate", "--genotype", shuffled, "--benchmark", path, "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    means = {key: (a + b) / 2 for key, (a, b) in CELLS[first].items()}
    assert (f"cifar10 valid {means['cifar10_valid']:.2f} test {means['cifar10_test']:.2f} | cifar100 valid "
            f"{means['cifar100_valid']:.2f} test {means['cifar100_test']:.2f} | imagenet16 valid "
            f"{means['imagenet16_valid']:.2f} test {means['imagenet16_test']:.2f}") in out and first in out
    written = json.loads((tmp_path / "a.json").read_text())
    assert written["cell"] == first and all(written[k] == pytest.approx(v, abs=1e-9) for k, v in means.items())
    absent = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    assert main(["evaluate", "--genotype", absent, "--benchmark", path]) == 0
    assert "has no record of" in capsys.readouterr().out
    for argv, named in ((["evaluate", "--genotype", "DARTS_V2", "--benchmark", path], "DARTS-space"),
                        (["evaluate", "--benchmark", path], "--run RUN_DIR"),
                        (["evaluate", "--random", "9", "--benchmark", path], "[1, 3]")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert named in err and len(err.strip().splitlines()) == 1


def test_random_search_of_every_cell_finds_the_best_cifar10_valid_cell(tmp_path, capsys):
    """Drawing all three planted cells, every seed's best by CIFAR-10 valid is the cell with the highest mean."""
    path = write_benchmark(tmp_path, "nats-simple", CELLS)
    best = max(CELLS, key=lambda c: sum(CELLS[c]["cifar10_valid"]) / 2)
    assert main(["evaluate", "--random", "3", "--seeds", "2", "--benchmark", path,
                 "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [b["cell"] for b in result["best"]] == [best, best]
    assert result["mean"]["cifar10_test"] == pytest.approx(sum(CELLS[best]["cifar10_test"]) / 2, abs=1e-9)
    assert "mean over 2 seeds" in capsys.readouterr().out


def test_select_records_the_selected_cells_numbers_and_pt_after_each_round(tmp_path, capsys):
    run = tmp_path / "search"
    assert main([*SEARCH, "--epochs", "1", "--out", str(run)]) == 0
    selects = {"nb201": ["--method", "nb201"],
               "pt": ["--method", "pt", "--tune-epochs", "0", "--val-batches", "1", "--quiet"]}
    chosen = {}
    for name, argv in selects.items():  # first without a benchmark: the cells each selection ends with
        assert main(["select", "--run", str(run), *argv, "--out", str(tmp_path / f"{name}-plain")]) == 0
        chosen[name] = (tmp_path / f"{name}-plain" / "genotype.txt").read_text().strip()
    planted = {cell: CELLS[next(iter(CELLS))] for cell in set(chosen.values())}
    path = write_benchmark(tmp_path, "nats-simple", planted)
    for name, argv in selects.items():
        out = tmp_path / name
        assert main(["select", "--run", str(run), *argv, "--out", str(out), "--benchmark", path]) == 0
        assert (out / "genotype.txt").read_text().strip() == chosen[name]  # the look-up changes nothing
        numbers = json.loads((out / "benchmark.json").read_text())
        a, b = planted[chosen[name]]["cifar10_test"]
        assert numbers["cifar10_test"] == pytest.approx((a + b) / 2, abs=1e-9)
    trail = json.loads((tmp_path / "pt" / "pt_trail.json").read_text())
    assert len({r["round"] for r in trail}) == 6  # one operation decision per NB201 edge, a round each
    for record in trail:  # the cell after each round: the planted numbers, or missing from the file
        logged = record["benchmark"]
        if logged["cell"] in planted:
            assert logged["cifar10_test"] == pytest.approx(sum(planted[logged["cell"]]["cifar10_test"]) / 2)
        else:
            assert logged["missing"] is True
    assert trail[-1]["benchmark"]["cell"] == chosen["pt"]
    assert main(["select", "--run", str(run), "--method", "nb201", "--benchmark", str(tmp_path / "x.json")]) == 2
    assert "x.json" in capsys.readouterr().err


def test_analyze_evolution_draws_the_benchmark_curves_of_a_search_with_a_benchmark(tmp_path, capsys):
    assert main([*SEARCH, "--out", str(tmp_path / "plain")]) == 0
    cells = [json.loads(line)["genotype"] for line in open(tmp_path / "plain" / "metrics.jsonl")]
    path = write_benchmark(tmp_path, "nats-file", {cells[0]: CELLS[next(iter(CELLS))]})
    assert main([*SEARCH, "--out", str(tmp_path / "run"), "--benchmark", path]) == 0
    assert main(["analyze", "evolution", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "evo")]) == 0
    report = json.loads((tmp_path / "evo" / "evolution.json").read_text())
    assert "evolution_benchmark.png" in report["figures"]
    assert (tmp_path / "evo" / "evolution_benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = [json.loads(line)["benchmark"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert report["benchmark"] == logged
    # without a benchmark: no such figure
    assert main(["analyze", "evolution", "--run", str(tmp_path / "plain"), "--out", str(tmp_path / "evo2")]) == 0
    assert "evolution_benchmark.png" not in json.loads((tmp_path / "evo2" / "evolution.json").read_text())["figures"]
