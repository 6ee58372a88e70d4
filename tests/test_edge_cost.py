"""edge_cost against eager float64 sums, its determinism and its gradients."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

from pynas.functional import edge_cost

from conftest import DEVICES, DTYPES
from precision import assert_float32_accumulation, products_magnitude
from layouts import LAYOUTS, make


def reference(grad, outputs, per_sample):
    dims = list(range(1, grad.dim())) if per_sample else list(range(grad.dim()))
    g = grad.double()
    return torch.stack([(g * o.double()).sum(dims) if dims else g * o.double() for o in outputs], dim=-1)


def accumulate_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("K", [1, 8, 35, 130])
def test_matches_eager(device, dtype, per_sample, K):
    grad = make((8, 16, 9, 9), "contiguous", dtype, device)
    outputs = [make((8, 16, 9, 9), "contiguous", dtype, device) for _ in range(K)]
    cost = edge_cost(grad, outputs, per_sample)
    assert cost.dtype == accumulate_dtype(dtype)
    assert cost.shape == ((8, K) if per_sample else (K,))
    # float32 accumulation (float64 for float64) whatever the inputs' precision
    want = reference(grad, outputs, per_sample)
    if dtype == torch.float64:
        torch.testing.assert_close(cost, want, rtol=1e-12, atol=1e-12)
    else:
        assert_float32_accumulation(cost, want, products_magnitude(grad, outputs, per_sample))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_layouts(device, layout, per_sample):
    grad = make((3, 8, 5, 7), "contiguous", torch.float64, device)
    outputs = [make((3, 8, 5, 7), layout, torch.float64, device) for _ in range(4)]
    torch.testing.assert_close(edge_cost(grad, outputs, per_sample), reference(grad, outputs, per_sample))
    # grad in a different layout from the outputs
    grad_cl = grad.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(edge_cost(grad_cl, outputs, per_sample), reference(grad, outputs, per_sample))


def test_deterministic_across_thread_counts():
    grad = make((64, 16, 32, 32), "contiguous", torch.float32, "cpu")
    outputs = [make((64, 16, 32, 32), "contiguous", torch.float32, "cpu") for _ in range(3)]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 1):
            torch.set_num_threads(n)
            results.append(edge_cost(grad, outputs, True))
            results.append(edge_cost(grad, outputs))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[0::2], results[2::2]):
        assert torch.equal(a, b)
    for a, b in zip(results[1::2], results[3::2]):
        assert torch.equal(a, b)


def test_float32_accuracy_over_a_million_elements():
    # Tile-wise partial sums keep float32 accumulation close to float64.
    grad = torch.rand(64, 16, 32, 32)
    outputs = [torch.rand(64, 16, 32, 32)]
    torch.testing.assert_close(edge_cost(grad, outputs).double(), reference(grad, outputs, False), rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck(device, per_sample):
    grad = make((2, 3, 4), "contiguous", torch.float64, device).requires_grad_()
    outputs = [make((2, 3, 4), "contiguous", torch.float64, device).requires_grad_() for _ in range(3)]
    assert torch.autograd.gradcheck(lambda g, *o: edge_cost(g, o, per_sample), (grad, *outputs))
    assert torch.autograd.gradgradcheck(lambda g, *o: edge_cost(g, o, per_sample), (grad, *outputs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, per_sample, requires_grad):
    grad = make((2, 3, 4, 4), "contiguous", torch.float32, device).requires_grad_(requires_grad)
    outputs = [make((2, 3, 4, 4), "channels_last", torch.float32, device).requires_grad_(requires_grad) for _ in range(3)]
    opcheck(torch.ops.pynas.edge_cost.default, (grad, outputs, per_sample))


@pytest.mark.parametrize("device", DEVICES)
def test_equals_mixed_sum_weight_gradient(device):
    # The DARTS alpha-gradient before the softmax Jacobian is exactly the edge cost.
    from pynas.functional import mixed_sum

    outputs = [make((4, 3, 6, 6), "contiguous", torch.float64, device) for _ in range(5)]
    weights = torch.rand(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    grad = make((4, 3, 6, 6), "contiguous", torch.float64, device)
    (gw,) = torch.autograd.grad(mixed_sum(outputs, weights), [weights], grad)
    torch.testing.assert_close(gw, edge_cost(grad, outputs, per_sample=True))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_size(device):
    grad = torch.empty(0, 5, device=device)
    assert torch.equal(edge_cost(grad, [grad, grad]), torch.zeros(2, device=device))
    assert edge_cost(grad, [grad, grad], per_sample=True).shape == (0, 2)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    K=st.integers(1, 70),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    per_sample=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property(device, shape, K, dtype, layout, per_sample, seed):
    gen = torch.Generator().manual_seed(seed)
    grad = make(shape, layout, dtype, device, gen)
    outputs = [make(shape, "contiguous", dtype, device, gen) for _ in range(K)]
    cost, want = edge_cost(grad, outputs, per_sample), reference(grad, outputs, per_sample)
    if dtype == torch.float64:
        torch.testing.assert_close(cost, want, rtol=1e-12, atol=1e-12)
    else:
        assert_float32_accumulation(cost, want, products_magnitude(grad, outputs, per_sample))


def test_bad_inputs_raise_naming_the_argument():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="outputs.*non-empty"):
        edge_cost(x, [])
    with pytest.raises(ValueError, match="`grad` has shape"):
        edge_cost(torch.randn(3, 2), [x])
    with pytest.raises(TypeError, match="`grad` has dtype"):
        edge_cost(x.double(), [x])
    with pytest.raises(ValueError, match="per_sample"):
        edge_cost(torch.tensor(1.0), [torch.tensor(2.0)], per_sample=True)
