"""Wiring evolution (wiring paper Sec. 3) on hand-made run directories: the
verdicts on P1-P3, the most likely cells, the figures, and refusals."""
import argparse
import json
import math
import os

import numpy as np
import pytest

from pynas.analysis.draw import draw_cell
from pynas.analysis.evolution import entropy, load_history, register_commands
from pynas.nn.spaces import DARTS_OPS

PNG = b"\x89PNG\r\n\x1a\n"
NONE, SEP, SKIP, DIL = 0, DARTS_OPS.index("sep_conv_3x3"), DARTS_OPS.index("skip_connect"), DARTS_OPS.index("dil_conv_3x3")
# The minimal cell (Fig. 2): edges 0->2, 1->2, 0->3, 1->3 are input edges, 2->3 the intermediate one.
EDGES = [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


def dist(k, K=8):
    """A distribution over K ops whose argmax is k."""
    p = np.full(K, 0.05)
    p[k] = 1.0 - 0.05 * (K - 1)
    return p.tolist()


def write_run(path, epochs, space="minimal", tail=""):
    """``epochs``: per epoch, per cell type, the argmax op of each edge."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"space": space, "method": "snas"}))
    lines = []
    for t, cells in enumerate(epochs, start=1):
        arch = {ct: {"probabilities": [dist(k, 8 if space == "minimal" else 2) for k in best],
                     "entropy": [0.0] * len(best)} for ct, best in cells.items()}
        lines.append(json.dumps({"epoch": t, "arch": arch, "genotype": "-"}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + tail)
    return path


def run_cli(argv):
    parser = argparse.ArgumentParser()
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def verdicts_of(tmp_path, epochs, capsys, **kw):
    run = write_run(tmp_path / "run", epochs, **kw)
    out = tmp_path / "out"
    assert run_cli(["evolution", "--run", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "evolution.json").read_text())
    by_pattern = {v["pattern"]: v for v in report["verdicts"]}
    for v in report["verdicts"]:  # one printed line per verdict
        assert sum(line.startswith(v["pattern"] + " ") for line in printed.splitlines()) == 1
    return by_pattern, report, out


KEPT_ALL = [SEP, SKIP, DIL, SEP, SEP]


def test_growth_and_width_preference(tmp_path, capsys):
    normal = [[NONE] * 5, [NONE] * 5, [SEP, NONE, NONE, NONE, NONE], [SEP, SKIP, DIL, NONE, NONE]]
    epochs = [{"normal": n, "reduce": KEPT_ALL} for n in normal]
    # A last line cut short by a kill is skipped.
    v, report, out = verdicts_of(tmp_path, epochs, capsys, tail='{"epoch": 5, "arch": {"nor')
    assert v["P1"]["holds"] and v["P1"]["cell_types"] == ["normal"]
    for edge in ("0->2", "1->2", "0->3"):
        assert edge in v["P1"]["detail"]
    assert "1->3" not in v["P1"]["detail"]  # dropped throughout: never recovered
    assert v["P2"]["holds"] and v["P2"]["cell_types"] == ["normal"] and "3 of 4" in v["P2"]["detail"]
    assert not v["P3"]["holds"]
    # the most likely cell of each epoch: argmax per edge, `none` edges left out
    cells = [c["edges"] for c in report["cell_types"]["normal"]["most_likely"]]
    assert cells == [[], [], [[0, 2, "sep_conv_3x3"]],
                     [[0, 2, "sep_conv_3x3"], [1, 2, "skip_connect"], [0, 3, "dil_conv_3x3"]]]
    assert report["epochs"] == [1, 2, 3, 4] and report["edges"] == ["0->2", "1->2", "0->3", "1->3", "2->3"]
    # a diagram per change of the most likely cell, and the curves
    figures = set(report["figures"])
    assert {"cell_normal_epoch001.png", "cell_normal_epoch003.png", "cell_normal_epoch004.png",
            "cell_reduce_epoch001.png"} <= figures
    assert "cell_normal_epoch002.png" not in figures and "cell_reduce_epoch002.png" not in figures
    assert {"evolution_normal_probabilities.png", "evolution_reduce_probabilities.png",
            "evolution_entropy.png"} <= figures
    for name in figures:
        assert (out / name).read_bytes().startswith(PNG)
    # entropy of each edge's distribution, independently
    p = np.array(dist(SEP))
    assert report["cell_types"]["reduce"]["entropy"][0][0] == pytest.approx(float(-(p * np.log(p)).sum()))
    assert report["cell_types"]["normal"]["probabilities"][2][0] == dist(SEP)


def test_width_preference_without_growth(tmp_path, capsys):
    steady = [SEP, SKIP, DIL, SEP, NONE]  # input edges kept throughout, the intermediate edge dropped
    v, _, _ = verdicts_of(tmp_path, [{"normal": steady, "reduce": KEPT_ALL}] * 3, capsys)
    assert not v["P1"]["holds"] and v["P2"]["holds"] and v["P2"]["cell_types"] == ["normal"]
    assert "2->3" in v["P2"]["detail"] and "4 of 4" in v["P2"]["detail"] and not v["P3"]["holds"]


def test_bilevel_failure(tmp_path, capsys):
    epochs = [{"normal": KEPT_ALL, "reduce": KEPT_ALL}, {"normal": [NONE, SEP, NONE, NONE, NONE], "reduce": [NONE] * 5},
              {"normal": [NONE] * 5, "reduce": [NONE] * 5}]
    v, report, _ = verdicts_of(tmp_path, epochs, capsys)
    assert v["P3"]["holds"] and v["P3"]["cell_types"] == ["normal", "reduce"]
    assert not v["P1"]["holds"] and not v["P2"]["holds"]  # nothing recovers; no input edge is kept
    assert report["cell_types"]["normal"]["most_likely"][-1]["edges"] == []


def test_pruning_is_none_of_the_patterns(tmp_path, capsys):
    # Edges kept from the start, one pruned at the end, the intermediate edge kept.
    epochs = [{"normal": KEPT_ALL, "reduce": KEPT_ALL}] * 2 + [{"normal": [SEP, SKIP, NONE, SEP, SEP], "reduce": KEPT_ALL}]
    v, _, _ = verdicts_of(tmp_path, epochs, capsys)
    assert [v[p]["holds"] for p in ("P1", "P2", "P3")] == [False, False, False]


def test_a_space_without_none_has_no_verdicts(tmp_path, capsys):
    v, report, _ = verdicts_of(tmp_path, [{"normal": [0, 1, 1, 0, 1]}] * 2, capsys, space="s2")
    assert all(v[p]["holds"] is None for p in ("P1", "P2", "P3"))
    assert report["cell_types"]["normal"]["most_likely"][0]["edges"][0] == [0, 2, "skip_connect"]


def test_nb201_cells_have_one_input_node(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"space": "nb201"}))
    p = [[0.2] * 5 for _ in range(6)]
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "arch": {"cell": {"probabilities": p}}}) + "\n")
    history = load_history(str(run))
    assert history.inputs == 1 and history.edges == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    # uniform probabilities: the entropy of each edge is log K
    assert np.allclose(entropy(history.probabilities["cell"]), math.log(5))


@pytest.mark.parametrize("make", ["missing", "empty", "foreign", "no-metrics", "empty-metrics", "wrong-shape"])
def test_cli_refuses_what_is_not_a_search_run(tmp_path, capsys, make):
    run = tmp_path / "run"
    if make != "missing":
        run.mkdir()
    if make == "foreign":
        (run / "config.json").write_text("[1, 2]")
        (run / "metrics.jsonl").write_text("hello\n")
    if make in ("no-metrics", "empty-metrics", "wrong-shape"):
        (run / "config.json").write_text(json.dumps({"space": "darts"}))
    if make == "empty-metrics":
        (run / "metrics.jsonl").write_text("")
    if make == "wrong-shape":  # 3 operations in a space of 8
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "arch": {"normal": {"probabilities": [[1, 0, 0]]}}}))
    assert run_cli(["evolution", "--run", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pynas analyze evolution: ") and err.count("\n") == 1 and "Traceback" not in err


def test_draw_cell_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    path = tmp_path / "cell.png"
    draw_cell([(0, 2, "sep_conv_3x3"), (2, 3, "skip_connect")], str(path), title="t", num_nodes=4)
    assert path.read_bytes().startswith(PNG)
    draw_cell([], str(tmp_path / "empty.png"), num_nodes=4)  # every edge dropped: the nodes alone
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG)


def test_draw_cell_with_graphviz_when_dot_is_installed(tmp_path, monkeypatch):
    # A stand-in `dot` (the real one is optional): keeps the DOT source it reads
    # and writes a PNG signature where `-o` points.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dot = bin_dir / "dot"
    dot.write_text(f"#!/bin/sh\ncat > {tmp_path}/source.dot\nprintf '\\211PNG\\r\\n\\032\\n' > \"$3\"\n")
    dot.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = tmp_path / "cell.png"
    draw_cell([(0, 2, "sep_conv_3x3"), (1, 3, "skip_connect")], str(path), title="normal", num_nodes=4)
    assert path.read_bytes() == PNG
    source = (tmp_path / "source.dot").read_text()
    assert 'n0 -> n2 [label="sep_conv_3x3"' in source and 'n1 -> n3 [label="skip_connect"' in source
    assert "n2 -> out" in source and "n3 -> out" in source and 'label="normal"' in source
