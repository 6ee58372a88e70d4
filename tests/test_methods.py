"""Methods as compositions: the terms of the objective against formulas written out here (float64), DARTS-'
β schedule, how the parts join a search step, and the methods' options on the command line."""
import argparse
import json
import math

import numpy as np
import pytest
import torch

from pynas.cli import main
from pynas.nn import SearchNetwork
from pynas.search import (METHODS, AdversarialAttack, AuxSkipDecay, BetaDecay, DartsFirstOrder, RandomSmoothing,
                          SearchConfig, SingleLevel, ZeroOneLoss)
from pynas.search.config import RunConfig, add_search_arguments, config_from_arguments
from pynas.search.parts import parse_regularizer
from test_search import small_digits  # noqa: F401 (a fixture: searches on a slice of the digits)


def tiny(relaxation="softmax", space="darts", **kw):
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, space=space,
                          relaxation=relaxation, generator=torch.Generator().manual_seed(0), **kw)
    return model.double()


def batch(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def random_alpha(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=g, dtype=torch.float64))


def alphas_numpy(model):
    return np.concatenate([a.detach().numpy().ravel() for a in model.arch.alphas.values()])


# -- the terms' formulas ----------------------------------------------------------------


@pytest.mark.parametrize("form", ["l2", "l1"])
def test_zero_one_loss_and_its_gradient_against_the_formula(form):
    # FairDARTS separate_loss.py: −mean over every entry of [σ(α_normal); σ(α_reduce)] of (σ − ½)² (or |σ − ½|).
    model = tiny("sigmoid", space="darts-no-none")
    random_alpha(model)
    a = alphas_numpy(model)
    s = 1 / (1 + np.exp(-a))
    n = a.size
    assert n == 2 * 5 * 7  # two cell types, 5 edges of 7 operations
    if form == "l2":
        want, grad = -np.mean((s - 0.5) ** 2), -2 * (s - 0.5) * s * (1 - s) / n
    else:
        want, grad = -np.mean(np.abs(s - 0.5)), -np.sign(s - 0.5) * s * (1 - s) / n
    term = ZeroOneLoss(10.0, form)
    value = term.value(model)
    value.backward()
    got = np.concatenate([a.grad.numpy().ravel() for a in model.arch.alphas.values()])
    assert float(value.detach()) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(got, grad, rtol=1e-10, atol=1e-15)
    assert term.weight(0) == term.weight(49) == 10.0 and set(term.joins) == {"alpha", "weights"}


def test_beta_decay_and_its_gradient_against_the_formula():
    # β-DARTS architect.py mlc_loss: mean over edges of logsumexp over the operations of raw α; λ = 0.5·e.
    model = tiny()
    random_alpha(model)
    rows = np.concatenate([a.detach().numpy() for a in model.arch.alphas.values()])  # [2E, K]
    lse = np.log(np.exp(rows).sum(-1))
    softmax = np.exp(rows - lse[:, None])
    term = BetaDecay(0.5)
    value = term.value(model)
    value.backward()
    got = np.concatenate([a.grad.numpy() for a in model.arch.alphas.values()])
    assert float(value.detach()) == pytest.approx(lse.mean(), rel=1e-12)
    np.testing.assert_allclose(got, softmax / len(rows), rtol=1e-10)
    assert [term.weight(e) for e in (0, 1, 99)] == [0.0, 0.5, 49.5] and term.joins == ("alpha",)


def test_beta_decay_leaves_out_removed_operations_and_edges():
    model = tiny()
    random_alpha(model)
    model.arch.remove_op("normal", 0, "sep_conv_3x3")
    model.arch.remove_edge("reduce", 1)
    rows = []
    for t in ("normal", "reduce"):
        a, mask = model.arch.alphas[t].detach().numpy(), model.arch.mask(t).numpy()
        rows += [np.log(np.exp(a[e][mask[e]]).sum()) for e in range(len(a)) if mask[e].any()]
    assert len(rows) == 2 * 5 - 1
    assert float(BetaDecay().value(model)) == pytest.approx(np.mean(rows), rel=1e-12)


