"""Λ-DARTS' weight step (dr-faustus/Lambda-DARTS sota/cnn/model_search.py:127-150, 239-283,
train_search.py:168-169, 233-249) against references written out here: the perturbation with explicit
projection matrices in numpy, the finite-difference term with forward_with_weights, the λ(e) schedule."""
import copy

import numpy as np
import pytest
import torch

from pynas.arch import EdgeWeights
from pynas.nn import SearchNetwork, forward_with_weights
from pynas.nn.nb201 import NB201Network
from pynas.search.lambda_darts import LambdaDarts, lambda_at, lambda_perturbation
from pynas.search.strategies import DartsFirstOrder, SearchConfig


@pytest.fixture(autouse=True)
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def tiny(seed=0):
    torch.manual_seed(seed)
    # layers=4: reductions at cells 1 and 2, normal cells 0 and 3 (L = 2).
    return SearchNetwork(C=4, num_classes=3, layers=4, steps=2, multiplier=2, in_channels=1)


def batch(seed=1, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def numpy_perturbation(grads):
    L = len(grads)
    g = [np.asarray(x, dtype=np.float64).reshape(-1) for x in grads]
    u = [x / np.linalg.norm(x) for x in g]
    s = np.sum(u, axis=0)
    c = 1.0 / (L * (L - 1) / 2)
    return [c * (1 / np.linalg.norm(x)) * (np.eye(len(x)) - np.outer(ul, ul)) @ s for x, ul in zip(g, u)]


def test_perturbation_against_numpy():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((5, 4)) for _ in range(3)]
    got = lambda_perturbation([torch.tensor(g) for g in grads])
    for p, ref in zip(got, numpy_perturbation(grads)):
        assert p.shape == (5, 4)
        np.testing.assert_allclose(p.numpy().reshape(-1), ref, rtol=1e-12, atol=1e-15)
    # two cells: c = 1 and p_l ⟂ g_l
    two = lambda_perturbation([torch.tensor(g) for g in grads[:2]])
    assert abs(float((two[0] * torch.tensor(grads[0])).sum())) < 1e-12
    np.testing.assert_allclose(two[1].numpy().reshape(-1), numpy_perturbation(grads[:2])[1], rtol=1e-12)


def test_perturbation_zero_gradient_and_too_few_cells():
    g = [torch.zeros(3, 2), torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])]
    p = lambda_perturbation(g)
    assert torch.equal(p[0], torch.zeros(3, 2))
    # u_0 = 0: p_1 = (1/‖g_1‖)(I − u_1u_1ᵀ)u_1 = 0
    assert torch.allclose(p[1], torch.zeros(3, 2), atol=1e-15)
    with pytest.raises(ValueError, match="two normal cells"):
        lambda_perturbation([torch.ones(3)])


def test_lambda_schedule():
    assert [lambda_at(0.25, e, 5) for e in range(5)] == [0.0, 0.0625, 0.125, 0.1875, 0.25]
    assert lambda_at(0.25, 0, 1) == 0.0
    s = LambdaDarts(tiny(), SearchConfig(epochs=11), 1, lam=0.5)
    s.epochs_done = 4
    assert s.lambda_now() == pytest.approx(0.5 * 4 / 10, abs=0)


def captured_grads(strategy):
    """Records the weights' gradients as the SGD step sees them (after clipping, which does not bind here)."""
    seen = []
    step = strategy.w_opt.step

    def recording(*a, **k):
        seen.append([w.grad.detach().clone() for w in strategy.weights])
        return step(*a, **k)

    strategy.w_opt.step = recording
    return seen


def reference_gradient(model, x, y, lam_e, epsilon0):
    """The code's weight step written with forward_with_weights: one pass with per-cell copies of softmax(α),
    p from the normal cells' gradients (numpy), passes at A − εp (forward_grads) and A + εp (backward_grads)."""
    model = copy.deepcopy(model)
    weights = list(model.weight_parameters())
    A = [model.arch.probabilities("reduce" if c.reduction else "normal").detach().clone().requires_grad_()
         for c in model.cells]
    loss = torch.nn.functional.cross_entropy(forward_with_weights(model, x, [EdgeWeights(a) for a in A]), y)
    grads = torch.autograd.grad(loss, weights + A, allow_unused=True)
    g = [torch.zeros_like(w) if gi is None else gi for gi, w in zip(grads[:len(weights)], weights)]
    normal = [i for i, c in enumerate(model.cells) if not c.reduction]
    p_np = numpy_perturbation([grads[len(weights) + i].numpy() for i in normal])
    eps = epsilon0 / np.linalg.norm(np.concatenate(p_np))
    pert = [torch.zeros_like(a) for a in A]
    for i, p in zip(normal, p_np):
        pert[i] = eps * torch.tensor(p).reshape(A[i].shape)

    def grads_at(sign):
        cw = [EdgeWeights(a.detach() - sign * d) for a, d in zip(A, pert)]
        loss = torch.nn.functional.cross_entropy(forward_with_weights(model, x, cw), y)
        return [torch.zeros_like(w) if gi is None else gi
                for gi, w in zip(torch.autograd.grad(loss, weights, allow_unused=True), weights)]

    forward, backward = grads_at(+1), grads_at(-1)
    term = [lam_e * (f - b) / (2 * eps) for f, b in zip(forward, backward)]
    return g, term, pert


