"""The fused ops' precision and every kernel path, on each device present.

- Precision: half-precision results within one unit in the last place (ulp) of
  the float64 reference rounded to their dtype, float32 reductions (α gradients,
  edge costs) at float32 tolerances whatever the input dtype.
- Layouts: opcheck over dtypes x layouts, so the fake kernels' dtype and layout
  rules are compared with the real kernels'.
- Paths the small shapes elsewhere never reach on a GPU: unaligned dense inputs
  (the non-vectorised loop), a block looping over several tiles of its row, more
  rows than a grid dimension holds (65,535), -inf logits, device mismatches.
  On CPU the same cases are checked against the same references.
"""
import pytest
import torch
from scipy import stats
from torch.library import opcheck

from pynas.functional import edge_cost, gumbel_softmax, mixed_sum

from conftest import CUDA, DEVICES, DTYPES
from layouts import LAYOUTS, make, weight_view
from precision import (HALF, assert_float32_accumulation, assert_sum_close, assert_within_one_ulp, products_magnitude,
                       reference_products, ulp)

# -- precision ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [*HALF, torch.float32], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)  # half precision in non-contiguous layouts too
@pytest.mark.parametrize("per_sample", [False, True])
def test_forward_within_one_ulp_of_the_rounded_float64_sum(device, dtype, layout, per_sample):
    gen = torch.Generator().manual_seed(0)
    outputs = [make((4, 16, 5, 6), layout, dtype, device, gen) for _ in range(9)]
    weights = torch.randn((4, 9) if per_sample else (9,), generator=gen).to(device)
    assert_sum_close(mixed_sum(outputs, weights), outputs, weights)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_sample", [False, True])
def test_weight_gradients_and_costs_at_float32_tolerance_for_every_input_dtype(device, dtype, per_sample):
    gen = torch.Generator().manual_seed(1)
    outputs = [make((4, 16, 6, 6), "channels_last", dtype, device, gen) for _ in range(7)]
    grad = make((4, 16, 6, 6), "contiguous", dtype, device, gen)
    weight_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weights = torch.randn((4, 7) if per_sample else (7,), generator=gen, dtype=weight_dtype).to(device)
    want = reference_products(grad, outputs, per_sample)
    grad_outputs, grad_weights = torch.ops.pynas.mixed_sum_backward(grad, outputs, weights, True, True)
    cost = edge_cost(grad, outputs, per_sample)
    assert grad_weights.dtype == weight_dtype and cost.dtype == weight_dtype
    for got in (grad_weights, cost):
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        else:
            assert_float32_accumulation(got, want, products_magnitude(grad, outputs, per_sample))
    # The outputs' gradients w·grad are one product each: one rounding.
    for got, w in zip(grad_outputs, weight_view(weights.double(), grad)):
        if dtype == torch.float64:
            torch.testing.assert_close(got, w * grad.double(), rtol=1e-15, atol=0)
        else:
            assert_within_one_ulp(got, w * grad.double())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gumbel_softmax_backward_within_one_ulp(device, dtype):
    gen = torch.Generator().manual_seed(2)
    soft = torch.rand(64, 8, generator=gen, dtype=torch.float64).softmax(-1).to(dtype).to(device)
    grad = torch.randn(64, 8, generator=gen, dtype=torch.float64).to(dtype).to(device)
    tau = 0.7
    got = torch.ops.pynas.gumbel_softmax_backward(grad, soft, tau, -1)
    s, g = soft.double(), grad.double()
    want = s * (g - (g * s).sum(-1, keepdim=True)) / tau
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
    else:  # computed in float32 from the rounded inputs: at most one rounding of the result
        rounded = want.to(dtype).double()
        err = (got.double() - rounded).abs()
        # Cancellation in g - Σ g·s loses float32 digits relative to |s·g|, not to the result.
        bound = torch.maximum(ulp(want.to(dtype), dtype), 4 * torch.finfo(torch.float32).eps * (s * g.abs()).sum(-1, keepdim=True) * s / tau)
        assert (err <= bound).all()