def test_aux_skip_decay_follows_darts_minus_scheduler():
    # DARTS- src/utils.py DecayScheduler, stepped once per epoch with the epoch (β₀ 1, T_max 50, T_start 0).
    linear = AuxSkipDecay(1.0, "linear", 50)
    assert [linear.at(e) for e in (0, 1, 25, 49, 50)] == pytest.approx([1.0, 0.98, 0.5, 0.02, 0.0])
    assert linear.at(60) == linear.at(50)  # held after T_stop
    stopped = AuxSkipDecay(2.0, "linear", 50, t_start=10, t_stop=30)
    assert stopped.at(5) == 2.0 and stopped.at(20) == pytest.approx(2.0 * 30 / 40)
    assert stopped.at(45) == stopped.at(30) == pytest.approx(2.0 * 20 / 40)
    cosine, slow = AuxSkipDecay(1.0, "cosine", 50), AuxSkipDecay(1.0, "slow-cosine", 50)
    assert cosine.at(25) == pytest.approx(0.5) and cosine.at(50) == pytest.approx(0.0, abs=1e-15)
    assert slow.at(25) == pytest.approx(math.cos(math.pi / 4))
    assert AuxSkipDecay(0.7, "none").at(40) == 0.7
    for bad in (dict(decay="step"), dict(beta0=-1.0), dict(t_max=0), dict(t_max=10, t_start=10)):
        with pytest.raises(ValueError, match="--aux"):
            AuxSkipDecay(**bad)


def test_regularizer_option_values():
    assert parse_regularizer("zero-one") == ("zero-one", 10.0)
    assert parse_regularizer("beta-decay=0.25") == ("beta-decay", 0.25)
    for bad, word in (("beta-decay=nan", "finite"), ("beta-decay=-1", ">= 0"), ("beta=1", "one of"),
                      ("zero-one=x", "number")):
        with pytest.raises(ValueError, match="--regularizer"):
            parse_regularizer(bad)


# -- the parts in a step ------------------------------------------------------------------


def _gradients(strategy, *batches):
    strategy.w_opt.step = lambda *a, **k: None
    strategy.a_opt.step = lambda *a, **k: None
    metrics = strategy.step(*batches)
    return metrics, [a.grad.clone() for a in strategy.alphas], [w.grad.clone() for w in strategy.weights
                                                                  if w.grad is not None]


def test_beta_decay_joins_alphas_loss_only_with_its_epoch_weight():
    train, val = batch(1), batch(2)
    plain = DartsFirstOrder(tiny(), SearchConfig(epochs=10), 4)
    decayed = DartsFirstOrder(tiny(), SearchConfig(epochs=10), 4, terms=[BetaDecay(0.5)])
    plain.epochs_done = decayed.epochs_done = 3  # λ = 1.5
    m0, a0, w0 = _gradients(plain, train, val)
    m1, a1, w1 = _gradients(decayed, train, val)
    alphas = [a.detach() for a in decayed.alphas]
    n = sum(a.size(0) for a in alphas)
    for g0, g1, a in zip(a0, a1, alphas):
        torch.testing.assert_close(g1, g0 + 1.5 * a.softmax(-1) / n, rtol=1e-10, atol=1e-14)
    assert all(torch.equal(x, y) for x, y in zip(w0, w1)) and torch.equal(m0["loss"], m1["loss"])


def test_zero_one_loss_joins_both_losses_as_fairdarts_code():
    # FairDARTS adds 10·L01 to the α loss and to the weights' loss (logged, as the code logs it); the weights'
    # gradients are those of the cross-entropy (L01 does not depend on them).
    train, val = batch(1), batch(2)
    model = tiny("sigmoid")
    plain = DartsFirstOrder(tiny("sigmoid"), SearchConfig(), 4)
    fair = DartsFirstOrder(model, SearchConfig(), 4, terms=[ZeroOneLoss(10.0)])
    m0, a0, w0 = _gradients(plain, train, val)
    m1, a1, w1 = _gradients(fair, train, val)
    s = torch.cat([a.detach().sigmoid().flatten() for a in fair.alphas])
    term = -((s - 0.5) ** 2).mean()
    assert float(m1["loss"]) == pytest.approx(float(m0["loss"]) + 10 * float(term), rel=1e-12)
    assert all(torch.equal(x, y) for x, y in zip(w0, w1))
    n = s.numel()
    for g0, g1, a in zip(a0, a1, fair.alphas):
        sa = a.detach().sigmoid()
        torch.testing.assert_close(g1, g0 + 10 * (-2 * (sa - 0.5) * sa * (1 - sa) / n), rtol=1e-10, atol=1e-14)


