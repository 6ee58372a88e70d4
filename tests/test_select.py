"""Architecture selection: rules on checkpoints and DARTS-PT."""
import json

import pytest
import torch
from torch.utils.data import Subset

from pynas.cli import main
from pynas.data import load_dataset, split
from pynas.nn import SearchNetwork
from pynas.select import PTSelection, measure


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    model = SearchNetwork(C=2, layers=3, steps=2, multiplier=2, in_channels=1)
    data, _ = load_dataset("digits")
    data = Subset(data, list(range(128)))
    train, val = split(data, 0.5, seed)
    return model, train, val


def test_pt_choice_is_the_op_whose_removal_hurts_most(tmp_path):
    model, train, val = tiny_setup()
    pt = PTSelection(model, train, val, str(tmp_path), tune_epochs=0, batch_size=32, crit="loss")
    batches = pt._val_batches()
    cell_type, edge = "normal", 3
    brute = {}
    for k, name in enumerate(model.arch.ops):
        if name == "none":
            continue
        with model.arch.perturbed(cell_type, edge, k):
            brute[name] = measure(model, batches, "loss")
    record = pt.decide_operation(cell_type, edge)
    assert record["scores_without"] == brute
    assert record["chosen"] == min(brute, key=brute.get)
    mask = model.arch.mask(cell_type)[edge]
    assert mask.sum() == 1 and model.arch.ops[int(mask.nonzero())] == record["chosen"]


def test_masking_leaves_the_supernet_unchanged(tmp_path):
    model, train, val = tiny_setup()
    pt = PTSelection(model, train, val, str(tmp_path), tune_epochs=0, batch_size=32)
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    before = model(x)
    buffers = [b.clone() for b in model.buffers()]
    pt.score_without("reduce", 2, "sep_conv_3x3")
    pt.score_without("normal", 0)
    assert torch.equal(model(x), before)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))
    # and the perturbation is real: without op 4 the output differs
    with model.arch.perturbed("normal", 0, "sep_conv_3x3"):
        assert not torch.equal(model(x), before)


@pytest.mark.slow
def test_pt_keeps_two_inputs_per_node_and_resumes_to_the_same_genotype(tmp_path):
    model, train, val = tiny_setup()
    full = PTSelection(model, train, val, str(tmp_path / "full"), tune_epochs=1, batch_size=32, val_batches=1,
                       log=lambda *a: None).run()
    for cell_type in ("normal", "reduce"):
        assert [len(n) for n in full.nodes(cell_type)] == [2, 2]
    trail = json.loads((tmp_path / "full" / "pt_trail.json").read_text())
    assert len([r for r in trail if r["phase"] == "operation"]) == 10
    assert len([r for r in trail if r["phase"] == "topology"]) == 2  # node 3 of each cell has 3 inputs

    class Killed(Exception):
        pass

    def kill_after_three(msg, count=[0]):
        count[0] += 1
        if count[0] == 4:
            raise Killed

    model, train, val = tiny_setup()
    with pytest.raises(Killed):
        PTSelection(model, train, val, str(tmp_path / "half"), tune_epochs=1, batch_size=32, val_batches=1,
                    log=kill_after_three).run()
    model, train, val = tiny_setup()
    resumed = PTSelection(model, train, val, str(tmp_path / "half"), tune_epochs=1, batch_size=32, val_batches=1,
                          log=lambda *a: None)
    assert resumed.resume() and len(resumed.trail) == 2  # round 1 (a normal and a reduce edge) was saved
    assert resumed.run() == full


def test_pt_mag_chooses_by_alpha(tmp_path):
    model, train, val = tiny_setup()
    with torch.no_grad():
        model.arch.alphas["normal"][1, model.arch.ops.index("dil_conv_5x5")] = 5.0
    pt = PTSelection(model, train, val, str(tmp_path), tune_epochs=0, magnitude=True)
    assert pt.decide_operation("normal", 1)["chosen"] == "dil_conv_5x5"


@pytest.mark.slow
def test_select_command_on_a_search_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["select", "--run", str(run), "--method", "magnitude"]) == 0
    assert capsys.readouterr().out.strip().endswith((run / "genotype.txt").read_text().strip())
    assert main(["select", "--run", str(run), "--method", "pt", "--tune-epochs", "0", "--val-batches", "1", "--quiet"]) == 0
    assert (run / "select-pt" / "genotype.txt").read_text().startswith("Genotype(")
    assert main(["select", "--run", str(tmp_path / "missing")]) == 2


