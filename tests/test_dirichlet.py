"""DrNAS' Dirichlet relaxation and its KL regulariser against formulas written out here:
the Dirichlet's moments, the implicit derivative of its Beta marginals (finite
differences of scipy's regularised incomplete beta), the closed-form KL (math.lgamma,
scipy's digamma), and the seeded stream against torch's own sampler on the global RNG."""
import math

import numpy as np
import pytest
import torch

from pynas.arch import Architecture, EdgeWeights, dirichlet_weights
from pynas.nn import SearchNetwork
from pynas.nn.networks import forward_with_weights
from pynas.search import DartsFirstOrder, SearchConfig
from pynas.search.parts import REGULARIZERS, DirichletKL, build_terms

special = pytest.importorskip("scipy.special")

ALPHA = [[0.3, -0.8, 1.5, 0.0], [-2.0, 0.7, 0.1, 2.5], [0.4, 0.4, -0.3, 1.0]]


def elu_plus_one(a):
    a = np.asarray(a, dtype=np.float64)
    return np.where(a > 0, a + 1, np.exp(a))


def masks():
    m = torch.ones(3, 4, dtype=torch.bool)
    m[1, 2] = False  # a pruned operation
    m[2] = False  # a removed edge
    return m


def alpha(requires_grad=True):
    return torch.tensor(ALPHA, dtype=torch.float64, requires_grad=requires_grad)


# -- the distribution -----------------------------------------------------------------


def test_moments_are_those_of_dirichlet_elu_plus_one_over_the_kept_operations():
    n, mask = 40000, masks()
    g = torch.Generator().manual_seed(1)
    w = dirichlet_weights(alpha(False), mask, g, batch_size=n).numpy()  # [n, 3, 4]
    beta = elu_plus_one(ALPHA)
    for e in (0, 1):
        kept = mask[e].numpy()
        b, total = beta[e][kept], beta[e][kept].sum()
        mean = b / total
        second = b * (b + 1) / (total * (total + 1))  # E[w²], so var = second − mean²
        samples = w[:, e, kept]
        for moment, expected in ((samples, mean), (samples ** 2, second)):
            se = moment.std(0) / math.sqrt(n)
            assert np.all(np.abs(moment.mean(0) - expected) < 5 * se), (e, moment.mean(0), expected)
        var = second - mean ** 2
        assert np.allclose(samples.var(0), var, rtol=0.05)
    assert np.all(w[:, 1, 2] == 0) and np.all(w[:, 2] == 0)
    assert np.allclose(w[:, :2].sum(-1), 1.0, atol=1e-12)


def test_gradient_of_an_expectation_matches_the_closed_form():
    """∇α E[Σ_k c_k w_k²] by Monte Carlo (the reparameterised gradient, averaged)
    against finite differences of the closed form Σ_k c_k β_k(β_k + 1)/(B(B + 1))."""
    c = np.array([1.0, -2.0, 0.5, 3.0])
    mask = masks()

    def expectation(a):
        beta, out = elu_plus_one(a), 0.0
        for e in (0, 1):
            kept = mask[e].numpy()
            b, total = beta[e][kept], beta[e][kept].sum()
            out += (c[kept] * b * (b + 1)).sum() / (total * (total + 1))
        return out

    a0, h = np.array(ALPHA), 1e-6
    expected = np.zeros_like(a0)
    for idx in np.ndindex(*a0.shape):
        up, down = a0.copy(), a0.copy()
        up[idx] += h
        down[idx] -= h
        expected[idx] = (expectation(up) - expectation(down)) / (2 * h)

    g, chunks, n = torch.Generator().manual_seed(2), [], 5000
    for _ in range(20):
        a = alpha()
        w = dirichlet_weights(a, mask, g, batch_size=n)
        ((w ** 2) * torch.tensor(c)).sum().div(n).backward()
        assert torch.isfinite(a.grad).all()
        chunks.append(a.grad.numpy())
    chunks = np.stack(chunks)
    estimate, se = chunks.mean(0), chunks.std(0) / math.sqrt(len(chunks))
    live = mask.numpy()
    assert np.all(np.abs(estimate - expected)[live] < 5 * se[live] + 1e-9), (estimate, expected)
    assert np.all(chunks[:, ~live] == 0)  # pruned operation, removed edge: exactly no gradient


