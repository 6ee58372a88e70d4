"""Single-DARTS' gradient correlation (Eq. 8), per edge and node, and its logging in a search."""
import json

import pytest
import torch
import torch.nn.functional as F

from pynas.analysis.grad_correlation import gradient_correlation, search_cells
from pynas.nn import NB201Network, SearchNetwork
from pynas.search.run import RunConfig, SearchRun


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