def test_evaluate_equals_the_supernet_with_one_hot_alpha():
    from pynas.genotype import Genotype
    from pynas.nn.cells import cell_edges
    from pynas.select import genotype_in_place_of_alpha

    model, _, _ = tiny_setup()
    model.eval()
    g = Genotype([("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 0)], [2, 3],
                 [("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 2), ("dil_conv_5x5", 1)], [2, 3])
    x = torch.randn(3, 1, 8, 8)
    with genotype_in_place_of_alpha(model, g):
        child = model(x)
    # The same supernet with α one-hot on the genotype, `none` on every other edge.
    rows = {e: r for r, e in enumerate(cell_edges(2))}
    with torch.no_grad():
        for t in ("normal", "reduce"):
            alpha = model.arch.alphas[t]
            alpha.fill_(-1e4)
            alpha[:, model.arch.ops.index("none")] = 1e4
            for k, edges in enumerate(g.nodes(t)):
                for op, j in edges:
                    alpha[rows[(j, k + 2)]] = -1e4
                    alpha[rows[(j, k + 2)], model.arch.ops.index(op)] = 1e4
    torch.testing.assert_close(model(x), child)
    assert model.arch.mask("normal").all()  # masks restored


def test_evaluate_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "supernet validation accuracy" in out and "no fine-tuning" in out
    assert main(["evaluate", "--run", str(run), "--genotype", "DARTS_V2"]) == 2  # 4-node genotype, 2-node supernet


def test_pt_on_a_nb201_supernet_decides_every_edge_by_brute_force(tmp_path):
    from pynas.genotype import NB201Genotype
    from pynas.nn import NB201Network

    torch.manual_seed(0)
    model = NB201Network(C=4, N=1, in_channels=1)
    _, train, val = tiny_setup()
    pt = PTSelection(model, train, val, str(tmp_path), tune_epochs=0, last_tune_epochs=0, batch_size=32,
                     crit="loss", log=lambda *a: None)
    assert pt.phases == ("operation",)  # NB201 cells keep all edges: no topology phase
    batches = pt._val_batches()
    # Brute force in PT's own edge order: each edge fixed to the op whose removal lowers the score most,
    # `none` among the candidates (NAS-Bench-201 has it), ties to the larger α.
    expected = {}
    for edge in pt._order("cell", range(6)):
        scores = {}
        for k, name in enumerate(model.arch.ops):
            with model.arch.perturbed("cell", edge, k):
                scores[k] = measure(model, batches, "loss")
        alpha = model.arch.alphas["cell"][edge].detach()
        expected[edge] = model.arch.ops[min(scores, key=lambda k: (scores[k], -float(alpha[k]), k))]
        model.arch.fix_op("cell", edge, expected[edge])
    model.arch.mask("cell").fill_(True)
    genotype = pt.run()
    assert isinstance(genotype, NB201Genotype)
    ops = [op for node in genotype.nodes for op, _ in node]
    assert ops == [expected[e] for e in range(6)]
    assert [r["chosen"] for r in pt.trail] == [expected[r["edge"]] for r in pt.trail]


def test_pt_rounds_decide_one_edge_per_cell_type_then_tune(tmp_path, monkeypatch):
    model, train, val = tiny_setup()
    tuned = []
    pt = PTSelection(model, train, val, str(tmp_path), tune_epochs=2, batch_size=32, val_batches=1,
                     log=lambda *a: None)
    monkeypatch.setattr(pt, "fine_tune", lambda epochs: tuned.append(epochs))
    pt.run()
    ops = [r for r in pt.trail if r["phase"] == "operation"]
    assert [r["cell_type"] for r in ops] == ["normal", "reduce"] * 5  # 5 edges per cell, one of each per round
    assert [r["round"] for r in ops] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    nodes = [r for r in pt.trail if r["phase"] == "topology"]
    assert [(r["cell_type"], r["round"]) for r in nodes] == [("normal", 6), ("reduce", 6)]
    assert tuned == [2] * 5 + [1]  # 5 epochs' worth between rounds, 1 after the last (DARTS-PT's code)
    assert all(0 <= r["val_acc_after_tuning"] <= 1 for r in pt.trail)


def test_pt_candidates_share_their_draws_and_ties_go_to_alpha(tmp_path, monkeypatch):
    import pynas.select.pt as pt_module
    from pynas.select.pt import op_by_perturbation, same_draws

    torch.manual_seed(0)
    model = SearchNetwork(C=2, layers=3, steps=2, multiplier=2, in_channels=1, space="s4")  # `noise` in every edge
    _, train, val = tiny_setup()
    batches = list(PTSelection(model, train, val, str(tmp_path), tune_epochs=0, batch_size=32)._val_batches())
    chosen, scores = op_by_perturbation(model, "normal", 0, batches, "loss", seed=5)
    for name, score in scores.items():  # each candidate's score is its measurement under the draws of seed 5
        with model.arch.perturbed("normal", 0, name), same_draws(model, 5):
            assert measure(model, batches, "loss") == score
    assert op_by_perturbation(model, "normal", 0, batches, "loss", seed=5) == (chosen, scores)
    # A tie (every removal scores alike) goes to the operation α prefers, not to the first column.
    monkeypatch.setattr(pt_module, "measure", lambda *a, **k: 0.5)
    with torch.no_grad():
        model.arch.alphas["normal"][0] = torch.tensor([0.0, 1.0])
    assert op_by_perturbation(model, "normal", 0, batches)[0] == model.arch.ops.index("sep_conv_3x3")
    with torch.no_grad():
        model.arch.alphas["normal"][0] = torch.tensor([1.0, 0.0])
    assert op_by_perturbation(model, "normal", 0, batches)[0] == model.arch.ops.index("noise")


def test_pt_candidates_include_none_except_in_the_darts_space():
    from pynas.select.pt import candidate_ops

    darts = SearchNetwork(C=2, layers=3, steps=2, multiplier=2, in_channels=1)
    s3 = SearchNetwork(C=2, layers=3, steps=2, multiplier=2, in_channels=1, space="s3")
    assert "none" not in [darts.arch.ops[k] for k in candidate_ops(darts.arch, "normal", 0)]
    assert [s3.arch.ops[k] for k in candidate_ops(s3.arch, "normal", 0)] == ["none", "skip_connect", "sep_conv_3x3"]


def test_pt_fine_tunes_the_way_the_supernet_was_searched():
    from pynas.search import DartsFirstOrder, DartsSecondOrder, FixedAlpha, RandomSmoothing, SearchConfig
    from pynas.search.config import RunConfig
    from pynas.select.pt import tuning_strategy

    def tuned(method, **kw):
        model, _, _ = tiny_setup()
        return tuning_strategy(RunConfig.for_method(method, **kw))(model, SearchConfig(epochs=5), 3)

    assert type(tuned("darts-2nd")) is DartsSecondOrder and type(tuned("fixed")) is FixedAlpha
    assert type(tuned("sgas")) is DartsFirstOrder
    sdarts = tuned("sdarts-rs", epsilon_alpha=0.3)
    assert isinstance(sdarts.perturbation, RandomSmoothing)
    assert sdarts.perturbation.current_epsilon(sdarts) == 0.3  # the full ε, as DARTS-PT's code


def test_pt_keeps_the_searchs_alpha_optimiser_and_a_constant_lr(tmp_path):
    run = tmp_path / "run"
    assert main(["search", "--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256",
                 "--out", str(run), "--quiet"]) == 0
    from pynas.search.build import load_run
    from pynas.select.pt import tuning_strategy

    cfg, model, train, val = load_run(str(run))
    state = torch.load(run / "checkpoint.pt", weights_only=True)["strategy"]["a_opt"]
    pt = PTSelection(model, train, val, str(tmp_path / "pt"), tune_epochs=1, batch_size=256, val_batches=1,
                     strategy=tuning_strategy(cfg), arch_state=state, log=lambda *a: None)
    steps_before = [float(s["step"]) for s in pt.strategy.a_opt.state.values()]
    assert steps_before and all(s == float(state["state"][0]["step"]) > 0 for s in steps_before)
    pt.fine_tune(2)
    assert pt.strategy.w_opt.param_groups[0]["lr"] == pytest.approx(0.0025)
    assert all(float(s["step"]) > steps_before[0] for s in pt.strategy.a_opt.state.values())


def test_pt_tunes_a_supernet_whose_normal_cells_no_longer_reach_the_loss(tmp_path):
    # S4 with two nodes: once every reduction edge keeps `noise` (which ignores its input), nothing of the normal
    # cell reaches the loss and its α has no gradient; fine-tuning must go on (α's step sees zeros there).
    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=10, layers=3, steps=2, multiplier=2, in_channels=1, space="s4")
    for e in range(4):
        model.arch.fix_op("reduce", e, "noise")
    model.arch.remove_edge("reduce", 4)
    _, train, val = tiny_setup()
    pt = PTSelection(model, train, val, str(tmp_path), tune_epochs=1, batch_size=64, val_batches=1,
                     log=lambda *a: None)
    normal = model.arch.alphas["normal"].detach().clone()
    pt.fine_tune(1)
    # Adam with a zero gradient moves α only by its weight decay: towards 0, by a factor of at most (1 − lr·wd)-ish.
    assert torch.allclose(model.arch.alphas["normal"].detach(), normal, atol=5e-3)


def test_rule_selection_writes_its_genotype_and_evaluate_reads_nb201_runs(tmp_path, capsys):
    from pynas.genotype import NB201Genotype
    from pynas.nn import NB201Network
    from pynas.search.build import load_run
    from pynas.select import genotype_in_place_of_alpha

    run = tmp_path / "nb201"
    assert main(["search", "--space", "nb201", "--epochs", "1", "--C", "2", "--layers", "3", "--batch-size", "256",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["select", "--run", str(run), "--method", "nb201", "--out", str(tmp_path / "sel")]) == 0
    text = (tmp_path / "sel" / "genotype.txt").read_text().strip()
    assert capsys.readouterr().out.strip() == f"genotype: {text}" and text == (run / "genotype.txt").read_text().strip()
    assert main(["evaluate", "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    # The child inside the supernet equals the supernet with each edge's argmax op alone at weight 1.
    _, model, _, val = load_run(str(run))
    genotype = NB201Genotype.parse(text)
    with genotype_in_place_of_alpha(model, genotype):
        w = model.arch.weights("cell").weights
    assert isinstance(model, NB201Network) and torch.equal(w.sum(-1), torch.ones(6))
    chosen = [model.arch.ops[k] for k in w.argmax(-1).tolist()]
    assert chosen == [op for node in genotype.nodes for op, _ in node]
    assert "child (supernet weights, no fine-tuning)" in printed
