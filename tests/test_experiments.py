"""Every reproduction script in experiments/ runs end to end in --smoke mode and writes its table with the rows
the paper's table has, filled with numbers read from the pynas runs it made (not typed in)."""

import json
import math
import os
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")

pytestmark = pytest.mark.slow  # each runs a reproduction script end to end


@pytest.fixture
def smoke(tmp_path, monkeypatch):
    """Runs experiments/<script>.py --smoke in this process: its commands run in processes forked from
    the server the first script in this worker started (preloaded with torch, pynas and matplotlib:
    ~5 s of CPU that a subprocess per script would spend again on a server of its own)."""
    def run(script, *extra, out_name=None):
        out = tmp_path / (out_name or script)
        monkeypatch.syspath_prepend(EXPERIMENTS)
        monkeypatch.setattr(sys, "argv", [f"{script}.py", "--smoke", "--out", str(out), *extra])
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # each command one thread, as a subprocess would have run them
        runpy.run_path(os.path.join(EXPERIMENTS, f"{script}.py"), run_name="__main__")
        return check_smoke_table(script, out)
    return run


def check_smoke_table(script, out):
    with open(out / f"{script}.json") as f:
        table = json.load(f)
    assert table["mode"] == "smoke" and "SMOKE" in table["notes"][0]
    assert (out / f"{script}.md").read_text().startswith("## ")
    assert any(name.endswith(".png") for name in os.listdir(out))
    assert table["commands"] and all(c.startswith("python -m pynas ") for c in table["commands"])
    return table, out


def test_a_command_whose_process_dies_is_an_error_and_the_next_one_runs(tmp_path):
    sys.path.insert(0, EXPERIMENTS)
    try:
        import common
    finally:
        sys.path.pop(0)
    runner = common.Runner(common.parse_args("t", "t", argv=["--smoke", "--out", str(tmp_path)]))
    with pytest.raises(common.ProcessDied, match="died"):
        runner.in_process(os.abort)  # SIGABRT
    assert runner.in_process(os.getpid) != os.getpid()  # a new pool, a process of its own


def is_percent(x):
    return isinstance(x, float) and 0 <= x <= 100 and not math.isnan(x)


def test_darts_pt_table2(smoke):
    table, out = smoke("darts_pt_table2")
    assert [(r["supernet"], r["selection"]) for r in table["rows"]] == [
        (s, sel) for s in ("DARTS", "SDARTS-RS", "SGAS") for sel in ("magnitude (α)", "PT")]
    for r in table["rows"]:
        result = json.load(open(out / f"train-{r['supernet']}-{'pt' if r['selection'] == 'PT' else 'magnitude'}"
                                      f"-seed0" / "result.json"))
        assert r["test_error"] == pytest.approx(100 * (1 - result["test_acc"]))
        assert r["params_M"] == pytest.approx(result["params_M"]) and r["genotypes"][0] == result["genotype"]


@pytest.mark.slow(seconds=50)
def test_darts_pt_table3(smoke):
    table, _ = smoke("darts_pt_table3")
    assert [r["space"] for r in table["rows"]] == ["S1", "S2", "S3", "S4"]
    for r in table["rows"]:
        for col in ("DARTS", "DARTS+PT", "DARTS+PT (fix α)"):
            assert is_percent(r[f"{col} test_error"]) and isinstance(r[f"paper {col}"], float)


