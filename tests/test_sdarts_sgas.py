"""The other supernet trainers of DARTS-PT's Table 2: SDARTS-RS and SGAS (with and without PT)."""
import json
import math

import numpy as np
import pytest
import torch

from pynas.arch import _clip_renormalise
from pynas.cli import main
from pynas.genotype import Genotype, derive_genotype
from pynas.nn import SearchNetwork
from pynas.search import SearchConfig
from pynas.search.config import RunConfig
from pynas.search.run import SearchRun
from pynas.search.parts import RandomSmoothing
from pynas.search.strategies import DartsFirstOrder, Sgas, sgas_scores


def tiny(steps=2):
    torch.manual_seed(0)
    return SearchNetwork(C=2, num_classes=3, layers=3, steps=steps, multiplier=steps, in_channels=1)


def batch(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def record_weights(model, strategy):
    """Every relaxed weight tensor the model reads, labelled by the step that read it."""
    seen, phase = [], {"now": None}
    weights_of = model.arch.weights_of  # what every read of relaxed weights goes through

    def recording(cell_types, batch_size=None):
        drawn = weights_of(cell_types, batch_size)
        for cell_type, w in drawn.items():
            seen.append((phase["now"], cell_type, w.weights.detach().clone()))
        return drawn

    model.arch.weights_of = recording
    for name in ("arch_step", "weight_step"):
        method = getattr(strategy, name)

        def labelled(*args, _method=method, _name=name):
            phase["now"] = _name
            return _method(*args)

        setattr(strategy, name, labelled)
    return seen


def test_sdarts_rs_perturbs_the_weight_step_only_within_epsilon():
    model = tiny()
    strategy = DartsFirstOrder(model, SearchConfig(epochs=4), steps_per_epoch=2, perturbation=RandomSmoothing(0.3))
    seen = record_weights(model, strategy)
    for i in range(6):  # three epochs
        eps = 0.03 + (0.3 - 0.03) * (i // 2) / 4
        assert strategy.perturbation.current_epsilon(strategy) == pytest.approx(eps)
        seen.clear()
        clean = {t: model.arch.probabilities(t).detach().clone() for t in model.arch.cell_types}
        strategy.step(batch(2 * i), batch(2 * i + 1))
        if i % 2:
            strategy.epoch_end()  # two steps an epoch
        updated = {t: model.arch.probabilities(t).detach().clone() for t in model.arch.cell_types}
        assert {p for p, _, _ in seen} == {"arch_step", "weight_step"}
        for phase, t, w in seen:
            if phase == "arch_step":
                assert torch.equal(w, clean[t])
            else:
                noise = strategy.perturbation.noise[t]
                assert float(noise.abs().max()) <= eps and float(noise.abs().min()) > 0
                # the weights after this step's α update, perturbed, clipped and renormalised
                expected = (updated[t] + noise).clamp(0, 1)
                expected = expected / expected.sum(-1, keepdim=True)
                assert torch.allclose(w, expected, atol=1e-6)
                assert not torch.allclose(w, updated[t], atol=1e-4)


def test_clip_renormalise_keeps_the_largest_of_an_all_negative_edge():
    w = torch.tensor([[-0.2, -0.1, -0.3], [0.5, 1.5, -1.0], [0.3, 0.3, 0.3]])
    mask = torch.tensor([[True, True, True], [True, True, True], [False, False, False]])
    out = _clip_renormalise(w, mask)
    assert torch.equal(out[0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(out[1], torch.tensor([0.5, 1.0, 0.0]) / 1.5)
    assert torch.equal(out[2], torch.zeros(3))  # a removed edge stays removed


def reference_scores(alpha, none, edges):
    """SGAS Criterion 1 in numpy, written from the paper's definitions."""
    a = alpha.numpy().astype(np.float64)[edges]
    p = np.exp(a - a.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    others = np.delete(p, none, axis=-1)
    importance = others.sum(-1)
    q = others / importance[:, None]
    certainty = 1 + (q * np.log(q)).sum(-1) / math.log(q.shape[-1])

    def norm(v):
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)

    return dict(zip(edges, norm(importance) * norm(certainty)))


def test_sgas_scores_on_hand_made_alpha():
    none = 0
    alpha = torch.zeros(4, 8)
    alpha[0, none] = 3.0  # mostly `none`: unimportant
    alpha[1, 4] = 4.0  # important and certain: the best edge
    alpha[2, 1:] = 1.0  # important but uncertain (uniform over the others)
    alpha[3, 2], alpha[3, 5] = 2.0, 2.0  # two strong candidates
    mask = torch.ones(4, 8, dtype=torch.bool)
    scores = sgas_scores(alpha, mask, none, [0, 1, 2, 3])
    expected = reference_scores(alpha, none, [0, 1, 2, 3])
    for e in range(4):
        assert scores[e] == pytest.approx(expected[e], abs=1e-12)
    assert max(scores, key=scores.get) == 1 and scores[1] == pytest.approx(1.0)
    assert scores[0] == pytest.approx(0, abs=1e-12) and scores[2] == pytest.approx(0, abs=1e-12)  # uncertain


def test_sgas_decides_greedily_and_ends_with_two_inputs_per_node():
    model = tiny(steps=3)  # 9 edges: node 2 <- 0,1; node 3 <- 0,1,2; node 4 <- 0..3
    strategy = Sgas(model, SearchConfig(epochs=1), 1, warmup_epochs=0, decision_freq=1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in model.arch.cell_types:
            model.arch.alphas[t].copy_(torch.randn(9, 8, generator=g) * 2)
    none = model.arch.ops.index("none")
    order = {t: [] for t in model.arch.cell_types}
    while any(strategy.undecided_edges(t) for t in model.arch.cell_types):
        before = {t: strategy.undecided_edges(t) for t in model.arch.cell_types}
        for d in strategy.decide():
            t, e = d["cell_type"], d["edge"]
            # Normalised over all 9 edges (SGAS' code), the best-scored undecided edge chosen.
            expected = reference_scores(model.arch.alphas[t].detach(), none, list(range(9)))
            assert e == max(before[t], key=expected.get)
            alpha = model.arch.alphas[t][e].detach().clone()
            alpha[none] = float("-inf")
            assert d["op"] == model.arch.ops[int(alpha.argmax())]  # its largest non-`none` α
            order[t].append(e)
    for t in model.arch.cell_types:
        mask = model.arch.mask(t)
        assert len(order[t]) == 6  # two decisions per node
        for rows in ([0, 1], [2, 3, 4], [5, 6, 7, 8]):
            assert sum(int(mask[e].sum()) == 1 for e in rows) == 2
            assert all(int(mask[e].sum()) in (0, 1) for e in rows)
    genotype = derive_genotype(model.arch)
    assert genotype.form("normal") == "two-input"
    edges = [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4), (3, 4)]
    kept = {edges[e] for e in order["normal"]}
    for k, node in enumerate(genotype.nodes("normal")):
        assert len(node) == 2 and {(j, k + 2) for _, j in node} <= kept


def test_sgas_search_run_and_select(tmp_path, capsys):
    out = tmp_path / "sgas"
    cfg = RunConfig(method="sgas", epochs=3, C=2, layers=3, steps=2, batch_size=128, out=str(out),
                    first_decision=2, decision_freq=1, batch_increase=8)
    run = SearchRun(cfg, quiet=True)
    genotype = run.run()
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert lines[0]["decisions"] == []  # before the first decision α trains (from the first epoch)
    assert [len(r["decisions"]) for r in lines[1:]] == [2, 2]  # one edge per cell type per epoch
    assert [r["batch_size"] for r in lines] == [128, 128, 136]  # grown by 8 after each round of decisions
    assert len(run.strategy.decisions) == 8  # the rest decided when the search ended early
    assert Genotype.parse(genotype).form("normal") == "two-input"
    assert main(["select", "--run", str(out), "--method", "pt", "--tune-epochs", "0", "--val-batches", "1",
                 "--quiet"]) == 0
    assert "genotype: Genotype(" in capsys.readouterr().out


def test_sgas_pt_chooses_each_op_by_perturbation(tmp_path):
    import pynas.select.pt as pt

    calls = []

    def spy(model, cell_type, edge, batches, device):  # the chooser `pynas search --pt` hands the run
        chosen, scores = pt.op_by_perturbation(model, cell_type, edge, batches, "acc", device)
        calls.append((cell_type, edge, chosen, scores))
        return chosen, scores

    cfg = RunConfig(method="sgas", sgas_pt=True, pt_val_batches=1, epochs=2, C=2, layers=3, steps=2,
                    batch_size=128, out=str(tmp_path / "r"), first_decision=1, decision_freq=1)
    run = SearchRun(cfg, quiet=True, choose_op=spy)
    run.run()
    assert len(calls) == len(run.strategy.decisions) == 8
    for (t, e, chosen, scores), d in zip(calls, run.strategy.decisions):
        assert (t, e) == (d["cell_type"], d["edge"])
        # the op whose removal scores lowest (a tie goes to the larger α, see test_select.py)
        assert d["op"] == run.model.arch.ops[chosen] and scores[d["op"]] == min(scores.values())


def test_bad_sdarts_and_sgas_options_are_named(capsys):
    assert main(["search", "--method", "darts", "--pt"]) == 2
    assert "--pt" in capsys.readouterr().err
    assert main(["search", "--method", "sdarts-rs", "--epsilon-alpha", "0.01"]) == 2
    assert "--epsilon-alpha" in capsys.readouterr().err
    assert main(["search", "--method", "sgas", "--space", "nb201"]) == 2
    assert "--method sgas" in capsys.readouterr().err
