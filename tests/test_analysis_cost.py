"""Per-edge costs (wiring paper Eq. 4-5) against explicit autograd, the paper's
Thm. 1-2 and Cor. 1.2 on tiny float64 supernets, the Monte Carlo statistics
(Sec. 5.1) against numpy, and ``pynas analyze cost``."""
import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from pynas.analysis.edge_cost import (CostRecorder, RunningStats, collect_edge_costs, monte_carlo_cost,
                                      register_commands, uniform_sample)
from pynas.data import load_digits_dataset
from pynas.io import checkpoint_header, parameter_shapes, save_checkpoint, write_json
from pynas.nn import SearchNetwork, forward_with_weights
from pynas.search.build import build_model
from pynas.search.config import RunConfig

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Networks this small run fastest on one thread (and the machine is shared).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_network(relaxation="softmax", sample_per="forward", steps=3, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    # 3 layers: a normal cell, then two reduction cells (both cell types present).
    model = SearchNetwork(C=4, num_classes=5, layers=3, steps=steps, multiplier=steps, in_channels=1,
                          relaxation=relaxation, sample_per=sample_per, generator=generator)
    return model.double()


def batch(seed=1, B=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (B,), generator=g)


def exact_batchnorm(model):
    # Thm. 1 holds for exact normalisation; BatchNorm's eps perturbs it by O(eps/σ²).
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-15


# ---------------------------------------------------------------------------
# An independent reference: every edge output X_e = Σ_k w_k op_k(h) materialised


def model_weights(model, B):
    """The weights SearchNetwork.forward draws, in its order (per type or per cell)."""
    shared, out = {}, []
    for cell in model.cells:
        t = "reduce" if cell.reduction else "normal"
        if model.arch.sample_per == "cell" or t not in shared:
            shared[t] = model.arch.weights(t, batch_size=B)
        out.append(shared[t])
    return out


def explicit_costs(model, x, y, cell_weights):
    """Per cell: ``[E, K]`` costs w_k Σ ∂L/∂X_e ⊙ op_k(h) with ∂L/∂X_e from
    autograd on the materialised edge output, and each node's Σ ∂L/∂node ⊙ node."""
    records = []
    s0 = s1 = model.stem(x)
    for cell, w in zip(model.cells, cell_weights):
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        edges, nodes, e = [], [], 0
        for _ in range(cell.steps):
            node = 0
            for h in list(states):
                mixed = cell.edges[e]
                ew = w.weights[..., e, :]
                run = mixed.materialised if w.active is None or w.active[e] is None else \
                    [k for k in w.active[e] if k in mixed.materialised]
                ops = {k: mixed.ops[mixed.materialised.index(k)](h) for k in run}
                X = h[:, :, ::mixed.stride, ::mixed.stride] * 0.0
                for k, out in ops.items():
                    wk = ew[..., k].reshape(-1, 1, 1, 1) if ew.dim() == 2 else ew[k]
                    X = X + wk * out
                X.retain_grad()
                edges.append((e, X, ew.detach(), {k: o.detach() for k, o in ops.items()}))
                node = node + X
                e += 1
            node.retain_grad()
            nodes.append(node)
            states.append(node)
        records.append((edges, nodes))
        s0, s1 = s1, torch.cat([states[n] for n in cell.concat], dim=1)
    logits = model.classifier(model.global_pooling(s1).flatten(1))
    F.cross_entropy(logits, y).backward()
    K = len(model.arch.ops)
    costs = torch.zeros(len(model.cells), model.arch.num_edges, K, dtype=torch.float64)
    node_costs = []
    for l, (edges, nodes) in enumerate(records):
        for e, X, ew, ops in edges:
            for k, out in ops.items():
                per_sample = (X.grad * out).sum((1, 2, 3))
                costs[l, e, k] = (ew[..., k] * per_sample).sum() if ew.dim() == 2 else ew[k] * per_sample.sum()
            # the edge's cost, Eq. 5, straight from its materialised output
            torch.testing.assert_close(costs[l, e].sum(), (X.grad * X).sum(), rtol=1e-10, atol=1e-14)
        node_costs.append([float((n.grad * n.detach()).sum()) for n in nodes])
    return costs, node_costs


CASES = [("softmax", "forward"), ("gumbel_hard", "cell"), ("categorical", "sample")]


@pytest.mark.parametrize("relaxation,sample_per", CASES)
def test_hook_costs_equal_explicit_autograd(relaxation, sample_per):
    model = tiny_network(relaxation, sample_per)
    x, y = batch()
    state = model.arch.generator.get_state()
    weights = model_weights(model, x.size(0))
    expected, _ = explicit_costs(model, x, y, weights)
    model.arch.generator.set_state(state)  # model(x) draws the same samples again
    costs = collect_edge_costs(model, x, y)
    if sample_per == "cell":  # one hard sample per cell: only the sampled operation runs and has a cost
        assert ((costs.cells != 0).sum(-1) <= 1).all()
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(costs.cells.cpu(), expected, rtol=1e-9, atol=1e-13)


def test_costs_under_given_weights_equal_explicit_autograd():
    model = tiny_network()
    x, y = batch(2)
    g = torch.Generator().manual_seed(3)
    weights = [uniform_sample(model.arch.mask("reduce" if c.reduction else "normal"), g, torch.float64)[0]
               for c in model.cells]
    expected, _ = explicit_costs(model, x, y, weights)
    costs = collect_edge_costs(model, x, y, weights)
    torch.testing.assert_close(costs.cells, expected, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("relaxation,sample_per", CASES[:2])
def test_edge_costs_of_a_node_sum_to_the_node_cost(relaxation, sample_per):
    model = tiny_network(relaxation, sample_per)
    x, y = batch(4)
    state = model.arch.generator.get_state()
    _, node_costs = explicit_costs(model, x, y, model_weights(model, x.size(0)))
    model.arch.generator.set_state(state)
    edges = collect_edge_costs(model, x, y).edges
    targets = [t for _, t in model.cells[0].edge_list]
    for l, per_node in enumerate(node_costs):
        for i, node_cost in enumerate(per_node):
            into = [e for e, t in enumerate(targets) if t == i + 2]
            assert float(edges[l, into].sum()) == pytest.approx(node_cost, rel=1e-9, abs=1e-13)


def test_recorder_changes_neither_outputs_nor_gradients():
    model = tiny_network()
    x, y = batch()
    loss = F.cross_entropy(model(x), y)
    plain = torch.autograd.grad(loss, list(model.parameters()))
    with CostRecorder(model) as recorder:
        loss_hooked = F.cross_entropy(model(x), y)
        hooked = torch.autograd.grad(loss_hooked, list(model.parameters()))
    assert torch.equal(loss, loss_hooked)
    assert all(torch.equal(a, b) for a, b in zip(plain, hooked))
    assert recorder.costs.abs().sum() > 0
    assert all(cell.cost_recorder is None for cell in model.cells)


# ---------------------------------------------------------------------------
# The paper's identities


def test_thm2_cost_at_the_logits_is_loss_minus_entropy_per_sample():
    g = torch.Generator().manual_seed(0)
    Y = (3 * torch.randn(32, 10, generator=g, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 10, (32,), generator=g)
    losses = F.cross_entropy(Y, labels, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), Y)  # row b: ∂ℓ_b/∂Y_b
    cost = (grad * Y).sum(-1).detach()
    p = torch.softmax(Y.detach(), -1)
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(cost, losses.detach() - entropy, rtol=0, atol=1e-12)
    # Eq. 9: with Y_{n_b} the largest logit (correct and confident) the cost is ≤ 0; with a wrong one, > 0.
    confident = torch.zeros(2, 10, dtype=torch.float64)
    confident[0, 3] = confident[1, 4] = 5.0
    Yc = confident.requires_grad_()
    losses = F.cross_entropy(Yc, torch.tensor([3, 3]), reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), Yc)
    cost = (grad * Yc).sum(-1)
    assert cost[0] < 0 < cost[1]


@pytest.mark.parametrize("bias", [False, True])
def test_thm2_total_cost_of_the_last_cells_output_edges(bias):
    # Thm. 2 holds where the logits are linear in the last cell's output X (no classifier bias):
    # Σ ∂L/∂X ⊙ X = L − H. With a bias b the two differ by exactly b·∂L/∂b.
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=5, layers=3, steps=3, multiplier=3, in_channels=1,
                          classifier_bias=bias, generator=torch.Generator().manual_seed(0)).double()
    if bias:
        with torch.no_grad():
            model.classifier.bias.copy_(torch.randn(5, dtype=torch.float64))
    outputs = []

    def keep(module, inputs, out):
        out.retain_grad()
        outputs.append(out)

    model.cells[-1].register_forward_hook(keep)
    x, y = batch()
    logits = model(x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    loss.backward()
    X = outputs[0]
    cost = float((X.grad * X.detach()).sum())  # the output edges: the concatenated nodes, as they are
    p = torch.softmax(logits.detach(), -1)
    entropy = float(-(p * p.log()).sum())
    expected = float(loss.detach()) - entropy
    if bias:
        expected -= float((model.classifier.bias.detach() * model.classifier.bias.grad).sum())
        assert abs(float((model.classifier.bias.detach() * model.classifier.bias.grad).sum())) > 1e-3
    assert cost == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_collected_logit_cost_is_loss_minus_entropy():
    model = tiny_network()
    costs = collect_edge_costs(model, *batch())
    assert costs.logit_cost == pytest.approx(costs.loss - costs.entropy, rel=1e-10, abs=1e-13)


def test_thm1_cost_of_a_tensor_with_only_scale_invariant_consumers_vanishes():
    # Every cell output but the last feeds only ReLU → conv (no bias) → BatchNorm in
    # training mode (the next cells' preprocessing): scaling it changes nothing.
    model = tiny_network()
    exact_batchnorm(model)
    outputs = []

    def keep(module, inputs, out):
        out.retain_grad()
        outputs.append(out)

    for cell in model.cells:
        cell.register_forward_hook(keep)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    for l, out in enumerate(outputs):
        product = out.grad * out.detach()
        cost, scale = float(product.sum()), float(product.abs().sum())
        if l < len(outputs) - 1:
            assert abs(cost) <= 1e-10 * scale
        else:  # the last feeds pooling and a linear classifier with bias: not scale-invariant
            assert abs(cost) > 1e-3 * scale


def test_cor12_total_cost_of_every_cell_but_the_last_vanishes():
    # Cor. 1.2 needs every intermediate edge scale-invariant: skip_connect is the
    # exception (App. D, Eq. 20), so it is removed from the intermediate edges.
    model = tiny_network()
    exact_batchnorm(model)
    for t in ("normal", "reduce"):
        for e, (source, _) in enumerate(model.cells[0].edge_list):
            if source >= 2:
                model.arch.remove_op(t, e, "skip_connect")
    edges = collect_edge_costs(model, *batch()).edges
    ratio = edges.sum(-1).abs() / edges.abs().sum(-1)
    assert (ratio[:-1] < 1e-9).all() and ratio[-1] > 1e-3


# ---------------------------------------------------------------------------
# Monte Carlo estimator (Sec. 5.1)


def test_running_stats_equal_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 3, 4)) * rng.uniform(0.1, 10, size=(3, 4)) + 5
    present = rng.random((50, 3, 4)) < 0.4
    stats = RunningStats((3, 4))
    for v, p in zip(values, present):
        stats.update(torch.from_numpy(v), torch.from_numpy(p))
    for i in range(3):
        for j in range(4):
            seen = values[present[:, i, j], i, j]
            assert stats.count[i, j] == len(seen)
            if len(seen):
                assert float(stats.mean[i, j]) == pytest.approx(seen.mean(), rel=1e-12)
            if len(seen) > 1:
                assert float(stats.variance[i, j]) == pytest.approx(seen.var(ddof=1), rel=1e-10)
            else:
                assert np.isnan(float(stats.variance[i, j]))


