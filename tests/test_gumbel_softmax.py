"""gumbel_softmax: distribution, reproducibility, straight-through gradients."""
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch.library import opcheck

from pynas.functional import gumbel_softmax

from conftest import DEVICES, DTYPES


def seeded(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hard", [False, True])
def test_sample_is_a_distribution(device, dtype, hard):
    logits = torch.randn(64, 14, 8, device=device).to(dtype)
    y = gumbel_softmax(logits, tau=0.7, hard=hard, generator=seeded(device))
    assert y.dtype == dtype and y.shape == logits.shape
    assert torch.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()
    torch.testing.assert_close(y.float().sum(-1), torch.ones(64, 14, device=device), rtol=0, atol=1e-2)
    if hard:
        assert ((y == 0) | (y == 1)).all() and torch.equal(y.sum(-1), torch.ones_like(y.sum(-1)))


@pytest.mark.parametrize("device", DEVICES)
def test_hard_is_the_argmax_of_soft(device):
    logits = torch.randn(200, 8, device=device)
    soft = gumbel_softmax(logits, tau=1.0, generator=seeded(device, 3))
    hard = gumbel_softmax(logits, tau=1.0, hard=True, generator=seeded(device, 3))
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))
    assert torch.equal(hard, F.one_hot(soft.argmax(-1), 8).to(hard.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_argmax_frequencies_follow_softmax(device, tau):
    # Gumbel-max: P(argmax = i) = softmax(logits)_i for every tau (SNAS Eq. 5).
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5], device=device)
    n = 40000
    y = gumbel_softmax(logits.expand(n, 5), tau=tau, generator=seeded(device, 1234))
    observed = torch.bincount(y.argmax(-1), minlength=5).cpu().double().numpy()
    expected = (logits.double().softmax(-1).cpu() * n).numpy()
    assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_soft_sample_mean_matches_torch(device):
    # E[soft sample] has no closed form: compare with torch's sampler (5 sigma).
    logits = torch.tensor([0.3, -1.2, 0.8, 0.0], device=device)
    n = 40000
    ours = gumbel_softmax(logits.expand(n, 4), tau=0.6, generator=seeded(device, 7)).double()
    torch.manual_seed(7)
    theirs = F.gumbel_softmax(logits.expand(n, 4), tau=0.6).double()
    se = torch.sqrt(ours.var(0) / n + theirs.var(0) / n)
    assert ((ours.mean(0) - theirs.mean(0)).abs() < 5 * se).all()


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_sample(device):
    logits = torch.randn(14, 8, device=device)
    a = gumbel_softmax(logits, generator=seeded(device, 42))
    b = gumbel_softmax(logits, generator=seeded(device, 42))
    c = gumbel_softmax(logits, generator=seeded(device, 43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = seeded(device, 42)
    first, second = gumbel_softmax(logits, generator=gen), gumbel_softmax(logits, generator=gen)
    assert torch.equal(first, a) and not torch.equal(first, second)
    torch.manual_seed(5)
    d = gumbel_softmax(logits)
    torch.manual_seed(5)
    assert torch.equal(d, gumbel_softmax(logits))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1, -1, -3])
def test_dim_and_non_contiguous_input(device, dim):
    logits = torch.randn(5, 6, 7, device=device)
    y = gumbel_softmax(logits, dim=dim, generator=seeded(device))
    torch.testing.assert_close(y.sum(dim), torch.ones_like(y.sum(dim)))
    t = logits.transpose(0, 2).contiguous().transpose(0, 2)  # same values, other strides
    assert torch.equal(gumbel_softmax(t, dim=dim, generator=seeded(device)), y)


def _recovered_noise(logits, soft, tau, dim):
    # soft = softmax((logits + G)/tau) => G = tau*log(soft) - logits up to a per-row constant.
    return tau * soft.log() - logits


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dim", [-1, 0])
def test_gradient_matches_eager_straight_through(device, hard, dim):
    tau = 0.8
    logits = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)
    y = gumbel_softmax(logits, tau=tau, hard=hard, dim=dim, generator=seeded(device, 11))
    soft = gumbel_softmax(logits, tau=tau, dim=dim, generator=seeded(device, 11)).detach()
    noise = _recovered_noise(logits.detach(), soft, tau, dim)
    eager_soft = F.softmax((logits + noise) / tau, dim=dim)
    eager = eager_soft
    if hard:
        index = eager_soft.argmax(dim, keepdim=True)
        eager = torch.zeros_like(eager_soft).scatter_(dim, index, 1.0) - eager_soft.detach() + eager_soft
        assert torch.equal(y, torch.zeros_like(y).scatter_(dim, index, 1.0))
    torch.testing.assert_close(y, eager.detach(), rtol=1e-12, atol=1e-12)
    w = torch.randn_like(y)
    (got,) = torch.autograd.grad((w * y).sum(), [logits])
    (want,) = torch.autograd.grad((w * eager).sum(), [logits])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hard", [False, True])