def beta_marginal_derivative(x, a, b, h=1e-6):
    """dx/da of x ~ Beta(a, b) at fixed b by the implicit function theorem:
    −(∂I_x(a, b)/∂a)/pdf(x), the partial by central differences of scipy's betainc."""
    d_cdf = (special.betainc(a + h, b, x) - special.betainc(a - h, b, x)) / (2 * h)
    pdf = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - special.betaln(a, b))
    return -d_cdf / pdf


def test_per_sample_gradient_is_the_implicit_reparameterisation():
    """One sample's gradient against the implicit derivative written out: x_j's marginal
    is Beta(β_j, B − β_j), so dx_j/dβ_j = D_j from the Beta CDF; the other entries
    shrink in proportion, dx_i/dβ_j = −x_i·D_j/(1 − x_j) (the Dirichlet's neutrality;
    Jankowiak & Obermeyer 2018, torch.distributions' Dirichlet.rsample). The sample x
    itself is torch's Dirichlet sampler on the global RNG set to the generator's state."""
    c = np.array([0.7, -1.3, 2.0, 0.4])
    mask = masks()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    a = alpha()
    w = dirichlet_weights(a, mask, g)
    (w * torch.tensor(c)).sum().backward()

    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)
        x = torch._sample_dirichlet(torch.tensor(elu_plus_one(ALPHA))).numpy()
    beta, a0 = elu_plus_one(ALPHA), np.array(ALPHA)
    for e in (0, 1):
        kept = mask[e].numpy()
        total_kept = x[e][kept].sum()
        w_ref = np.where(kept, x[e], 0) / total_kept
        assert np.allclose(w[e].detach().numpy(), w_ref, rtol=1e-12)
        go = np.where(kept, (c - (w_ref * c).sum()) / total_kept, 0.0)  # ∂(Σ c·w)/∂x
        for j in range(4):
            d = beta_marginal_derivative(x[e, j], beta[e, j], beta[e].sum() - beta[e, j])
            dx = -x[e] * d / (1 - x[e, j])
            dx[j] = d
            expected = (go * dx).sum() * (1.0 if a0[e, j] > 0 else math.exp(a0[e, j])) if kept[j] else 0.0
            assert a.grad[e, j].item() == pytest.approx(expected, rel=2e-3, abs=1e-9), (e, j)
    assert torch.all(a.grad[2] == 0)


# -- seeding ----------------------------------------------------------------------------