def test_uniform_sample_draws_one_allowed_op_per_edge_uniformly():
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[1, 2:] = False  # two ops left on edge 1
    mask[3] = False  # edge 3 removed
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 8)
    for _ in range(2000):
        w, choice = uniform_sample(mask, g)
        assert choice[3] == -1 and w.active[3] == [] and w.weights[3].sum() == 0
        for e in range(3):
            assert mask[e, choice[e]] and w.active[e] == [int(choice[e])]
            assert torch.equal(w.weights[e], F.one_hot(choice[e], 8).float())
            counts[e, choice[e]] += 1
    assert counts[0].min() > 2000 / 8 * 0.8 and counts[0].max() < 2000 / 8 * 1.2  # `none` (column 0) included
    assert counts[1, :2].min() > 2000 / 2 * 0.9 and counts[1, 2:].sum() == 0


def test_monte_carlo_statistics_of_the_stored_samples():
    model = tiny_network(steps=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (40,), generator=g))
    model.eval()
    result = monte_carlo_cost(model, data, samples=12, batch_size=16, seed=0)
    # θ, α and the BatchNorm running statistics are untouched; the mode is restored
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    chosen, sampled = torch.stack(result.chosen).numpy(), torch.stack(result.sampled).numpy()
    N, L, E = chosen.shape
    assert (N, L, E) == (12, 3, 5)
    none = result.ops.index("none")
    assert (sampled[chosen == none] == 0).all() and (chosen == none).any()  # `none` recorded, at cost 0
    for l in range(L):
        for e in range(E):
            for k in range(len(result.ops)):
                seen = sampled[chosen[:, l, e] == k, l, e]
                assert int(result.stats.count[l, e, k]) == len(seen)
                if len(seen):
                    assert float(result.stats.mean[l, e, k]) == pytest.approx(seen.mean(), rel=1e-9, abs=1e-15)
                if len(seen) > 1:
                    assert float(result.stats.variance[l, e, k]) == pytest.approx(seen.var(ddof=1), rel=1e-9, abs=1e-20)
    np.testing.assert_allclose(result.totals.mean.numpy(), sampled.sum(-1).mean(0), rtol=1e-9)
    assert float(result.logit_cost.mean) == pytest.approx(float(result.loss.mean - result.entropy.mean), rel=1e-9)