@pytest.mark.parametrize("epsilon0", [1e-4, 1e-3])
def test_weight_gradient_term(epsilon0):
    model = tiny()
    x, y = batch()
    config = SearchConfig(epochs=3, grad_clip=1e9)
    s = LambdaDarts(model, config, 1, lam=0.25, epsilon0=epsilon0)
    s.epochs_done = 2  # λ(e) = λ
    g, term, _ = reference_gradient(model, x, y, 0.25, epsilon0)
    seen = captured_grads(s)
    s.weight_step((x, y))
    got = seen[0]
    assert sum(float(t.norm()) for t in term) > 1e-3  # the term is really there
    for gw, g0, t in zip(got, g, term):
        torch.testing.assert_close(gw, g0 + t, rtol=1e-9, atol=1e-12)


def test_passes_see_softmax_and_reduction_cells_are_not_perturbed():
    model = tiny()
    x, y = batch()
    s = LambdaDarts(model, SearchConfig(epochs=3), 1, lam=0.125, epsilon0=1e-3)
    _, _, pert = reference_gradient(model, x, y, 0.125, 1e-3)
    seen = {i: [] for i in range(len(model.cells))}
    for i, cell in enumerate(model.cells):
        cell.register_forward_hook(lambda m, args, out, i=i: seen[i].append(args[2].detach().clone()))
    s.weight_step((x, y))
    for i, cell in enumerate(model.cells):
        A = model.arch.probabilities("reduce" if cell.reduction else "normal").detach()
        first, minus, plus = seen[i]
        torch.testing.assert_close(first, A, rtol=0, atol=0)
        if cell.reduction:
            assert torch.equal(minus, A) and torch.equal(plus, A)
        else:
            assert float(pert[i].abs().max()) > 0
            torch.testing.assert_close(minus, A - pert[i], rtol=1e-9, atol=1e-15)
            torch.testing.assert_close(plus, A + pert[i], rtol=1e-9, atol=1e-15)


def run_steps(strategy, steps=2):
    for k in range(steps):
        strategy.step(batch(10 + k), batch(20 + k))


def test_lambda_zero_is_darts_first_order_exactly():
    a, b = tiny(), tiny()
    run_steps(DartsFirstOrder(a, SearchConfig(epochs=3), 2))
    run_steps(LambdaDarts(b, SearchConfig(epochs=3), 2, lam=0.0))
    for (n, t), (_, u) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(t, u), n


def test_first_epoch_has_no_term():
    # λ(0) = 0: the extra passes run (as the code's) but add nothing; only BatchNorm's statistics differ.
    a, b = tiny(), tiny()
    run_steps(DartsFirstOrder(a, SearchConfig(epochs=3), 2))
    run_steps(LambdaDarts(b, SearchConfig(epochs=3), 2, lam=0.25))
    for p, q in zip(list(a.parameters()), list(b.parameters())):
        assert torch.equal(p, q)
    # and the term does change the weights once λ(e) > 0
    c = tiny()
    s = LambdaDarts(c, SearchConfig(epochs=3), 2, lam=0.25)
    s.epochs_done = 2
    run_steps(s, 1)
    d = tiny()
    t = DartsFirstOrder(d, SearchConfig(epochs=3), 2)
    t.epochs_done = 2
    run_steps(t, 1)
    assert not all(torch.equal(p, q) for p, q in zip(c.parameters(), d.parameters()))


def test_nb201_weight_step_first():
    torch.manual_seed(0)
    model = NB201Network(C=4, N=1, num_classes=3, in_channels=1)
    s = LambdaDarts(model, SearchConfig(epochs=3), 1, lam=0.25)
    assert s.weight_first and not LambdaDarts(tiny(), SearchConfig(), 1).weight_first
    order = []
    arch_step, weight_step = s.arch_step, s.weight_step
    s.arch_step = lambda *a: (order.append("alpha"), arch_step(*a))[1]
    s.weight_step = lambda *a: (order.append("weights"), weight_step(*a))[1]
    s.epochs_done = 2
    metrics = s.step(batch(), batch(2))
    assert order == ["weights", "alpha"] and torch.isfinite(metrics["loss"])


@pytest.mark.parametrize("options, message", [
    (dict(lam=-0.1), "--lambda"), (dict(lam=float("nan")), "--lambda"), (dict(lam=True), "--lambda"),
    (dict(lam="0.1"), "--lambda"), (dict(epsilon0=0.0), "--lambda-epsilon"),
    (dict(epsilon0=-1e-3), "--lambda-epsilon"), (dict(epsilon0=float("inf")), "--lambda-epsilon"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        LambdaDarts(tiny(), SearchConfig(), 1, **options)


def test_needs_two_normal_cells_and_softmax():
    torch.manual_seed(0)
    one_normal = SearchNetwork(C=4, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1)
    with pytest.raises(ValueError, match="--layers"):
        LambdaDarts(one_normal, SearchConfig(), 1)
    gumbel = SearchNetwork(C=4, num_classes=3, layers=4, steps=2, multiplier=2, in_channels=1, relaxation="gumbel")
    with pytest.raises(ValueError, match="--relaxation gumbel"):
        LambdaDarts(gumbel, SearchConfig(), 1)
