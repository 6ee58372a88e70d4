"""Single-DARTS' gradient correlation (Eq. 8), per edge and node, and its logging in a search."""
import json

import pytest
import torch
import torch.nn.functional as F

from pynas.search.grad_correlation import gradient_correlation, search_cells
from pynas.nn import NB201Network, SearchNetwork
from pynas.search.config import RunConfig
from pynas.search.run import SearchRun


def batch(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def outer_products(model, data):
    """Per cell, per edge: Σ_j g_j x_jᵀ (node gradient ⊗ edge input, summed over samples)."""
    cells = search_cells(model)
    seen = {}
    for c, cell in enumerate(cells):
        cell.state_observer = lambda _cell, states, c=c: seen.__setitem__(c, states)
    loss = F.cross_entropy(model(data[0]), data[1], reduction="sum")
    for cell in cells:
        cell.state_observer = None
    out = []
    for c, cell in enumerate(cells):
        per_edge = []
        for source, target in cell.edge_list:
            g = torch.autograd.grad(loss, seen[c][target], retain_graph=True)[0].flatten(1)
            x = seen[c][source].detach().flatten(1)
            per_edge.append(g.T @ x)  # [D_out, D_in]
        out.append(per_edge)
    return out


@pytest.mark.parametrize("network", ["darts", "nb201"])
def test_eq8_is_the_inner_product_of_summed_outer_products(network):
    torch.manual_seed(0)
    if network == "darts":
        model = SearchNetwork(C=2, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1).double()
    else:
        model = NB201Network(C=2, N=1, num_classes=3, in_channels=1).double()
    a, b = batch(1), batch(2)
    buffers = [t.clone() for t in model.buffers()]
    bilevel = gradient_correlation(model, a, b)
    single = gradient_correlation(model, a)
    assert all(torch.equal(x, y) for x, y in zip(model.buffers(), buffers))  # BatchNorm statistics restored
    # Σ_j Σ_k (g_a^j·g_b^k)(x_a^j·x_b^k) = <Σ_j g_a^j x_a^jᵀ, Σ_k g_b^k x_b^kᵀ>_F
    outer_a, outer_b = outer_products(model, a), outer_products(model, b)
    for c, cell in enumerate(search_cells(model)):
        for e in range(len(cell.edge_list)):
            assert bilevel[c]["edges"][e] == pytest.approx(float((outer_a[c][e] * outer_b[c][e]).sum()), rel=1e-9)
            assert single[c]["edges"][e] == pytest.approx(float(outer_a[c][e].square().sum()), rel=1e-9)
            assert single[c]["edges"][e] >= 0
        for i, node in enumerate(range(cell.inputs, cell.inputs + cell.steps)):
            into = [e for e, (_, t) in enumerate(cell.edge_list) if t == node]
            assert single[c]["nodes"][i] == pytest.approx(sum(single[c]["edges"][e] for e in into))


@pytest.mark.parametrize("method", ["darts", "single-level"])
def test_search_logs_the_gradient_correlation_every_epoch(tmp_path, method):
    cfg = RunConfig(method=method, epochs=1, C=2, layers=3, steps=2, batch_size=128, out=str(tmp_path),
                    log_grad_correlation=True)
    SearchRun(cfg, quiet=True).run()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    logged = record["grad_correlation"]
    assert len(logged) == 3 and all(len(c["nodes"]) == 2 and len(c["edges"]) == 5 for c in logged)
    if method == "single-level":  # a batch with itself: squared norms
        assert all(v >= 0 for c in logged for v in c["edges"])


def test_probability_gradients_are_the_loss_slopes_of_each_cells_weights():
    # Single-DARTS Fig. 3: ∂L/∂p per edge of a chosen cell, checked by central differences in float64.
    from pynas.nn import forward_with_weights
    from pynas.search.grad_correlation import probability_gradients
    from pynas.arch import EdgeWeights

    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = probability_gradients(model, (x, y), [1, 2])  # the two reduction cells share α, not ∂L/∂p
    assert set(grads) == {"1", "2"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    p = {t: model.arch.weights(t).weights.detach() for t in ("normal", "reduce")}
    types = ["reduce" if c.reduction else "normal" for c in model.cells]

    def loss(cell, e, k, h):
        weights = []
        for c, t in enumerate(types):
            w = p[t].clone()
            if c == cell:
                w[e, k] += h
            weights.append(EdgeWeights(w))
        saved = [b.clone() for b in model.buffers()]
        with torch.no_grad():
            value = float(F.cross_entropy(forward_with_weights(model, x, weights), y))
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)
        return value

    for cell, e, k in ((1, 0, 4), (2, 3, 1), (1, 4, 7)):
        numeric = (loss(cell, e, k, 1e-6) - loss(cell, e, k, -1e-6)) / 2e-6
        assert grads[str(cell)][e][k] == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    assert grads["1"] != grads["2"]


@pytest.mark.slow
def test_search_logs_probability_gradients_and_keeps_a_trajectory(tmp_path, capsys):
    from pynas.cli import main

    run = tmp_path / "run"
    assert main(["search", "--epochs", "4", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256",
                 "--keep-every", "2", "--log-prob-grad", "0", "--out", str(run), "--quiet"]) == 0
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert all(set(r["prob_grad"]) == {"0"} and len(r["prob_grad"]["0"]) == 5 for r in records)
    assert sorted(p.name for p in run.glob("checkpoint-epoch*.pt")) == ["checkpoint-epoch0002.pt",
                                                                         "checkpoint-epoch0004.pt"]
    capsys.readouterr()
    # The analyses read a kept checkpoint: the genotype after epoch 2 is the one logged then.
    assert main(["select", "--run", str(run), "--epoch", "2", "--method", "magnitude"]) == 0
    assert capsys.readouterr().out.strip() == f"genotype: {records[1]['genotype']}"
    assert main(["evaluate", "--run", str(run), "--epoch", "2"]) == 0
    assert main(["select", "--run", str(run), "--epoch", "3", "--method", "magnitude"]) == 2
    assert "kept: [2, 4]" in capsys.readouterr().err