def test_the_generator_reproduces_samples_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    global_before = torch.get_rng_state()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    start = g1.get_state()
    w1, w2 = dirichlet_weights(alpha(False), masks(), g1), dirichlet_weights(alpha(False), masks(), g2)
    assert torch.equal(w1, w2)
    assert torch.equal(torch.get_rng_state(), global_before)

    # The stream is the global one continued from the generator's state, and the generator advances by the draw.
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(start)
        x = torch._sample_dirichlet(torch.tensor(elu_plus_one(ALPHA)))
        after = torch.get_rng_state()
    assert torch.allclose(w1[0], x[0] / x[0].sum(), rtol=1e-12, atol=0)
    assert torch.equal(g1.get_state(), after)

    # A resumed generator draws the same next sample; the next sample is a new one.
    saved = g1.get_state()
    nxt = dirichlet_weights(alpha(False), masks(), g1)
    assert not torch.equal(nxt, w1)
    g1.set_state(saved)
    assert torch.equal(dirichlet_weights(alpha(False), masks(), g1), nxt)
    assert torch.equal(torch.get_rng_state(), global_before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_generator_is_swapped_in_the_same_way():
    a = alpha(False).cuda()
    mask = masks().cuda()
    torch.cuda.manual_seed(9)
    global_before = torch.cuda.get_rng_state()
    g1, g2 = torch.Generator("cuda").manual_seed(5), torch.Generator("cuda").manual_seed(5)
    start = g1.get_state()
    w1, w2 = dirichlet_weights(a, mask, g1), dirichlet_weights(a, mask, g2)
    assert torch.equal(w1, w2) and torch.equal(torch.cuda.get_rng_state(), global_before)
    with torch.random.fork_rng(devices=[a.device]):
        torch.cuda.set_rng_state(start)
        x = torch._sample_dirichlet(torch.tensor(elu_plus_one(ALPHA), device="cuda"))
        after = torch.cuda.get_rng_state()
    assert torch.allclose(w1[0], x[0] / x[0].sum(), rtol=1e-12, atol=0)
    assert torch.equal(g1.get_state(), after)
    assert not torch.equal(dirichlet_weights(a, mask, g1), w1)
    with pytest.raises(ValueError, match="generator"):
        dirichlet_weights(a.cpu(), mask.cpu(), g1)


def test_a_generator_on_another_device_is_named():
    with pytest.raises(ValueError, match="generator"):
        dirichlet_weights(alpha(False).to("meta"), masks().to("meta"), torch.Generator())


# -- the KL term --------------------------------------------------------------------------


def kl_to_uniform(beta):
    """KL(Dir(β) ‖ Dir(1)) = lgamma(B) − Σ lgamma(β) − lgamma(K) + Σ (β − 1)(ψ(β) − ψ(B))."""
    total, k = sum(beta), len(beta)
    return (math.lgamma(total) - sum(math.lgamma(b) for b in beta) - math.lgamma(k)
            + sum((b - 1) * (special.digamma(b) - special.digamma(total)) for b in beta))


class Model:
    def __init__(self, arch):
        self.arch = arch


def kl_arch():
    arch = Architecture("nb201", num_edges=3, cell_types=("normal", "reduce"), relaxation="dirichlet").double()
    with torch.no_grad():
        arch.alphas["normal"].copy_(torch.tensor([[0.3, -0.8, 1.5, 0.0, 0.2], [-2.0, 0.7, 0.1, 2.5, -0.4],
                                                  [0.4, 0.4, -0.3, 1.0, 3.0]]))
        arch.alphas["reduce"].copy_(-arch.alphas["normal"].flip(0))
    arch.remove_op("normal", 0, 1)
    arch.remove_edge("reduce", 2)
    return arch


@pytest.mark.parametrize("over", ["kept", "all"])
def test_kl_and_its_gradient_match_the_closed_form(over):
    arch = kl_arch()
    value = DirichletKL(over=over).value(Model(arch))

    def reference(alphas):
        out = 0.0
        for t, a in alphas.items():
            mask = arch.mask(t).numpy() if over == "kept" else np.ones(a.shape, dtype=bool)
            for row, keep in zip(elu_plus_one(a), mask):
                if keep.any():
                    out += kl_to_uniform(row[keep])
        return out

    alphas = {t: arch.alphas[t].detach().numpy().copy() for t in arch.cell_types}
    assert value.item() == pytest.approx(reference(alphas), rel=1e-12)
    value.backward()
    h = 1e-6
    for t in arch.cell_types:
        for idx in np.ndindex(*alphas[t].shape):
            up = {k: v.copy() for k, v in alphas.items()}
            down = {k: v.copy() for k, v in alphas.items()}
            up[t][idx] += h
            down[t][idx] -= h
            fd = (reference(up) - reference(down)) / (2 * h)
            assert arch.alphas[t].grad[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-8), (t, idx)
    if over == "kept":
        assert arch.alphas["normal"].grad[0, 1] == 0 and torch.all(arch.alphas["reduce"].grad[2] == 0)


def test_kl_term_options_and_where_it_joins():
    assert REGULARIZERS["dirichlet-kl"][1] == 1e-3
    (term,) = build_terms(["dirichlet-kl=0.01"])
    assert isinstance(term, DirichletKL) and term.weight(7) == 0.01 and term.joins == ("alpha",)
    term.check_with("dirichlet")
    with pytest.raises(ValueError, match="--relaxation dirichlet"):
        term.check_with("softmax")
    with pytest.raises(ValueError, match="over"):
        DirichletKL(over="masked")
    with pytest.raises(ValueError, match="dirichlet-kl"):
        DirichletKL(-1.0)


# -- in a supernet ----------------------------------------------------------------------


def tiny():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, space="nb201",
                          relaxation="dirichlet", generator=torch.Generator().manual_seed(11)).double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for a in model.arch.alphas.values():
            a.copy_(torch.randn(a.shape, generator=g, dtype=torch.float64))
    model.arch.remove_op("normal", 0, 3)
    model.arch.remove_edge("reduce", 4)
    return model