def test_darts_pt_fig5_6(smoke):
    table, out = smoke("darts_pt_fig5_6")
    assert [(r["space"], r["selection"]) for r in table["rows"]] == [
        ("S2", "magnitude"), ("S2", "pt"), ("S4", "magnitude"), ("S4", "pt"), ("S2", "pt-mag")]
    for r in table["rows"]:
        ops = "sep_conv_3x3 skip_connect" if r["space"] == "S2" else "sep_conv_3x3 noise"
        assert sum(r[f"normal {op}"] for op in ops.split()) == len(r["genotype"].split("normal=[")[1]
                                                                    .split("]")[0].split("), ("))
    for sel in ("pt", "pt-mag"):
        row = next(r for r in table["rows"] if r["selection"] == sel)
        trail = json.load(open(out / "s2-seed0" / f"select-{sel}" / "pt_trail.json"))
        assert row["val_acc_after_round"][-1] == max(
            (d for d in trail if d["phase"] == "operation"), key=lambda d: d["round"])["val_acc_after_tuning"]
    assert (out / "fig6_val_acc_per_round.png").exists()


def test_snas_table1(smoke):
    table, _ = smoke("snas_table1")
    assert [r["method"] for r in table["rows"]] == ["DARTS (2nd order)", "SNAS + mild constraint"] + [
        f"SNAS + {lvl} constraint" for lvl in ("mild", "moderate", "aggressive")]
    for r in table["rows"][:2]:
        assert is_percent(r["search_acc"]) and is_percent(r["child_acc"])
    for r in table["rows"][2:]:
        assert is_percent(r["test_error"]) and r["params_M"] > 0 and " normal, " in r["pynas kept edges"]


def test_single_darts_table1(smoke):
    table, _ = smoke("single_darts_table1")
    assert [r["method"] for r in table["rows"]] == ["DARTS", "Single-DARTS", "optimal (benchmark)"]
    for r in table["rows"][:2]:
        assert is_percent(r["val_acc"]) and is_percent(r["test_acc"]) and r["genotypes"][0].startswith("|")


def test_single_darts_table1_reads_the_benchmark(smoke, tmp_path):
    """With --benchmark the table holds the benchmark's numbers of each search's final cell: a first run against a
    file without those cells stops naming them; with a file (NATS-Bench's simple layout) planting them, they are
    the table's."""
    from test_nb201_benchmark import CELLS, write_benchmark

    (tmp_path / "other").mkdir()
    unrelated = write_benchmark(tmp_path / "other", "nats-simple", CELLS)
    with pytest.raises(RuntimeError, match="has no record of"):
        smoke("single_darts_table1", "--benchmark", unrelated, out_name="first")
    found = sorted({(tmp_path / "first" / run / "genotype.txt").read_text().strip()
                    for run in ("DARTS-seed0", "Single-DARTS-seed0")})
    numbers = list(CELLS.values())[:2]  # every dataset planted
    path = write_benchmark(tmp_path, "nats-simple", dict(zip(found, numbers)))
    table, _ = smoke("single_darts_table1", "--benchmark", path, out_name="second")
    for row in table["rows"][:2]:
        planted = numbers[found.index(row["genotypes"][0])]
        assert row["test_acc"] == pytest.approx(sum(planted["cifar10_test"]) / 2, abs=1e-9)
        assert row["val_acc"] == pytest.approx(sum(planted["cifar10_valid"]) / 2, abs=1e-9)
    assert "pynas benchmark test (%)" in table["columns"]