@pytest.mark.parametrize("per", ["type", "cell"])
def test_monte_carlo_shares_one_sample_per_cell_type_or_draws_per_cell(per):
    model = tiny_network(steps=2)  # cells: normal, reduce, reduce
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (32,), generator=g))
    chosen = torch.stack(monte_carlo_cost(model, data, samples=20, batch_size=8, seed=0, per=per).chosen)
    same = bool((chosen[:, 1] == chosen[:, 2]).all())
    assert same == (per == "type")


def test_sampled_costs_equal_the_costs_of_the_same_subnetwork():
    model = tiny_network(steps=2)
    x, y = batch(5, B=16)
    data = TensorDataset(x, y)
    result = monte_carlo_cost(model, data, samples=1, batch_size=16, seed=7, per="cell")
    # Redraw the one subnetwork: seed 7, one uniform sample per cell, in cell order.
    g = torch.Generator().manual_seed(7)
    drawn = [uniform_sample(model.arch.mask("reduce" if c.reduction else "normal"), g, torch.float64)
             for c in model.cells]
    assert torch.equal(torch.stack([c for _, c in drawn]), result.chosen[0])
    # One batch holds all the data; its order (shuffled) changes neither the mean
    # loss nor the batch statistics, so the costs are those of (x, y) up to rounding.
    costs = collect_edge_costs(model, x, y, [w for w, _ in drawn])
    expected = costs.cells.gather(-1, result.chosen[0].clamp_min(0).unsqueeze(-1)).squeeze(-1)
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(result.sampled[0], expected, rtol=1e-9, atol=1e-14)


