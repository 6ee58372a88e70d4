"""Command-line success paths, each checked by what it computes (issue 19)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import pynas
from pynas.cli import main

TINY = ["--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256", "--quiet"]


@pytest.fixture(scope="module")
def darts_run(tmp_path_factory):
    """One tiny 2-epoch DARTS search shared by the tests that read a run."""
    out = tmp_path_factory.mktemp("cli") / "darts"
    assert main(["search", "--epochs", "2", *TINY, "--out", str(out)]) == 0
    return out


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def test_python_m_pynas_prints_the_versions():
    done = subprocess.run([sys.executable, "-m", "pynas", "--version"], capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert pynas.__version__ in done.stdout and torch.__version__ in done.stdout


def test_the_pynas_entry_point_runs_analyze(darts_run, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "pynas")  # the console script pip installed
    out = tmp_path / "evolution"
    done = subprocess.run([script, "analyze", "evolution", "--run", str(darts_run), "--out", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    evolution = json.loads((out / "evolution.json").read_text())
    records = [json.loads(line) for line in open(darts_run / "metrics.jsonl")]
    assert evolution["epochs"] == [1, 2]
    for cell_type in ("normal", "reduce"):  # the curves are the run's α probabilities, epoch by epoch
        curves = evolution["cell_types"][cell_type]["probabilities"]
        for epoch, record in enumerate(records):
            torch.testing.assert_close(torch.tensor(curves[epoch]),
                                       torch.tensor(record["arch"][cell_type]["probabilities"]))


def test_select_by_the_snas_rule_is_the_searchs_snas_genotype(darts_run, capsys):
    capsys.readouterr()
    assert main(["select", "--run", str(darts_run), "--method", "snas"]) == 0
    assert capsys.readouterr().out.strip() == f"genotype: {(darts_run / 'genotype-snas.txt').read_text().strip()}"


def test_select_by_the_nb201_rule_is_the_argmax_per_edge(tmp_path, capsys):
    from pynas.genotype import NB201Genotype

    run = tmp_path / "nb201"
    assert main(["search", "--space", "nb201", "--epochs", "1", "--C", "2", "--layers", "1", "--batch-size", "256",
                 "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["select", "--run", str(run), "--method", "nb201"]) == 0
    genotype = NB201Genotype.parse(capsys.readouterr().out.strip().removeprefix("genotype: "))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    alpha = state["model"]["arch.alphas.cell"]
    from pynas.nn import NB201

    chosen = [NB201.ops[int(k)] for k in alpha.argmax(-1)]
    assert [op for node in genotype.nodes for op, _ in node] == chosen


@pytest.mark.parametrize("method", ["pt", "pt-mag"])
def test_select_operation_phase_only_with_the_loss_criterion(darts_run, tmp_path, method):
    out = tmp_path / method
    assert main(["select", "--run", str(darts_run), "--method", method, "--phases", "operation", "--crit", "loss",
                 "--tune-epochs", "0", "--val-batches", "1", "--out", str(out), "--quiet"]) == 0
    trail = json.loads((out / "pt_trail.json").read_text())
    # --phases operation: every edge of each cell type decided once (5 per cell), no node (topology) round.
    assert {r["phase"] for r in trail} == {"operation"}
    assert sorted((r["cell_type"], r["edge"]) for r in trail) == [(t, e) for t in ("normal", "reduce") for e in range(5)]
    alphas = torch.load(darts_run / "checkpoint.pt", weights_only=True)["model"]
    from pynas.nn import DARTS

    for r in trail:
        if method == "pt":  # --crit loss: the score is -loss without the op; the op whose removal hurts most wins
            scores = r["scores_without"]
            assert all(v < 0 for v in scores.values()) and r["chosen"] == min(scores, key=scores.get)
        else:  # pt-mag: by α's magnitude (no tuning between rounds: the search's α), `none` never
            alpha = alphas[f"arch.alphas.{r['cell_type']}"][r["edge"]].clone()
            alpha[DARTS.ops.index("none")] = -float("inf")
            assert r["chosen"] == DARTS.ops[int(alpha.argmax())]


def test_the_darts_cifar10_preset_reaches_the_optimisers(tmp_path):
    from pynas.search.presets import PRESETS

    out = tmp_path / "preset"
    assert main(["search", "--preset", "darts-cifar10", "--dataset", "digits", "--epochs", "1", *TINY,
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    overridden = {"dataset", "epochs", "C", "layers", "steps", "batch_size"}
    for key, value in PRESETS["darts-cifar10"].items():
        want = list(value) if isinstance(value, tuple) else value
        assert config[key] == (want if key not in overridden else config[key]), key
    assert (config["dataset"], config["C"], config["batch_size"]) == ("digits", 2, 256)
    strategy = torch.load(out / "checkpoint.pt", weights_only=True)["strategy"]
    a_group, w_group = strategy["a_opt"]["param_groups"][0], strategy["w_opt"]["param_groups"][0]
    # DARTS' α Adam (not the digits' default lr 0.15) and its weight SGD, cosine from 0.025 to 0.001 over 1 epoch.
    assert (a_group["lr"], tuple(a_group["betas"]), a_group["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
    assert (w_group["momentum"], w_group["weight_decay"], w_group["initial_lr"]) == (0.9, 3e-4, 0.025)
    assert w_group["lr"] == pytest.approx(0.001)


@pytest.mark.slow
def test_compile_in_training_mode_runs_the_compiled_supernet(tmp_path, monkeypatch):
    # Dynamo and AOTAutograd (forward and backward graphs) through the aot_eager backend: the search's own
    # wiring of --compile is tested, not Inductor's code generation (tests/test_compile.py has that).
    compile, compiled_calls = torch.compile, []

    def aot_eager(model, **kw):
        fn = compile(model, backend="aot_eager", fullgraph=True)
        return lambda *a: compiled_calls.append(torch.is_grad_enabled()) or fn(*a)

    from torch.utils.data import Subset

    from pynas.search import run

    search_data = run.search_data  # 2 steps of 32 and a 32-image evaluation: one shape, few graphs
    monkeypatch.setattr(run, "search_data", lambda cfg: (lambda t, v, i: (Subset(t, range(64)), Subset(v, range(32)), i))(
        *search_data(cfg)))
    monkeypatch.setattr(torch, "compile", aot_eager)
    argv = ["search", "--method", "single-level", "--space", "s2", "--epochs", "1", *TINY, "--batch-size", "32"]
    assert main([*argv, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    assert compiled_calls and all(compiled_calls)  # every training step's forward, with autograd
    assert main([*argv, "--out", str(tmp_path / "eager")]) == 0
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("compiled", "eager"))
    for name in a:  # the same steps: weights and α agree to float32 rounding
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