def test_a_single_level_step_adds_each_term_once():
    train = batch(1)
    plain = SingleLevel(tiny("sigmoid"), SearchConfig(), 4)
    fair = SingleLevel(tiny("sigmoid"), SearchConfig(), 4, terms=[ZeroOneLoss(2.0)])
    m0, _, _ = _gradients(plain, train, None)
    m1, _, _ = _gradients(fair, train, None)
    s = torch.cat([a.detach().sigmoid().flatten() for a in fair.alphas])
    assert float(m1["loss"]) == pytest.approx(float(m0["loss"]) - 2 * float(((s - 0.5) ** 2).mean()), rel=1e-12)


def test_the_strategy_sets_darts_minus_beta_once_per_epoch():
    model = tiny(aux_skip=True)
    strategy = METHODS["darts-minus"].strategy(model, SearchConfig(epochs=3), 2)
    seen = []
    for epoch in range(3):
        for step in range(2):
            strategy.step(batch(10 * epoch + step), batch(10 * epoch + step + 5))
            seen.append(float(model.aux_weight))
        strategy.epoch_end()
    assert seen == pytest.approx([1.0, 1.0, 0.98, 0.98, 0.96, 0.96])
    with pytest.raises(ValueError, match="aux_skip=True"):
        DartsFirstOrder(tiny(), SearchConfig(), 2, aux_skip=AuxSkipDecay())


# -- the methods by name ------------------------------------------------------------------


def test_each_method_is_its_composition():
    fair, beta, minus, adv = (METHODS[m] for m in ("fairdarts", "beta-darts", "darts-minus", "sdarts-adv"))
    assert (fair.relaxation, fair.regularizers, fair.derivation, fair.init) == ("sigmoid", ("zero-one=10",),
                                                                              "threshold", "zeros")
    assert beta.regularizers == ("beta-decay=0.5",) and beta.order is DartsFirstOrder
    assert minus.aux_skip and minus.options == {}  # DARTS- keeps `none`
    assert adv.perturbation == "adversarial" and METHODS["sdarts-rs"].perturbation == "random"
    model = tiny("sigmoid", space="darts-no-none")
    strategy = fair.strategy(model, SearchConfig(), 2)
    assert [t.name for t in strategy.terms] == ["zero-one"]
    assert isinstance(METHODS["sdarts-adv"].strategy(tiny(), SearchConfig(), 2).perturbation, AdversarialAttack)
    assert isinstance(METHODS["sdarts-rs"].strategy(tiny(), SearchConfig(), 2).perturbation, RandomSmoothing)
    # The seed methods compose nothing beyond their order and relaxation.
    for name in ("darts", "darts-2nd", "single-level", "gdas", "dsnas", "fixed", "uniform", "sgas"):
        m = METHODS[name]
        assert not m.regularizers and m.perturbation == "none" and not m.aux_skip


def _cli_config(argv):
    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    return config_from_arguments(parser.parse_args(argv), argv).resolved()


def test_a_methods_options_lie_beneath_presets_configs_and_explicit_options(tmp_path):
    cfg = _cli_config(["--method", "fairdarts"])
    assert cfg.space == "darts-no-none" and cfg.a_betas == (0.9, 0.999) and cfg.a_init == "zeros"
    assert cfg.a_weight_decay == 1e-3 and cfg.relaxation == "sigmoid" and cfg.derivation == "threshold"
    assert _cli_config(["--method", "fairdarts", "--space", "darts"]).space == "darts"
    assert _cli_config(["--method", "fairdarts", "--dataset", "cifar10"]).a_lr == 3e-3  # off the digits: the method's
    assert _cli_config(["--method", "sdarts-rs"]).space == "darts-no-none"
    assert _cli_config(["--preset", "darts-minus-s3"]).space == "s3"
    assert _cli_config(["--method", "darts", "--regularizer", "none"]).regularizers == []
    assert _cli_config(["--method", "fairdarts", "--regularizer", "zero-one-l1=5"]).regularizers == ["zero-one-l1=5"]
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"method": "sdarts-adv", "space": "darts"}))
    assert _cli_config(["--config", str(saved)]).space == "darts"  # a config file's space wins
    assert RunConfig.for_method("beta-darts").space == "darts-no-none"