def test_forward_with_weights_equals_the_model_under_the_same_weights():
    model = tiny_network()
    x, _ = batch()
    weights = model_weights(model, x.size(0))
    torch.testing.assert_close(forward_with_weights(model, x, weights), model(x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# pynas analyze cost


def run_cli(argv):
    parser = argparse.ArgumentParser()
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


TINY = ["--C", "2", "--layers", "3", "--samples", "3", "--batch-size", "16"]


def test_cli_writes_costs_heat_maps_and_a_comparison(tmp_path, capsys):
    init, other = tmp_path / "init", tmp_path / "other"
    assert run_cli(["cost", "--init", "--space", "minimal", *TINY, "--out", str(init)]) == 0
    printed = capsys.readouterr().out
    assert "Thm. 2" in printed and "normal" in printed
    payload = json.loads((init / "cost.json").read_text())
    assert payload["samples"] == 3 and len(payload["cells"]) == 3 and len(payload["edges"]) == 5
    assert payload["ops"][0] == "none"
    for cell in payload["cells"]:
        assert np.array(cell["count"]).sum(-1).tolist() == [3] * 5  # one sampled op per edge and sample
        assert (init / f"cost_cell{cell['index']}.png").read_bytes().startswith(PNG)
    assert run_cli(["cost", "--init", "--space", "minimal", *TINY, "--seed", "1", "--out", str(other),
                    "--compare", str(init / "cost.json")]) == 0
    for k in range(3):
        assert (other / f"cost_compare_cell{k}.png").read_bytes().startswith(PNG)
    # a different network cannot be compared
    assert run_cli(["cost", "--init", "--space", "minimal", "--C", "2", "--layers", "4", "--samples", "1",
                    "--out", str(tmp_path / "x"), "--compare", str(init / "cost.json")]) == 2
    assert "differ" in capsys.readouterr().err


def test_cli_reads_a_run_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = RunConfig(space="minimal", C=2, layers=3, out=str(run))
    _, info = load_digits_dataset()
    torch.manual_seed(0)
    model = build_model(cfg, info)
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)  # a checkpoint unlike the initialisation
    write_json(run / "config.json", dataclasses.asdict(cfg))
    header = checkpoint_header("search", cfg.space, cfg.method, parameter_shapes(model))
    save_checkpoint(run / "checkpoint.pt", header, {"model": model.state_dict()})
    assert run_cli(["cost", "--run", str(run), *TINY[4:], "--out", str(tmp_path / "trained")]) == 0
    assert run_cli(["cost", "--run", str(run), "--init", *TINY[4:], "--out", str(tmp_path / "init")]) == 0
    trained = json.loads((tmp_path / "trained" / "cost.json").read_text())
    init = json.loads((tmp_path / "init" / "cost.json").read_text())
    assert trained["source"]["at"] == "checkpoint" and init["source"]["at"] == "initialisation"
    assert trained["sampled"]["op"] == init["sampled"]["op"]  # the same subnetworks, other weights
    assert trained["loss"]["mean"] != pytest.approx(init["loss"]["mean"], rel=1e-3)


@pytest.mark.parametrize("make", ["missing", "empty", "foreign", "no-checkpoint"])
def test_cli_refuses_what_is_not_a_search_run(tmp_path, capsys, make):
    run = tmp_path / "run"
    if make != "missing":
        run.mkdir()
    if make == "foreign":
        (run / "config.json").write_text('{"learning_rate": 0.1}')
    if make == "no-checkpoint":
        write_json(run / "config.json", {"space": "minimal"})
    assert run_cli(["cost", "--run", str(run), "--samples", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pynas analyze cost: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_needs_a_network(tmp_path, capsys):
    assert run_cli(["cost", "--out", str(tmp_path)]) == 2
    assert "--run" in capsys.readouterr().err
