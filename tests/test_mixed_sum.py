"""mixed_sum and its fused backward against eager float64 references."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

import pynas
from pynas.functional import mixed_sum

from conftest import DEVICES, DTYPES, TOL
from layouts import LAYOUTS, make, weight_view
from precision import assert_float32_accumulation, assert_sum_close, products_magnitude


def reference(outputs, weights):
    ws = weight_view(weights.double(), outputs[0])
    return sum(w * o.double() for w, o in zip(ws, outputs))


def reference_backward(grad, outputs, weights):
    ws = weight_view(weights.double(), outputs[0])
    g = grad.double()
    grad_outputs = [w * g for w in ws]
    dims = list(range(1, g.dim())) if weights.dim() == 2 else list(range(g.dim()))
    grad_weights = torch.stack([(g * o.double()).sum(dims) if dims else g * o.double() for o in outputs], dim=-1)
    return grad_outputs, grad_weights


def make_weights(K, per_sample, B, device, dtype=torch.float32):
    shape = (B, K) if per_sample else (K,)
    return torch.randn(shape, dtype=torch.float64).to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", [1, 2, 7, 8, 35, 64, 65, 130])
@pytest.mark.parametrize("per_sample", [False, True])
def test_forward_matches_eager(device, dtype, K, per_sample):
    outputs = [make((4, 6, 5, 3), "contiguous", dtype, device) for _ in range(K)]
    weights = make_weights(K, per_sample, 4, device)
    y = mixed_sum(outputs, weights)
    assert y.dtype == dtype and y.shape == outputs[0].shape
    torch.testing.assert_close(y.double(), reference(outputs, weights), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_layouts_match_eager(device, layout, per_sample):
    outputs = [make((3, 8, 5, 7), layout, torch.float32, device) for _ in range(5)]
    weights = make_weights(5, per_sample, 3, device)
    y = mixed_sum(outputs, weights)
    torch.testing.assert_close(y.double(), reference(outputs, weights), **TOL[torch.float32])
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_layouts_match_eager(device):
    # Each output in a different layout: all are brought to outputs[0]'s.
    outputs = [make((3, 8, 5, 7), layout, torch.float64, device) for layout in LAYOUTS]
    weights = make_weights(len(LAYOUTS), True, 3, device, torch.float64)
    torch.testing.assert_close(mixed_sum(outputs, weights), reference(outputs, weights))


def _copies(fn, shape):
    """Copies of whole feature maps (tensors of `shape`) made while running fn."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    names = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy")
    return [e.name for e in prof.events() if e.name in names and list(shape) in e.input_shapes]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_dense_layouts_are_read_in_place(layout, per_sample):
    outputs = [make((4, 8, 6, 6), layout, torch.float32, "cpu").requires_grad_() for _ in range(8)]
    weights = make_weights(8, per_sample, 4, "cpu").requires_grad_()
    grad = make((4, 8, 6, 6), layout, torch.float32, "cpu")
    assert _copies(lambda: mixed_sum(outputs, weights).backward(grad), grad.shape) == []
    # The probe does see copies when an input is not dense.
    outputs[3] = make((4, 8, 6, 6), "sliced", torch.float32, "cpu")
    assert "aten::copy_" in _copies(lambda: mixed_sum(outputs, weights), grad.shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("K", [1, 8, 70])
def test_backward_matches_eager(device, dtype, per_sample, K):
    outputs = [make((4, 3, 5, 6), "contiguous", dtype, device) for _ in range(K)]
    weights = make_weights(K, per_sample, 4, device, torch.float64 if dtype == torch.float64 else torch.float32)
    grad = make((4, 3, 5, 6), "contiguous", dtype, device)
    grad_outputs, grad_weights = torch.ops.pynas.mixed_sum_backward(grad, outputs, weights, True, True)
    ref_outputs, ref_weights = reference_backward(grad, outputs, weights)
    for got, want in zip(grad_outputs, ref_outputs):
        torch.testing.assert_close(got.double(), want, **TOL[dtype])
    # Accumulated in float32 (float64 for float64) whatever the outputs' precision.
    assert grad_weights.dtype == weights.dtype and grad_weights.shape == weights.shape
    if dtype == torch.float64:
        torch.testing.assert_close(grad_weights, ref_weights, rtol=1e-12, atol=1e-12)
    else:
        assert_float32_accumulation(grad_weights, ref_weights, products_magnitude(grad, outputs, weights.dim() == 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_autograd_matches_eager_autograd(device, per_sample):
    outputs = [make((3, 4, 5, 5), "channels_last", torch.float64, device).requires_grad_() for _ in range(7)]
    weights = make_weights(7, per_sample, 3, device, torch.float64).softmax(-1).requires_grad_()
    grad = make((3, 4, 5, 5), "contiguous", torch.float64, device)
    got = torch.autograd.grad(mixed_sum(outputs, weights), [*outputs, weights], grad)
    want = torch.autograd.grad(reference(outputs, weights), [*outputs, weights], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_needed_gradients(device):
    outputs = [make((2, 3), "contiguous", torch.float64, device) for _ in range(3)]
    weights = make_weights(3, False, 2, device, torch.float64).requires_grad_()
    (gw,) = torch.autograd.grad(mixed_sum(outputs, weights).sum(), [weights])
    torch.testing.assert_close(gw, torch.stack([o.sum() for o in outputs]))
    outputs[1].requires_grad_()
    weights.requires_grad_(False)
    (go,) = torch.autograd.grad(mixed_sum(outputs, weights).sum(), [outputs[1]])
    torch.testing.assert_close(go, torch.full_like(go, weights[1].item()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck(device, per_sample):
    outputs = [make((2, 3, 4), "contiguous", torch.float64, device).requires_grad_() for _ in range(4)]
    weights = make_weights(4, per_sample, 2, device, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda w, *o: mixed_sum(o, w), (weights, *outputs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_double_backward(device, per_sample):
    outputs = [make((2, 3, 4), "contiguous", torch.float64, device).requires_grad_() for _ in range(3)]
    weights = make_weights(3, per_sample, 2, device, torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda w, *o: mixed_sum(o, w), (weights, *outputs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, per_sample, requires_grad):
    outputs = [make((2, 3, 4, 4), "contiguous", torch.float32, device).requires_grad_(requires_grad) for _ in range(3)]
    weights = make_weights(3, per_sample, 2, device).requires_grad_(requires_grad)
    opcheck(torch.ops.pynas.mixed_sum.default, (outputs, weights))
    grad = make((2, 3, 4, 4), "channels_last", torch.float32, device).requires_grad_(requires_grad)
    # Both gradients, and each alone (the other returned undefined).
    for outputs_grad, weights_grad in ((True, True), (False, True), (True, False)):
        opcheck(torch.ops.pynas.mixed_sum_backward.default, (grad, outputs, weights, outputs_grad, weights_grad))
    backward = torch.ops.pynas.mixed_sum_backward.default
    d_outputs, d_weights = backward(grad, outputs, weights, True, True)
    only_outputs, only_weights = backward(grad, outputs, weights, True, False)[0], backward(grad, outputs, weights, False, True)[1]
    assert all(torch.equal(a, b) for a, b in zip(only_outputs, d_outputs)) and torch.equal(only_weights, d_weights)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_size(device):
    outputs = [torch.empty(0, 3, 4, device=device, requires_grad=True) for _ in range(3)]
    for weights in (torch.ones(3, device=device, requires_grad=True), torch.ones(0, 3, device=device, requires_grad=True)):
        y = mixed_sum(outputs, weights)
        assert y.shape == (0, 3, 4)
        (gw,) = torch.autograd.grad(y.sum(), [weights])
        assert torch.equal(gw, torch.zeros_like(weights))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    K=st.integers(1, 70),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    per_sample=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_forward_backward(device, shape, K, dtype, layout, per_sample, seed):
    gen = torch.Generator().manual_seed(seed)
    outputs = [make(shape, layout, dtype, device, gen) for _ in range(K)]
    weights = torch.randn((shape[0], K) if per_sample else (K,), generator=gen).to(device)
    y = mixed_sum(outputs, weights)
    if dtype == torch.float64:
        torch.testing.assert_close(y, reference(outputs, weights), **TOL[dtype])
    else:
        assert_sum_close(y, outputs, weights)
    grad = make(shape, "contiguous", dtype, device, gen)
    grad_outputs, grad_weights = torch.ops.pynas.mixed_sum_backward(grad, outputs, weights, True, True)
    ref_outputs, ref_weights = reference_backward(grad, outputs, weights)
    for got, want in zip(grad_outputs, ref_outputs):
        torch.testing.assert_close(got.double(), want, **TOL[dtype])
    # float32 weights: their gradients accumulate in float32 whatever the outputs' dtype.
    assert_float32_accumulation(grad_weights, ref_weights, products_magnitude(grad, outputs, per_sample))


def test_bad_inputs_raise_naming_the_argument():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="outputs.*non-empty"):
        mixed_sum([], torch.ones(0))
    with pytest.raises(ValueError, match=r"outputs\[1\] has shape"):
        mixed_sum([x, torch.randn(2, 4)], torch.ones(2))
    with pytest.raises(TypeError, match=r"outputs\[1\] has dtype"):
        mixed_sum([x, x.double()], torch.ones(2))
    with pytest.raises(TypeError, match="outputs.*float32"):
        mixed_sum([torch.ones(2, 3, dtype=torch.int64)], torch.ones(1))
    with pytest.raises(TypeError, match="`weights` must be a floating"):
        mixed_sum([x], torch.ones(1, dtype=torch.int64))
    for bad in (torch.ones(3), torch.ones(3, 2), torch.ones(2, 1), torch.ones(2, 2, 2), torch.ones(())):
        with pytest.raises(ValueError, match="`weights` has shape"):
            mixed_sum([x, x], bad)
    with pytest.raises(ValueError, match="`weights` has shape"):
        mixed_sum([torch.tensor(1.0)], torch.ones(1, 1))
    with pytest.raises(ValueError, match="`grad` has shape"):
        torch.ops.pynas.mixed_sum_backward(torch.randn(3, 3), [x], torch.ones(1), True, True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not pynas.cuda_kernels_available(), reason="needs a GPU")
def test_device_mismatch_raises():
    x = torch.randn(2, 3, device="cuda")
    with pytest.raises(ValueError, match=r"outputs\[1\] is on"):
        mixed_sum([x, x.cpu()], torch.ones(2, device="cuda"))
    with pytest.raises(ValueError, match="`weights` is on"):
        mixed_sum([x, x], torch.ones(2))