# -- opcheck over dtypes x layouts -----------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_kernels_follow_the_real_ones_over_dtypes_and_layouts(device, dtype, layout):
    # The schema and fake-tensor checks of opcheck (autograd and AOT dispatch are
    # checked, once per op, in each op's own tests).
    utils = ("test_schema", "test_faketensor")
    gen = torch.Generator().manual_seed(3)
    shape = (2, 3, 4, 5)
    # outputs[0] (whose layout the result follows) in `layout`, the others in the rest.
    others = [l for l in LAYOUTS if l != layout][:2]
    outputs = [make(shape, l, dtype, device, gen) for l in (layout, *others)]
    weights = torch.randn(2, 3, generator=gen).to(device)
    grad = make(shape, layout, dtype, device, gen)
    opcheck(torch.ops.pynas.mixed_sum.default, (outputs, weights), test_utils=utils)
    opcheck(torch.ops.pynas.mixed_sum_backward.default, (grad, outputs, weights, True, True), test_utils=utils)
    opcheck(torch.ops.pynas.edge_cost.default, (grad, outputs, True), test_utils=utils)
    soft = make((6, 5), "transposed" if layout == "transposed" else "contiguous", dtype, device, gen).softmax(-1)
    opcheck(torch.ops.pynas.gumbel_softmax_backward.default, (make((6, 5), layout, dtype, device, gen), soft, 0.5, 0),
            test_utils=utils)


# -- kernel paths ----------------------------------------------------------------------


def unaligned(shape, dtype, device, gen):
    """A dense tensor whose data starts one element past an aligned address."""
    n = torch.Size(shape).numel()
    flat = torch.randn(n + 1, generator=gen, dtype=torch.float64).to(dtype).to(device)
    t = flat[1:].view(shape)
    assert t.is_contiguous() and t.data_ptr() % 16 != 0
    return t


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("per_sample", [False, True])
def test_unaligned_dense_inputs(device, dtype, per_sample):
    gen = torch.Generator().manual_seed(4)
    shape = (3, 8, 9, 7)
    outputs = [unaligned(shape, dtype, device, gen) for _ in range(5)]
    grad = unaligned(shape, dtype, device, gen)
    weights = torch.randn((3, 5) if per_sample else (5,), generator=gen).to(device)
    assert_sum_close(mixed_sum(outputs, weights), outputs, weights)
    _, grad_weights = torch.ops.pynas.mixed_sum_backward(grad, outputs, weights, True, True)
    want, magnitude = reference_products(grad, outputs, per_sample), products_magnitude(grad, outputs, per_sample)
    assert_float32_accumulation(grad_weights, want, magnitude)
    assert_float32_accumulation(edge_cost(grad, outputs, per_sample), want, magnitude)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_longer_than_one_tile_loop_per_block(device):
    # One row ([K] weights) of 5.2 M float32 elements: 1.3 M 4-wide vectors, more than
    # one grid of the forward covers (32 blocks of 256 threads per multiprocessor: 1.08 M
    # on a 132-multiprocessor GPU), and 5,120 tiles of 256 vectors for the reduction's
    # 16 blocks per multiprocessor (2,112), so its blocks loop over tiles.
    gen = torch.Generator().manual_seed(5)
    shape = (2 ** 22 + 2 ** 20,)
    outputs = [make(shape, "contiguous", torch.float32, device, gen) for _ in range(2)]
    grad = make(shape, "contiguous", torch.float32, device, gen)
    weights = torch.tensor([0.25, -1.5], device=device)
    assert_sum_close(mixed_sum(outputs, weights), outputs, weights)
    _, grad_weights = torch.ops.pynas.mixed_sum_backward(grad, outputs, weights, False, True)
    assert_float32_accumulation(grad_weights, reference_products(grad, outputs, False),
                                products_magnitude(grad, outputs, False))