def test_darts_pt_nb201_reads_each_selected_cell_from_the_benchmark(smoke, tmp_path):
    """DARTS-PT Table 4's NAS-Bench-201 row: a first run against a file without the selected cells stops naming
    them; rerun (its searches and selections kept) with a file (NATS-Bench's simple layout) planting them, each
    row's test error is 100 − the planted CIFAR-10 test accuracy (mean of the file's two seeds), and PT decided
    each of NB201's 6 edges once among its 5 operations (`none` included)."""
    from test_nb201_benchmark import CELLS, write_benchmark

    (tmp_path / "other").mkdir()
    unrelated = write_benchmark(tmp_path / "other", "nats-simple", CELLS)
    with pytest.raises(RuntimeError, match="has no record of"):
        smoke("darts_pt_nb201", "--benchmark", unrelated, out_name="nb201")
    runs = {"DARTS": ("darts-pt-nb201", "nb201"), "DARTS+PT": ("darts-pt-nb201", "pt"),
            "DARTS+PT (fix α)": ("darts-pt-nb201-fixed-alpha", "pt")}
    cells = {row: json.load(open(tmp_path / "nb201" / f"{sup}-seed0" / f"select-{sel}" / "benchmark.json"))["cell"]
             for row, (sup, sel) in runs.items()}
    planted = {cell: {"cifar10_test": (80.0 + 3 * i, 82.5 + 3 * i)} for i, cell in enumerate(sorted(set(cells.values())))}
    path = write_benchmark(tmp_path, "nats-simple", planted)
    table, out = smoke("darts_pt_nb201", "--benchmark", path, out_name="nb201")
    assert [(r["method"], r["paper test error (%)"]) for r in table["rows"]] == [
        ("DARTS", 45.7), ("DARTS+PT", 11.89), ("DARTS+PT (fix α)", 6.20)]  # 001 Table 4
    for row in table["rows"]:
        sup, sel = runs[row["method"]]
        assert row["cells"] == [cells[row["method"]]]
        assert row["test_error"] == pytest.approx(100 - sum(planted[row["cells"][0]]["cifar10_test"]) / 2, abs=1e-9)
        assert json.load(open(out / f"{sup}-seed0" / "config.json"))["method"] == (
            "fixed" if "fix" in row["method"] else "darts")
        if sel == "pt":
            trail = json.load(open(out / f"{sup}-seed0" / "select-pt" / "pt_trail.json"))
            assert sorted(r["edge"] for r in trail) == list(range(6))
            assert all(len(r["scores_without"]) == 5 for r in trail) and len(row["pt_rounds"][0]) == 6
    darts_argmax = (out / "darts-pt-nb201-seed0" / "genotype.txt").read_text().strip()
    assert table["rows"][0]["cells"][0] == canonical_cell(darts_argmax)


@pytest.mark.slow(seconds=45)
def test_modern_nb201_reads_every_epochs_cell_from_the_benchmark(smoke, tmp_path):
    """The modern methods' NB201 searches: a first run against a file without their cells stops naming them;
    rerun (searches kept) with a file planting every epoch's cell, each row holds the six planted numbers of its
    final cell (mean of the file's two seeds) and the trajectory each epoch's planted CIFAR-10 test accuracy; each
    search ran its method and preset (ε_max 0.3 for the SDARTS ones)."""
    from test_nb201_benchmark import CELLS, WHERE, write_benchmark

    (tmp_path / "other").mkdir()
    unrelated = write_benchmark(tmp_path / "other", "nats-simple", CELLS)
    with pytest.raises(RuntimeError, match="has no record of"):
        smoke("modern_nb201", "--benchmark", unrelated, out_name="modern")
    runs = {"β-DARTS": ("beta-darts", "beta-darts"), "SDARTS-ADV": ("sdarts-adv", "sdarts-adv"),
            "SDARTS-RS": ("sdarts-rs", "sdarts-rs"), "DrNAS": ("drnas", "drnas"),
            "DrNAS (progressive)": ("drnas-progressive", "drnas")}  # label: (run folder prefix, config method)
    epoch_cells = {label: [canonical_cell(json.loads(line)["genotype"]) for line in
                           (tmp_path / "modern" / f"{prefix}-seed0" / "metrics.jsonl").read_text().splitlines()]
                   for label, (prefix, _) in runs.items()}
    planted = {cell: {key: (40.0 + 7 * i + j, 41.5 + 7 * i + j) for j, key in enumerate(WHERE)}
               for i, cell in enumerate(sorted({c for cells in epoch_cells.values() for c in cells}))}
    path = write_benchmark(tmp_path, "nats-simple", planted)
    table, out = smoke("modern_nb201", "--benchmark", path, out_name="modern")
    assert [r["method"] for r in table["rows"]] == list(runs)
    trajectory = json.load(open(out / "modern_nb201_trajectory.json"))
    assert trajectory["number"] == "cifar10_test"
    for row in table["rows"]:
        prefix, method = runs[row["method"]]
        cells = epoch_cells[row["method"]]
        assert len(cells) == 2  # --smoke: 2 epochs
        final = canonical_cell((out / f"{prefix}-seed0" / "genotype.txt").read_text().strip())
        assert row["cells"] == [final] == [cells[-1]]
        for key in WHERE:
            assert row[key] == pytest.approx(sum(planted[final][key]) / 2, abs=1e-9)
        curve = trajectory["methods"][row["method"]]
        assert curve["epochs"] == [1, 2]
        assert curve["per_seed"]["0"] == pytest.approx([sum(planted[c]["cifar10_test"]) / 2 for c in cells], abs=1e-9)
        config = json.load(open(out / f"{prefix}-seed0" / "config.json"))
        assert (config["method"], config["space"], config["epsilon_alpha"]) == (method, "nb201", 0.3)
    assert (out / "modern_nb201_trajectory.png").exists()
    assert "paper" not in " ".join(table["columns"])  # no paper numbers typed in (not readable)


