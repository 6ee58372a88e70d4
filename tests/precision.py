"""Precision references: units in the last place, float64 sums and products."""
import torch

from layouts import weight_view

HALF = [torch.float16, torch.bfloat16]
# Significand bits (with the implicit one) of each dtype.
SIGNIFICAND = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24}
FLOAT32_TOL = dict(rtol=1.3e-6, atol=1e-5)  # torch.testing's float32 defaults


def ulp(r: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s numbers at each value of ``r`` (float64)."""
    exponent = torch.frexp(r.double().abs()).exponent  # |r| in [2^(e-1), 2^e)
    spacing = torch.pow(2.0, (exponent - SIGNIFICAND[dtype]).double())
    info = torch.finfo(dtype)
    return spacing.clamp_min(info.tiny * info.eps)  # subnormals' spacing


def assert_within_one_ulp(got: torch.Tensor, reference: torch.Tensor):
    rounded = reference.to(got.dtype)
    err = (got.double() - rounded.double()).abs()
    bound = ulp(rounded, got.dtype)
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{got.dtype}: {worst:.2f} ulp from the rounded float64 reference"


def reference_sum(outputs, weights):
    ws = weight_view(weights.double(), outputs[0])
    return sum(w * o.double() for w, o in zip(ws, outputs))


def assert_sum_close(y, outputs, weights):
    """Half precision: within one ulp of the rounded float64 sum. float32: each of
    the K float32 additions rounds relative to the terms' size, not the result's."""
    if y.dtype in HALF:
        assert_within_one_ulp(y, reference_sum(outputs, weights))
    else:
        magnitude = reference_sum([o.abs() for o in outputs], weights.abs())
        bound = len(outputs) * torch.finfo(torch.float32).eps * magnitude
        assert ((y.double() - reference_sum(outputs, weights)).abs() <= bound).all()


def reference_products(grad, outputs, per_sample):
    """Σ grad ⊙ outputs[k] over everything ([K]) or over each sample ([B, K]), float64."""
    g = grad.double()
    dims = list(range(1, g.dim())) if per_sample else list(range(g.dim()))
    return torch.stack([(g * o.double()).sum(dims) for o in outputs], dim=-1)


def products_magnitude(grad, outputs, per_sample):
    """Σ |grad ⊙ outputs[k]| in the layout of :func:`reference_products`."""
    return reference_products(grad.abs(), [o.abs() for o in outputs], per_sample)


def assert_float32_accumulation(got, want, magnitude):
    """``got`` is a float32 sum of float32 products: off from the float64 ``want`` by
    at most twice float32's epsilon times the sum of the terms' sizes (one rounding
    per product, one per addition at most; a float16 or bfloat16 accumulation would
    be off by ~10^3 times more)."""
    bound = 2 * torch.finfo(torch.float32).eps * magnitude + torch.finfo(torch.float32).tiny
    excess = ((got.double() - want).abs() / bound).max().item() if got.numel() else 0.0
    assert excess <= 1.0, f"{excess:.2f}x float32's rounding of the terms"
