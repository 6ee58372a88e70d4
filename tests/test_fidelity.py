"""Where a method's formula comes from its paper (or its authors' code): each test
computes the paper's quantity independently (float64) and compares."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from pynas.arch import Architecture, TemperatureSchedule, relax
from pynas.functional import mixed_sum
from pynas.genotype import DARTS_V2, Genotype, derive_genotype
from pynas.nn import S1, MixedOp, SearchNetwork
from pynas.search import SearchConfig
from pynas.search.cost import ResourceConstraint, cell_costs
from pynas.search.config import RunConfig
from pynas.search.run import SearchRun
from pynas.search.strategies import Sgas, Strategy
from pynas.select import genotype_in_place_of_alpha

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")


# -- DSNAS (000 Sec. 4, App. B): ∂L/∂α = C(Z_s)·(δ_s − p) -----------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_dsnas_alpha_gradient_is_the_sampled_ops_cost_times_the_score(seed):
    torch.manual_seed(seed)
    edge = MixedOp(3, 1, DARTS_OPS).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    R = torch.randn(2, 3, 5, 5, dtype=torch.float64)  # L = Σ R ⊙ y, so ∂L/∂y = R
    alpha = (torch.randn(1, 8, dtype=torch.float64) * 2).requires_grad_()
    mask = torch.ones(1, 8, dtype=torch.bool)
    w = relax(alpha, mask, "categorical", generator=torch.Generator().manual_seed(seed))
    s = int(w.weights.detach().argmax())
    assert w.weights.detach()[0].tolist() == [float(k == s) for k in range(8)]  # the forward sees Z_s exactly
    outputs, weights = edge.candidates(x, w.weights[0], w.active[0])
    y = mixed_sum(outputs, weights) if outputs else x.mul(0.0)
    (y * R).sum().backward()
    # Independently: C = Σ ∂L/∂O_s ⊙ O_s of the sampled operation (0 for `none`), p = softmax(α).
    O_s = edge.ops[edge._slot[s]](x).detach() if s in edge._slot else torch.zeros_like(x)
    C = float((R * O_s).sum())
    p = torch.softmax(alpha.detach(), -1)
    expected = C * (F.one_hot(torch.tensor([s]), 8).double() - p)
    torch.testing.assert_close(alpha.grad, expected, rtol=1e-10, atol=1e-12)


def test_dsnas_gradient_sums_the_cost_over_the_cells_sharing_a_sample():
    # One sample per forward for all cells of a type: α's gradient is (Σ_cells C_cell)·(δ_s − p).
    torch.manual_seed(0)
    arch = Architecture("darts", 2, ("normal",), relaxation="categorical", generator=torch.Generator().manual_seed(1))
    arch.double()
    w = arch.weights("normal")
    costs = torch.randn(3, dtype=torch.float64)
    loss = sum(c * w.weights.sum(-1).sum() for c in costs)  # each "cell" contributes C_cell·Σ w
    loss.backward()
    p = torch.softmax(arch.alphas["normal"].detach(), -1)
    onehot = (w.weights.detach() > 0.5).double()
    torch.testing.assert_close(arch.alphas["normal"].grad, costs.sum() * (onehot - p), rtol=1e-10, atol=1e-12)


# -- Single-DARTS (002 Sec. 5.1.2): no α weight decay under sigmoid ------------------------------------------


def test_sigmoid_search_leaves_alpha_of_none_where_it_started(tmp_path):
    cfg = RunConfig(method="single-level", relaxation="sigmoid", epochs=1, C=2, layers=3, steps=2, batch_size=128,
                    out=str(tmp_path / "r"))
    run = SearchRun(cfg, quiet=True)
    assert run.cfg.a_weight_decay == 0.0 and run.strategy.a_opt.param_groups[0]["weight_decay"] == 0.0
    run.run()
    none = run.model.arch.ops.index("none")
    for alpha in run.model.arch_parameters():
        assert torch.all(alpha[:, none] == torch.tensor(-math.log(7), dtype=alpha.dtype))  # untouched
        assert not torch.all(alpha[:, none + 1:] == alpha[0, none + 1])  # the others trained


def test_softmax_keeps_darts_alpha_weight_decay():
    assert RunConfig().resolved().a_weight_decay == 1e-3
    assert RunConfig(method="single-level", relaxation="sigmoid").resolved().a_weight_decay == 0.0


# -- SNAS (003 Sec. 3.1, App. G.1) and every single-level method ---------------------------------------------


@pytest.mark.parametrize("method", ["snas", "dsnas", "single-level"])
def test_single_level_methods_train_on_the_whole_training_set(tmp_path, method):
    run = SearchRun(RunConfig(method=method, epochs=1, C=2, layers=3, steps=2, out=str(tmp_path / "r")), quiet=True)
    bilevel = SearchRun(RunConfig(method="darts", epochs=1, C=2, layers=3, steps=2, out=str(tmp_path / "b")),
                        quiet=True)
    digits = 1797
    held_out = digits - int(digits * 0.8)  # the digits' fixed test split, never searched on
    assert len(run.train_data) == digits - held_out and len(run.val_data) == held_out
    assert len(bilevel.train_data) + len(bilevel.val_data) == digits - held_out
    assert set(run.val_data.indices).isdisjoint(run.train_data.indices)


def test_snas_weight_lr_anneals_to_zero(tmp_path):
    run = SearchRun(RunConfig(method="snas", epochs=2, C=2, layers=3, steps=2, batch_size=256,
                              out=str(tmp_path / "r")), quiet=True)
    run.run()
    assert run.strategy.w_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)
    assert RunConfig(method="darts").resolved().w_lr_min == 0.001


def test_each_method_writes_the_genotype_of_its_own_rule(tmp_path):
    run = SearchRun(RunConfig(method="snas", epochs=1, C=2, layers=3, steps=2, batch_size=256,
                              out=str(tmp_path / "r")), quiet=True)
    with torch.no_grad():  # α that the two rules read differently: `none` wins on a few edges
        for alpha in run.model.arch_parameters():
            alpha.copy_(torch.randn(alpha.shape, generator=torch.Generator().manual_seed(5)) * 3)
    run.cfg.epochs = 0  # no training: the genotype of exactly these α
    genotype = run.run()
    snas = str(derive_genotype(run.model.arch, "snas"))
    darts = str(derive_genotype(run.model.arch, "darts"))
    assert snas != darts
    assert genotype == snas == (tmp_path / "r" / "genotype.txt").read_text().strip()
    assert (tmp_path / "r" / "genotype-darts.txt").read_text().strip() == darts
    assert json.loads((tmp_path / "r" / "genotype.json").read_text())["rule"] == "snas"


def test_snas_temperature_follows_its_public_code_per_epoch():
    schedule = TemperatureSchedule(1.0, 0.03, "snas")
    for epoch in (0, 1, 75, 149):  # τ = (1 − (e + 1)/150)·0.97 + 0.03
        assert schedule.at(epoch * 10 + 3, 10, 150) == pytest.approx((1 - (epoch + 1) / 150) * 0.97 + 0.03)
    gdas = TemperatureSchedule(10.0, 0.1, "linear-epoch")
    for epoch in (0, 100, 249):  # τ = 10 − 9.9·e/(E − 1)
        assert gdas.at(epoch * 7, 7, 250) == pytest.approx(10 - 9.9 * epoch / 249)


# -- SNAS' resource constraint in the form of its public code ------------------------------------------------


def test_log_penalty_equals_the_codes_formula_through_the_networks_own_sample():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, relaxation="gumbel",
                          generator=torch.Generator().manual_seed(0)).double()
    model.record_edge_weights = True
    constraint = ResourceConstraint.named("log")
    assert constraint.weight == 1.5e-3 and constraint.form == "log"
    tables = constraint.tables(model, 8)
    model(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    samples = model.last_edge_weights
    state = model.arch.generator.get_state()
    value = constraint.penalty(model.arch, tables, samples)
    assert torch.equal(model.arch.generator.get_state(), state)  # no second draw
    # Independently, per cell: Σ_edges mean over (params, FLOPs, MAC) of log(max(Σ_k Z·C, 1)); the mean over
    # the cells of each type (the code's /6 and /2 for 8 cells), summed over types, times λ.
    per_type = {}
    for (cell_type, raw), z in zip(cell_costs(model, 8), samples):
        cell = 0.0
        for e in range(raw.size(1)):
            for i in range(3):
                cost = (z[e] * raw[i, e]).sum()
                cell = cell + (cost.log() if float(cost.detach()) > 1 else cost * 0) / 3
        per_type.setdefault(cell_type, []).append(cell)
    expected = 1.5e-3 * sum(sum(v) / len(v) for v in per_type.values())
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    # Its gradient reaches α through the very samples the forward used.
    alphas = list(model.arch_parameters())
    got = torch.autograd.grad(value, alphas, retain_graph=True)
    want = torch.autograd.grad(expected, alphas)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.to(g.dtype), rtol=1e-5, atol=1e-9)
    assert any(float(g.abs().sum()) > 0 for g in got)


# -- SGAS, as its public code runs it ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")
def test_sgas_decides_after_epochs_10_15_to_45_with_alpha_trained_from_the_start():
    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=3, layers=3, in_channels=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(1)))
    strategy = Sgas(model, SearchConfig(epochs=50), 1)
    assert strategy.warmup_epochs == 0  # the code steps α in every epoch
    epochs = []
    for epoch in range(1, 51):
        strategy.epoch_end()
        epochs += [epoch] * (len(strategy.last_decisions) // 2)
    assert epochs == [10, 15, 20, 25, 30, 35, 40, 45]  # one edge per cell type each time, 8 in all
    assert not any(strategy.undecided_edges(t) for t in model.arch.cell_types)


def test_sgas_normalises_over_every_edge_and_freezes_decided_alpha():
    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=3, layers=3, in_channels=1, generator=torch.Generator().manual_seed(0))
    strategy = Sgas(model, SearchConfig(epochs=50), 1, first_decision=0, decision_freq=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=g) * 2)
    strategy.decide()
    # The second decision: scores from softmax(α) of all 14 edges (the decided one included), min-max over
    # all 14, argmax over the undecided ones: computed here with numpy-free float64 arithmetic.
    alpha = model.arch.alphas["normal"].detach().double()
    p = alpha.softmax(-1)
    importance = 1 - p[:, 0]
    q = p[:, 1:] / importance[:, None]
    certainty = 1 + (q * q.log()).sum(-1) / math.log(7)
    norm = lambda v: (v - v.min()) / (v.max() - v.min())
    score = norm(importance) * norm(certainty)
    undecided = strategy.undecided_edges("normal")
    expected = max(undecided, key=lambda e: float(score[e]))
    made = strategy.decide()
    assert [d["edge"] for d in made if d["cell_type"] == "normal"] == [expected]
    # Decided edges' α stay as decided through later α steps (no step, no weight decay).
    decided = [e for e in range(14) if int(model.arch.mask("normal")[e].sum()) == 1]
    before = model.arch.alphas["normal"].detach()[decided].clone()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    strategy.step((x, y), (x, y))
    assert torch.equal(model.arch.alphas["normal"].detach()[decided], before)


# -- S1 as published (RobustDARTS src/spaces.py, used by DARTS-PT App. A.2) ----------------------------------


def test_s1_is_the_published_table():
    normal = ["skip_connect dil_conv_3x3", "skip_connect dil_conv_5x5", "skip_connect dil_conv_5x5",
              "skip_connect sep_conv_3x3", "skip_connect dil_conv_3x3", "max_pool_3x3 skip_connect",
              "skip_connect sep_conv_3x3", "skip_connect sep_conv_3x3", "skip_connect dil_conv_3x3",
              "skip_connect sep_conv_3x3", "max_pool_3x3 skip_connect", "skip_connect dil_conv_3x3",
              "dil_conv_3x3 dil_conv_5x5", "dil_conv_3x3 dil_conv_5x5"]
    reduce = ["max_pool_3x3 avg_pool_3x3", "max_pool_3x3 dil_conv_3x3", "max_pool_3x3 avg_pool_3x3",
              "max_pool_3x3 avg_pool_3x3", "skip_connect dil_conv_5x5", "max_pool_3x3 avg_pool_3x3",
              "max_pool_3x3 sep_conv_3x3", "skip_connect dil_conv_3x3", "skip_connect dil_conv_5x5",
              "max_pool_3x3 avg_pool_3x3", "max_pool_3x3 avg_pool_3x3", "skip_connect dil_conv_5x5",
              "skip_connect dil_conv_5x5", "skip_connect dil_conv_5x5"]
    for cell_type, table in (("normal", normal), ("reduce", reduce)):
        mask = S1.available(cell_type, 14)
        for e, pair in enumerate(table):
            assert {DARTS_OPS[k] for k in mask[e].nonzero().flatten().tolist()} == set(pair.split())
    model = SearchNetwork(C=2, num_classes=3, layers=3, in_channels=1, space="s1")
    assert [len(edge.materialised) for cell in model.cells for edge in cell.edges] == [2] * 14 * 3


# -- numerics, parsing, evaluation -----------------------------------------------------------------------------


def test_a_float64_search_stays_float64():
    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1).double()
    strategy = Strategy(model, SearchConfig(epochs=1), 1)
    x, y = torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    loss, logits = strategy.loss((x, y))
    assert loss.dtype == logits.dtype == torch.float64
    reference = -torch.log_softmax(model(x), -1)[torch.arange(4), y].mean()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-14)


def test_genotype_parse_reads_darts_training_logs():
    text = str(DARTS_V2).replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6)")
    text = text.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=range(2, 6)")
    assert "range(2, 6)" in text and Genotype.parse(text) == DARTS_V2
    with pytest.raises(ValueError, match="given twice"):
        Genotype.parse(str(DARTS_V2)[:-1] + ", reduce_concat=[2])")
    with pytest.raises(ValueError):
        Genotype.parse(text.replace("range", "eval"))  # nothing but range(...) is evaluated
    with pytest.raises(ValueError):
        Genotype.parse(text.replace("range(2, 6)", "range(2.0, 6)"))


def test_a_genotype_in_a_sigmoid_supernet_runs_its_ops_at_weight_one():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=3, layers=3, in_channels=1, relaxation="sigmoid", init=-math.log(7))
    with genotype_in_place_of_alpha(model, DARTS_V2):
        w = model.arch.weights("normal").weights
        kept = model.arch.mask("normal")
        assert torch.equal(w[kept], torch.ones(int(kept.sum())))
        assert float(w[~kept].abs().sum()) == 0
    assert model.arch.relaxation == "sigmoid"


def test_every_run_option_is_on_the_command_line_with_its_default(capsys):
    import dataclasses

    from pynas.cli import main

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # help lines wrap anywhere
    for f in dataclasses.fields(RunConfig):
        named_apart = {"sgas_pt": "--pt ", "regularizers": "--regularizer ", "lambda_reg": "--lambda "}
        if f.name in named_apart:  # options named apart from their field
            assert named_apart[f.name] in text
            continue
        assert f"--{f.name.replace('_', '-')}" in text, f.name
    assert text.count("(default:") >= len(dataclasses.fields(RunConfig)) - 2


def test_config_file_repeats_a_run_and_explicit_options_win(tmp_path):
    from pynas.cli import main

    common = ["--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256", "--quiet"]
    assert main(["search", *common, "--a-lr", "0.01", "--seed", "4", "--out", str(tmp_path / "a")]) == 0
    assert main(["search", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    config_a = json.loads((tmp_path / "a" / "config.json").read_text())
    config_b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {k: v for k, v in config_a.items() if k != "out"} == {k: v for k, v in config_b.items() if k != "out"}
    assert main(["search", "--config", str(tmp_path / "a" / "config.json"), "--seed", "7",
                 "--out", str(tmp_path / "c"), "--quiet"]) == 0
    config_c = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config_c["seed"] == 7 and config_c["a_lr"] == 0.01


def test_config_file_with_an_unknown_key_is_named(tmp_path, capsys):
    from pynas.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 1, "learning_rate": 0.1}))
    assert main(["search", "--config", str(path), "--out", str(tmp_path / "x")]) == 2
    assert "learning_rate" in capsys.readouterr().err



def test_uniform_method_trains_weights_under_uniform_single_op_samples():
    # The wiring paper's Fig. 4b: θ trained with α fixed, one operation per edge drawn uniformly, `none` included.
    from collections import Counter

    from pynas.search.methods import METHODS

    uniform = METHODS["uniform"]
    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1,
                          relaxation=uniform.relaxation, generator=torch.Generator().manual_seed(0),
                          **uniform.architecture_options())
    strategy = uniform.strategy(model, SearchConfig(epochs=1), 1)
    counts = Counter()
    for _ in range(400):
        w = model.arch.weights("normal")
        assert all(len(active) == 1 for active in w.active)
        counts.update(model.arch.ops[row[0]] for row in w.active)
    assert set(counts) == set(model.arch.ops) and max(counts.values()) < 1.3 * min(counts.values())
    w0 = [p.detach().clone() for p in model.weight_parameters()]
    strategy.step((torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))), None)
    assert all(float(a.abs().max()) == 0 for a in model.arch_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(model.weight_parameters(), w0))