def test_gradcheck_at_fixed_noise(device, hard):
    logits = torch.randn(3, 6, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda l: gumbel_softmax(l, tau=0.9, hard=False, generator=seeded(device, 5))
    assert torch.autograd.gradcheck(fn, (logits,))
    assert torch.autograd.gradgradcheck(fn, (logits,))
    if hard:
        # The straight-through gradient of the hard sample is that of the soft one.
        hard_fn = lambda l: gumbel_softmax(l, tau=0.9, hard=True, generator=seeded(device, 5))
        w = torch.randn(3, 6, dtype=torch.float64, device=device)
        (got,) = torch.autograd.grad((w * hard_fn(logits)).sum(), [logits])
        (want,) = torch.autograd.grad((w * fn(logits)).sum(), [logits])
        torch.testing.assert_close(got, want)
        soft = fn(logits).detach()
        assert torch.autograd.gradcheck(
            lambda g: torch.ops.pynas.gumbel_softmax_backward(g, soft, 0.9, -1), (w.clone().requires_grad_(),)
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [-1, 0])
def test_hard_sample_is_twice_differentiable(device, dim):
    # The hard sample's value is piecewise constant, so its finite differences are 0, not the straight-through
    # gradient; that gradient is smooth in the logits, and its own derivative is checked by finite differences.
    logits = torch.randn(3, 6, dtype=torch.float64, device=device, requires_grad=True)
    hard_fn = lambda l: gumbel_softmax(l, tau=0.7, hard=True, dim=dim, generator=seeded(device, 5))
    assert torch.autograd.gradgradcheck(hard_fn, (logits,))
    # ... and equals the soft sample's second derivative (the straight-through rule, differentiated again).
    soft_fn = lambda l: gumbel_softmax(l, tau=0.7, dim=dim, generator=seeded(device, 5))
    w, v = torch.randn(2, 3, 6, dtype=torch.float64, device=device)
    hvps = []
    for fn in (hard_fn, soft_fn):
        (g,) = torch.autograd.grad((w * fn(logits)).sum(), [logits], create_graph=True)
        hvps.append(torch.autograd.grad((g * v).sum(), [logits])[0])
    torch.testing.assert_close(hvps[0], hvps[1], rtol=1e-12, atol=1e-12)
    assert hvps[0].abs().max() > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_inputs_are_distributions_one_hot_as_tau_shrinks_and_uniform_as_it_grows(device):
    logits = torch.randn(1000, 1000, device=device)
    y = gumbel_softmax(logits, generator=seeded(device))
    torch.testing.assert_close(y.sum(-1), torch.ones(1000, device=device))
    big = torch.tensor([[3e4, -3e4, 0.0], [1e30, 1e30, -1e30]], device=device)
    for tau in (1e-30, 1e-3, 1.0, 1e30):
        y = gumbel_softmax(big, tau=tau, generator=seeded(device))
        assert (y >= 0).all() and (y <= 1).all()
        torch.testing.assert_close(y.sum(-1), torch.ones(2, device=device))
    # tau -> 0: the soft sample is the one-hot of its own argmax (the hard sample of the same draw).
    x = torch.randn(64, 7, device=device)
    for tau in (1e-6, 1e-30):
        soft = gumbel_softmax(x, tau=tau, generator=seeded(device, 9))
        hard = gumbel_softmax(x, tau=tau, hard=True, generator=seeded(device, 9))
        torch.testing.assert_close(soft, hard)
        assert torch.equal(hard.sum(-1), torch.ones(64, device=device))
    tiny = gumbel_softmax(torch.zeros(4, 3, device=device), tau=1e-45, hard=False, generator=seeded(device))
    torch.testing.assert_close(tiny.sum(-1), torch.ones(4, device=device))
    # tau -> infinity: uniform, whatever the logits and the noise.
    wide = gumbel_softmax(x * 10, tau=1e30, generator=seeded(device))
    torch.testing.assert_close(wide, torch.full_like(wide, 1 / 7))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, hard, requires_grad):
    logits = torch.randn(4, 8, device=device, requires_grad=requires_grad)
    # A random op: outputs differ between calls, so only the checks that do not
    # compare two calls' values apply.
    opcheck(
        torch.ops.pynas.gumbel_softmax.default,
        (logits, 0.5, hard, -1, None),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    soft = torch.rand(4, 8, device=device).softmax(-1).requires_grad_(requires_grad)
    grad = torch.randn(4, 8, device=device, requires_grad=requires_grad)
    opcheck(torch.ops.pynas.gumbel_softmax_backward.default, (grad, soft, 0.5, -1))


def test_bad_inputs_raise_naming_the_argument():
    logits = torch.randn(3, 4)
    for tau in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="`tau` must be a finite positive number"):
            gumbel_softmax(logits, tau=tau)
    with pytest.raises(ValueError, match="`logits` must not be empty"):
        gumbel_softmax(torch.empty(0, 4))
    with pytest.raises(TypeError, match="`logits` must be float"):
        gumbel_softmax(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(IndexError, match=r"`dim` must be in \[-2, 1\]"):
        gumbel_softmax(logits, dim=2)