def test_modern_nb201_refuses_an_unknown_method_in_one_line(tmp_path):
    sys.path.insert(0, EXPERIMENTS)
    try:
        import modern_nb201
    finally:
        sys.path.pop(0)
    for methods in ("enas", "beta-darts,beta-darts", ""):
        with pytest.raises(ValueError, match="^--methods must name each of beta-darts, sdarts-adv, sdarts-rs"):
            modern_nb201.main(["--smoke", "--out", str(tmp_path), "--benchmark", str(tmp_path),
                               "--methods", methods])


def canonical_cell(cell):
    """A NAS-Bench-201 string with each node's edges in input order (the benchmark's key)."""
    nodes = [sorted(node.strip("|").split("|"), key=lambda edge: int(edge.split("~")[1])) for node in cell.split("+")]
    return "+".join("|" + "|".join(node) + "|" for node in nodes)


def test_single_darts_table5(smoke):
    table, out = smoke("single_darts_table5")
    assert len(table["rows"]) == 15
    assert {r["method"] for r in table["rows"]} == {"DARTS", "Single-DARTS"}
    assert all(is_percent(r["test_acc"]) for r in table["rows"])
    config = json.load(open(out / "Single-DARTS-sigmoid____0-seed0" / "config.json"))
    assert config["relaxation"] == "sigmoid" and config["a_init"] == "zeros"


def test_wiring_patterns(smoke):
    table, out = smoke("wiring_patterns")
    assert [r["experiment"].split(" ")[0] for r in table["rows"]] == ["P1", "P2", "P3", "Fig.", "Fig."]
    for p, r in zip(("P1", "P2", "P3"), table["rows"]):
        run = "dsnas" if p != "P3" else "darts"
        verdict = {v["pattern"]: v for v in json.load(open(out / f"{run}-seed0-evolution" / "evolution.json"))[
            "verdicts"]}[p]
        assert r["holds"] == [verdict["holds"]]
    assert all(0 <= s <= 1 for r in table["rows"][3:] for s in r["positive_share"])


def test_cell_topology(smoke):
    table, _ = smoke("cell_topology")
    fig1 = {r["cell"]: r for r in table["rows"] if r["part"] == "Fig. 1"}
    assert set(fig1) == {"DARTS_V2", "NASNet", "AmoebaNet", "SNAS_mild"}
    # pynas' topology analysis gives the paper's Fig. 1 values
    assert all(r["pynas width, depth"] == r["paper width, depth"] for r in fig1.values())
    trained = [r for r in table["rows"] if r["part"] != "Fig. 1"]
    assert [r["cell"] for r in trained] == ["DARTS_V2 original"] + [
        f"DARTS_V2 {k} C{i}" for k in ("connections", "operations") for i in (1, 2)]
    assert all(is_percent(r["test_acc"]) for r in trained)