def test_the_composed_command_runs_and_logs_its_parts(tmp_path, small_digits):
    out = tmp_path / "run"
    assert main(["search", "--method", "darts", "--regularizer", "beta-decay", "--perturbation", "adversarial",
                 "--aux-skip", "--partial-channels", "2", "--epochs", "2", "--C", "4", "--layers", "3", "--steps",
                 "2", "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["aux_weight"] for r in records] == pytest.approx([1.0, 0.98])
    assert all(r["terms"]["beta-decay"] > 0 for r in records)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["regularizers"], saved["perturbation"], saved["aux_skip"]) == (["beta-decay"], "adversarial", True)


@pytest.mark.parametrize("argv, words", [
    (["--method", "gdas", "--perturbation", "adversarial"], "hard sample"),
    (["--method", "darts", "--regularizer", "zero-one"], "--relaxation sigmoid"),
    (["--method", "single-level", "--perturbation", "random"], "single-level"),
    (["--method", "fairdarts", "--relaxation", "softmax"], "zero-one"),
    (["--space", "nb201", "--derivation", "darts"], "--derivation nb201"),
    (["--space", "nb201", "--aux-skip"], "--aux-skip"),
    (["--method", "sdarts-adv", "--epsilon-alpha", "0"], "--epsilon-alpha"),
    (["--method", "sdarts-adv", "--attack-steps", "0"], "--attack-steps"),
    (["--derivation", "threshold", "--threshold", "1.5"], "--threshold"),
    (["--regularizer", "beta-decay=inf"], "--regularizer"),
    (["--aux-skip", "--aux-beta", "-1"], "--aux-beta"),
    (["--method", "drnas"], "--C 12"),  # its stages' K 6 and 4 must divide C (8 by default)
    (["--method", "drnas", "--C", "12", "--drnas-channels", "6", "4", "--drnas-keep", "7"], "--drnas-keep"),
    (["--method", "drnas", "--C", "12", "--partial-channels", "2"], "--drnas-channels"),
    (["--method", "darts", "--drnas-frozen", "0.2"], "--method drnas"),
    (["--method", "oles", "--oles-threshold", "2"], "--oles-threshold"),
    (["--method", "lambda-darts", "--lambda-epsilon", "0"], "--lambda-epsilon"),
    # a part's option without its part would be ignored
    (["--method", "darts", "--threshold", "0.5"], "--derivation threshold"),
    (["--method", "sdarts-rs", "--attack-steps", "3"], "--perturbation adversarial"),
    (["--method", "darts", "--epsilon-alpha", "0.2"], "--perturbation random or adversarial"),
    (["--method", "darts", "--aux-decay", "cosine"], "--aux-skip"),
    (["--method", "darts", "--oles-window", "5"], "--method oles"),
    (["--method", "darts", "--lambda", "0.5"], "--method lambda-darts"),
    # parts that cannot act
    (["--method", "darts", "--derivation", "threshold"], "--relaxation sigmoid"),
    (["--method", "drnas", "--C", "12", "--aux-skip"], "widens"),
    (["--method", "fixed", "--regularizer", "beta-decay"], "α fixed"),
])
def test_a_combination_that_makes_no_sense_stops_in_one_line(argv, words, capsys):
    assert main(["search", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_cuda_graphs_refuse_the_parts_not_run_captured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="--cuda-graphs"):
        RunConfig(method="darts", regularizers=["beta-decay"], cuda_graphs=True, device="cuda").validate()
    for method in ("fairdarts", "beta-darts", "darts-minus", "sdarts-adv"):
        with pytest.raises(ValueError, match=f"--method {method}"):
            RunConfig.for_method(method, cuda_graphs=True, device="cuda").validate()


def test_pt_tunes_each_supernet_with_its_own_composition():
    # DARTS-PT fine-tunes between decisions the way the supernet was searched, its schedules held at the
    # search's last epoch (SDARTS at the full ε, as DARTS-PT's code tunes SDARTS-RS).
    from pynas.select.pt import tuning_strategy

    def tuned(method, model, **kw):
        return tuning_strategy(RunConfig.for_method(method, epochs=10, **kw))(model, SearchConfig(epochs=5), 3)

    fair = tuned("fairdarts", tiny("sigmoid", space="darts-no-none"))
    assert [t.name for t in fair.terms] == ["zero-one"]
    beta = tuned("beta-darts", tiny())
    assert [t.weight(beta.epochs_done) for t in beta.terms] == [4.5]  # λ of epoch 9
    model = tiny(aux_skip=True)
    minus = tuned("darts-minus", model)
    minus.step(batch(1), batch(2))
    assert float(model.aux_weight) == pytest.approx(0.82)  # β(9) = (50 − 9)/50
    adv = tuned("sdarts-adv", tiny(), epsilon_alpha=0.2)
    assert isinstance(adv.perturbation, AdversarialAttack) and adv.perturbation.current_epsilon(adv) == 0.2
    from pynas.search.lambda_darts import LambdaDarts
    from pynas.search.oles import Oles

    assert type(tuned("oles", tiny(), oles_window=5)) is Oles
    torch.manual_seed(0)
    four = SearchNetwork(C=4, num_classes=3, layers=4, steps=2, multiplier=2, in_channels=1).double()
    lam = tuned("lambda-darts", four, lambda_reg=0.5)
    assert type(lam) is LambdaDarts and lam.lambda_now() == pytest.approx(0.5)  # λ(E − 1) = λ: the last epoch's


def test_pt_selection_runs_on_a_darts_minus_supernet(tmp_path, small_digits):
    run = tmp_path / "run"
    assert main(["search", "--method", "darts-minus", "--epochs", "1", "--C", "4", "--layers", "3", "--steps", "2",
                 "--batch-size", "32", "--out", str(run), "--quiet"]) == 0
    assert main(["select", "--run", str(run), "--method", "pt", "--tune-epochs", "0", "--val-batches", "1",
                 "--quiet"]) == 0
    trail = json.loads((run / "select-pt" / "pt_trail.json").read_text())
    assert trail and (run / "select-pt" / "genotype.txt").exists()


def test_every_method_has_its_row_in_the_fidelity_document():
    import os

    doc = os.path.join(os.path.dirname(__file__), "..", "docs", "fidelity.md")
    first_columns = [line.split("|")[1] for line in open(doc) if line.startswith("| ")]
    missing = [m for m in METHODS if not any(f"`{m}`" in column for column in first_columns)]
    assert not missing, f"docs/fidelity.md has no row for {missing}"


def test_the_darts_rule_with_none_ranks_and_keeps_none_as_oles_code():
    # OLES model_search.py:137-154: per node the two edges with the largest weight, `none` included, each with
    # its argmax, `none` included. One node (two steps: edges 0-1 feed node 2, edges 2-4 node 3), ops by hand.
    from pynas.genotype import derive_cell

    ops = ["none", "skip_connect", "sep_conv_3x3"]
    w = torch.tensor([[0.7, 0.2, 0.1],   # edge 0 -> node 2: `none` strongest
                      [0.1, 0.3, 0.6],   # edge 1 -> node 2
                      [0.2, 0.5, 0.3],   # edge 2 -> node 3
                      [0.9, 0.05, 0.05],  # edge 3 -> node 3: `none`, the strongest edge
                      [0.3, 0.3, 0.4]])  # edge 4 -> node 3: 0.4 < 0.5, dropped
    pairs, concat = derive_cell(w, ops, "darts-with-none")
    assert pairs == [("none", 0), ("sep_conv_3x3", 1), ("none", 1), ("skip_connect", 0)] and concat == [2, 3]
    # DARTS' rule leaves `none` out of both the ranking and the choice.
    assert derive_cell(w, ops, "darts")[0] == [("sep_conv_3x3", 1), ("skip_connect", 0),
                                               ("skip_connect", 0), ("sep_conv_3x3", 2)]


def test_a_drnas_run_after_its_widening_is_read_back_by_select_and_evaluate(tmp_path, small_digits, capsys):
    # The checkpoint of a search past its stage boundary holds C/4-channel operations: select and evaluate
    # rebuild the widened supernet (DrNAS' structure) before reading it, and PT tunes it by first order.
    run = tmp_path / "run"
    assert main(["search", "--method", "drnas", "--epochs", "2", "--C", "12", "--layers", "3", "--steps", "2",
                 "--batch-size", "32", "--out", str(run), "--quiet"]) == 0
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["partial_channels"] for r in records] == [6, 4]
    assert all(sum(p > 0 for p in row) == 4 for r in records for t in ("normal", "reduce")
               for row in r["arch"][t]["probabilities"])  # the top 4 of 7 kept after the first stage
    assert main(["evaluate", "--run", str(run)]) == 0
    assert main(["select", "--run", str(run), "--method", "pt", "--tune-epochs", "1", "--val-batches", "1",
                 "--quiet"]) == 0
    assert (run / "select-pt" / "genotype.txt").exists()