def reference_weights(model, state):
    """Per cell type in first use (normal, then reduce): torch's Dirichlet(ELU(α) + 1)
    sample on the global RNG set to the generator's state, masked and renormalised."""
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)
        for t in ("normal", "reduce"):
            a = model.arch.alphas[t].detach()
            x = torch._sample_dirichlet(torch.where(a > 0, a + 1, a.exp()))
            kept = x * model.arch.mask(t)
            total = kept.sum(-1, keepdim=True)
            out[t] = kept / torch.where(total > 0, total, torch.ones_like(total))
    return out


@pytest.mark.parametrize("training", [True, False])
def test_a_supernet_forward_uses_one_sample_per_cell_type_in_train_and_eval(training):
    model = tiny().train(training)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    state = model.arch.generator.get_state()
    out = model(x)
    ref = reference_weights(model, state)
    cells = [EdgeWeights(ref["reduce" if c.reduction else "normal"], model.arch.active(
        "reduce" if c.reduction else "normal")) for c in model.cells]
    with torch.no_grad():
        assert torch.allclose(out, forward_with_weights(model, x, cells), rtol=1e-10, atol=1e-12)
        assert not torch.allclose(model(x), out)  # every forward draws anew
    if training:
        out.sum().backward()
        grads = {t: model.arch.alphas[t].grad for t in ("normal", "reduce")}
        assert all(torch.isfinite(g).all() for g in grads.values())
        assert grads["normal"][0, 3] == 0 and torch.all(grads["reduce"][4] == 0)
        assert grads["normal"][1].abs().sum() > 0
    # Derivation reads softmax(α), masked.
    p = model.arch.probabilities("normal")
    a = model.arch.alphas["normal"].detach().masked_fill(~model.arch.mask("normal"), float("-inf"))
    assert torch.allclose(p, a.exp() / a.exp().sum(-1, keepdim=True), rtol=1e-12)


def test_the_kl_joins_alpha_loss_only():
    model = tiny()
    strategy = DartsFirstOrder(model, SearchConfig(epochs=2), steps_per_epoch=1, terms=[DirichletKL(0.5)])
    batch = (torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 2]))
    state = model.arch.generator.get_state()
    losses = {}
    for role in ("alpha", "weights", None):
        model.arch.generator.set_state(state)
        losses[role] = strategy.loss(batch, role)[0].item()
    kl = sum(kl_to_uniform(row[keep])
             for t in ("normal", "reduce")
             for row, keep in zip(elu_plus_one(model.arch.alphas[t].detach().numpy()), model.arch.mask(t).numpy())
             if keep.any())
    assert losses["weights"] == losses[None]
    assert losses["alpha"] - losses[None] == pytest.approx(0.5 * kl, rel=1e-9)