@pytest.mark.parametrize("device", DEVICES)
def test_more_rows_than_a_grid_dimension(device):
    gen = torch.Generator().manual_seed(6)
    B = 70_000  # > 65,535: the per-row reduction's grid loops over rows
    outputs = [make((B, 3), "contiguous", torch.float32, device, gen) for _ in range(3)]
    grad = make((B, 3), "contiguous", torch.float32, device, gen)
    weights = torch.randn(B, 3, generator=gen).to(device)
    y = mixed_sum(outputs, weights)
    assert_sum_close(y, outputs, weights)
    _, grad_weights = torch.ops.pynas.mixed_sum_backward(grad, outputs, weights, False, True)
    want, magnitude = reference_products(grad, outputs, True), products_magnitude(grad, outputs, True)
    assert_float32_accumulation(grad_weights, want, magnitude)
    assert_float32_accumulation(edge_cost(grad, outputs, True), want, magnitude)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and pynas' CUDA kernels")
def test_gumbel_rows_beyond_one_grid_of_row_blocks():
    # 65,535 blocks of 128 rows: more rows than that makes each thread loop.
    rows = 65_535 * 128 + 1000
    logits = torch.zeros(rows, 2, device="cuda")
    logits[:, 1] = -30.0  # p(column 1) = e^-30: every row picks column 0
    gen = torch.Generator(device="cuda").manual_seed(0)
    sample = gumbel_softmax(logits, tau=1.0, hard=True, generator=gen)
    assert torch.equal(sample.sum(-1), torch.ones(rows, device="cuda"))
    assert sample[:, 0].sum().item() >= rows - 10  # ~rows·e^-30 expected misses
    soft = gumbel_softmax(logits, tau=1.0, generator=gen)
    torch.testing.assert_close(soft[-1000:].sum(-1), torch.ones(1000, device="cuda"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hard", [False, True])
def test_minus_infinity_logits_are_never_drawn(device, hard):
    inf = float("inf")
    logits = torch.tensor([0.5, -inf, 1.0, -inf, -0.3], device=device)
    n = 40_000
    batch = logits.expand(n, 5).clone().requires_grad_()
    y = gumbel_softmax(batch, tau=0.8, hard=hard, generator=torch.Generator(device=device).manual_seed(9))
    assert torch.isfinite(y).all() and (y[:, [1, 3]] == 0).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(n, device=device))
    # Gumbel-max over the finite logits: P(argmax = i) = their softmax.
    observed = torch.bincount(y.argmax(-1), minlength=5).cpu().double()
    finite = torch.tensor([0, 2, 4])
    expected = logits.double().cpu()[finite].softmax(-1) * n
    assert stats.chisquare(observed[finite].numpy(), expected.numpy()).pvalue > 1e-3
    (g,) = torch.autograd.grad((y * torch.arange(5.0, device=device)).sum(), batch)
    assert torch.isfinite(g).all() and (g[:, [1, 3]] == 0).all()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and pynas' CUDA kernels")
def test_every_op_and_backward_refuses_mixed_devices():
    x = torch.randn(2, 3, device="cuda")
    w = torch.ones(2, device="cuda")
    backward = torch.ops.pynas.mixed_sum_backward
    with pytest.raises(ValueError, match=r"outputs\[1\] is on"):
        mixed_sum([x, x.cpu()], w)
    with pytest.raises(ValueError, match="`weights` is on"):
        mixed_sum([x, x], w.cpu())
    with pytest.raises(ValueError, match="`grad` is on"):
        backward(x.cpu(), [x, x], w, True, True)
    with pytest.raises(ValueError, match=r"outputs\[1\] is on"):
        backward(x, [x, x.cpu()], w, True, True)
    with pytest.raises(ValueError, match="`weights` is on"):
        backward(x, [x, x], w.cpu(), False, True)
    with pytest.raises(ValueError, match="is on"):
        edge_cost(x.cpu(), [x, x])
    with pytest.raises(ValueError, match=r"outputs\[1\] is on"):
        edge_cost(x, [x, x.cpu()])
    with pytest.raises(ValueError, match="`grad` is on"):
        torch.ops.pynas.gumbel_softmax_backward(x.cpu(), x.softmax(-1), 1.0, -1)
    with pytest.raises((RuntimeError, ValueError), match="[Gg]enerator|device"):
        gumbel_softmax(x, generator=torch.Generator())  # a CPU generator for CUDA logits
