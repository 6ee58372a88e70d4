"""The fused ops of pynas as Python functions, with their fake kernels (for
torch.compile) and autograd, both registered through ``torch.library``.

- :func:`mixed_sum`      y = Σ_k w[k]·outputs[k]          (DARTS' mixed operation)
- :func:`gumbel_softmax` softmax((logits + G)/τ)           (SNAS Eq. 5; GDAS when hard)
- :func:`edge_cost`      C_k = Σ grad ⊙ outputs[k]          (wiring-evolution Eq. 4-5)

Every backward is made of pynas ops, so the whole graph stays traceable.
"""
import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the schemas and kernels)
from .errors import quoted

_ops = torch.ops.pynas


def mixed_sum(outputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """Weighted sum ``Σ_k weights[..., k] · outputs[k]`` in one fused pass.

    Args:
        outputs: K tensors of one shape, dtype and device (float32/64, float16,
            bfloat16), e.g. the candidate ops of an edge, or every (edge, op)
            output feeding a node.
        weights: ``[K]`` (one architecture) or ``[B, K]`` (a row per sample,
            ``B = outputs[0].size(0)``); any floating dtype.

    Accumulates in float32 (float64 for float64 inputs). Differentiable in both
    arguments; the backward is one fused pass (:func:`mixed_sum_backward`).
    """
    return _ops.mixed_sum.default(list(outputs), weights)


def edge_cost(grad: Tensor, outputs: Sequence[Tensor], per_sample: bool = False) -> Tensor:
    """``C_k = Σ grad ⊙ outputs[k]`` over all elements (``[K]``) or over each
    sample's elements (``[B, K]`` with ``per_sample=True``), in one pass over
    ``grad``. Returned in float32 (float64 for float64 inputs); deterministic on CPU.
    """
    return _ops.edge_cost.default(grad, list(outputs), per_sample)


def gumbel_softmax(
    logits: Tensor,
    tau: float = 1.0,
    hard: bool = False,
    dim: int = -1,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """A Gumbel-softmax sample along ``dim``, as ``torch.nn.functional.gumbel_softmax``.

    ``soft = softmax((logits + G) / tau)`` with ``G = -log(-log U)``, ``U ~ U(0, 1)``
    (kept strictly inside (0, 1), so finite logits give finite samples). With
    ``hard=True`` the result is the exact one-hot argmax of ``soft`` and its
    gradient is that of ``soft`` (straight-through). A seeded ``generator``
    reproduces the sample on the same device.
    """
    if isinstance(tau, Tensor) and tau.numel() == 1 and tau.dtype.is_floating_point:
        tau = tau.item()
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"gumbel_softmax: `tau` must be a number, got {quoted(tau)} ({type(tau).__name__})")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"gumbel_softmax: `dim` must be an integer, got {quoted(dim)} ({type(dim).__name__})")
    sample, _ = _ops.gumbel_softmax.default(logits, float(tau), bool(hard), int(dim), generator)
    return sample


# ---------------------------------------------------------------------------
# Argument checks of the fake (meta) kernels: the same checks, in the same order
# and with the same messages and exception types, as csrc/common/checks.cpp and
# csrc/common/gumbel.cpp. A call that mixes a meta tensor with real ones is
# dispatched to the fake kernel, so without these it would return garbage.

_SCALAR_TYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short", torch.int32: "Int", torch.int64: "Long",
    torch.bool: "Bool", torch.complex32: "ComplexHalf", torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}
_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _st(dtype: torch.dtype) -> str:
    """A dtype as c10 prints a ScalarType."""
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _sizes(t: Tensor) -> str:
    """A shape as c10 prints an IntArrayRef."""
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _num(x: float) -> str:
    """A double as a C++ ostream prints it."""
    return f"{x:g}"


def _fail(cls, message: str):
    raise cls(message)


def check_outputs(op: str, outputs) -> None:
    if len(outputs) == 0:
        _fail(ValueError, f"{op}: `outputs` must be a non-empty list of tensors")
    ref = outputs[0]
    if ref.dtype not in _SUPPORTED:
        _fail(TypeError, f"{op}: `outputs` must be float32, float64, float16 or bfloat16, got {_st(ref.dtype)}")
    for k, t in enumerate(outputs[1:], start=1):
        if t.device != ref.device:
            _fail(ValueError, f"{op}: outputs[{k}] is on {t.device} but outputs[0] is on {ref.device}")
        if t.dtype != ref.dtype:
            _fail(TypeError, f"{op}: outputs[{k}] has dtype {_st(t.dtype)} but outputs[0] has {_st(ref.dtype)}")
        if t.shape != ref.shape:
            _fail(ValueError, f"{op}: outputs[{k}] has shape {_sizes(t)} but outputs[0] has shape {_sizes(ref)}")


def check_weights(op: str, name: str, weights: Tensor, ref: Tensor, K: int) -> int:
    if weights.dtype not in _SUPPORTED:
        _fail(TypeError, f"{op}: `{name}` must be a floating tensor, got {_st(weights.dtype)}")
    if weights.device != ref.device:
        _fail(ValueError, f"{op}: `{name}` is on {weights.device} but the outputs are on {ref.device}")
    if weights.dim() == 1:
        if weights.size(0) != K:
            _fail(ValueError, f"{op}: `{name}` has shape {_sizes(weights)} but there are {K} outputs "
                              f"(expected [{K}] or [B, {K}])")
        return 1
    if not (weights.dim() == 2 and ref.dim() >= 1 and weights.size(0) == ref.size(0) and weights.size(1) == K):
        B = ref.size(0) if ref.dim() >= 1 else -1
        _fail(ValueError, f"{op}: `{name}` has shape {_sizes(weights)}; expected [K] = [{K}] or [B, K] = "
                          f"[{B}, {K}] for outputs of shape {_sizes(ref)}")
    return weights.size(0)


def check_like(op: str, name: str, t: Tensor, ref: Tensor) -> None:
    if t.device != ref.device:
        _fail(ValueError, f"{op}: `{name}` is on {t.device} but the outputs are on {ref.device}")
    if t.dtype != ref.dtype:
        _fail(TypeError, f"{op}: `{name}` has dtype {_st(t.dtype)} but the outputs have {_st(ref.dtype)}")
    if t.shape != ref.shape:
        _fail(ValueError, f"{op}: `{name}` has shape {_sizes(t)} but the outputs have shape {_sizes(ref)}")


def _check_floating(op: str, name: str, t: Tensor) -> None:
    if t.dtype not in _SUPPORTED:
        _fail(TypeError, f"{op}: `{name}` must be float32, float64, float16 or bfloat16, got {_st(t.dtype)}")


def _check_tau(op: str, tau: float) -> None:
    if not (math.isfinite(tau) and tau > 0):
        _fail(ValueError, f"{op}: `tau` must be a finite positive number, got {_num(tau)}")


def _check_dim(op: str, name: str, t: Tensor, dim: int) -> None:
    ndim = max(t.dim(), 1)
    if not -ndim <= dim < ndim:
        _fail(IndexError, f"{op}: `dim` must be in [{-ndim}, {ndim - 1}] for `{name}` of shape {_sizes(t)}, got {dim}")


def check_gumbel(logits: Tensor, tau: float, dim: int) -> None:
    op = "gumbel_softmax"
    _check_floating(op, "logits", logits)
    if logits.numel() == 0:
        _fail(ValueError, f"{op}: `logits` must not be empty, got shape {_sizes(logits)}")
    _check_tau(op, tau)
    _check_dim(op, "logits", logits, dim)


def check_gumbel_backward(grad: Tensor, soft: Tensor, tau: float, dim: int) -> None:
    op = "gumbel_softmax_backward"
    _check_floating(op, "soft", soft)
    if grad.dtype != soft.dtype:
        _fail(TypeError, f"{op}: `grad` has dtype {_st(grad.dtype)} but `soft` has {_st(soft.dtype)}")
    if grad.shape != soft.shape:
        _fail(ValueError, f"{op}: `grad` has shape {_sizes(grad)} but `soft` has shape {_sizes(soft)}")
    if grad.device != soft.device:
        _fail(ValueError, f"{op}: `grad` is on {grad.device} but `soft` is on {soft.device}")
    _check_tau(op, tau)
    _check_dim(op, "soft", soft, dim)


# ---------------------------------------------------------------------------
# Fake kernels: output metadata only, after the checks above.


def _is_dense(t: Tensor) -> bool:
    return torch._prims_common.is_non_overlapping_and_dense_or_false(t)


def _is_batch_outer(t: Tensor) -> bool:
    return t.dim() == 0 or t.size(0) <= 1 or t.numel() == 0 or t.stride(0) * t.size(0) == t.numel()


def _empty_in_common_layout(ref: Tensor, batch_outer: bool, dtype=None) -> Tensor:
    """An empty tensor in the layout the kernels use: ref's when it is dense
    (and batch-outer if required), else contiguous."""
    dtype = ref.dtype if dtype is None else dtype
    if _is_dense(ref) and (not batch_outer or _is_batch_outer(ref)):
        return torch.empty_strided(ref.shape, ref.stride(), dtype=dtype, device=ref.device)
    return torch.empty(ref.shape, dtype=dtype, device=ref.device)


def _rows(weights: Tensor) -> int:
    return weights.size(0) if weights.dim() == 2 else 1


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("pynas::mixed_sum")
def _mixed_sum_fake(outputs, weights):
    check_outputs("mixed_sum", outputs)
    check_weights("mixed_sum", "weights", weights, outputs[0], len(outputs))
    return _empty_in_common_layout(outputs[0], _rows(weights) > 1)


@torch.library.register_fake("pynas::mixed_sum_backward")
def _mixed_sum_backward_fake(grad, outputs, weights, outputs_grad, weights_grad):
    op = "mixed_sum_backward"
    check_outputs(op, outputs)
    check_like(op, "grad", grad, outputs[0])
    check_weights(op, "weights", weights, outputs[0], len(outputs))
    # The kernel lays grad out first, then writes the output grads in its layout.
    batch_outer = _rows(weights) > 1
    grad_outputs = [_empty_in_common_layout(grad, batch_outer) for _ in outputs] if outputs_grad else []
    grad_weights = torch.empty_like(weights, memory_format=torch.contiguous_format) if weights_grad else weights.new_empty(0)
    return grad_outputs, grad_weights


@torch.library.register_fake("pynas::edge_cost")
def _edge_cost_fake(grad, outputs, per_sample):
    check_outputs("edge_cost", outputs)
    check_like("edge_cost", "grad", grad, outputs[0])
    if per_sample and grad.dim() < 1:
        _fail(ValueError, "edge_cost: per_sample=True needs a batch dimension, but `grad` is 0-d")
    shape = (grad.size(0), len(outputs)) if per_sample else (len(outputs),)
    return grad.new_empty(shape, dtype=_accumulate_dtype(grad.dtype))


@torch.library.register_fake("pynas::gumbel_softmax")
def _gumbel_softmax_fake(logits, tau, hard, dim, generator):
    check_gumbel(logits, tau, dim)
    make = lambda: torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    return make(), make()


@torch.library.register_fake("pynas::gumbel_softmax_backward")
def _gumbel_softmax_backward_fake(grad, soft, tau, dim):
    check_gumbel_backward(grad, soft, tau, dim)
    return torch.empty(soft.shape, dtype=soft.dtype, device=soft.device)


# ---------------------------------------------------------------------------
# Autograd. The forward ops have C++ autograd kernels (csrc/autograd: a Python
# autograd.Function per call would cost more than a small kernel). Their
# backward passes are pynas ops, made differentiable here (double backward),
# so the graph stays traceable and never silently wrong.


def _mixed_sum_backward_setup(ctx, inputs, output):
    grad, outputs, weights, outputs_grad, weights_grad = inputs
    ctx.outputs_grad, ctx.weights_grad = outputs_grad, weights_grad
    ctx.save_for_backward(grad, *outputs, weights)


def _mixed_sum_double_backward(ctx, grad_grad_outputs, grad_grad_weights):
    # gx_k = w_k·g and gw_k = Σ g⊙o_k are bilinear, so their derivatives are
    # again weighted sums, scalings and edge costs.
    grad, *outputs, weights = ctx.saved_tensors
    per_sample = weights.dim() == 2
    ggx = [torch.zeros_like(grad) if g is None else g for g in grad_grad_outputs] if ctx.outputs_grad else []
    use_ggx = bool(ggx) and any(g is not None for g in grad_grad_outputs)
    use_ggw = ctx.weights_grad and grad_grad_weights is not None
    d_grad = d_weights = None
    d_outputs = [None] * len(outputs)
    if use_ggx:
        d_grad = _ops.mixed_sum.default(ggx, weights)
        d_weights = _ops.edge_cost.default(grad, ggx, per_sample).to(weights.dtype)
    if use_ggw:
        from_gw = _ops.mixed_sum.default(outputs, grad_grad_weights)
        d_grad = from_gw if d_grad is None else d_grad + from_gw
        d_outputs, _ = _ops.mixed_sum_backward.default(grad, outputs, grad_grad_weights, True, False)
    return d_grad, d_outputs, d_weights, None, None


torch.library.register_autograd(
    "pynas::mixed_sum_backward", _mixed_sum_double_backward, setup_context=_mixed_sum_backward_setup
)


def _gumbel_softmax_backward_setup(ctx, inputs, output):
    grad, soft, tau, dim = inputs
    ctx.tau, ctx.dim = tau, dim
    ctx.save_for_backward(grad, soft)


def _gumbel_softmax_double_backward(ctx, gg):
    # out = s⊙(g − ⟨g, s⟩)/τ: linear in g (a symmetric Jacobian, so the same op),
    # and in s: ∂/∂s = [gg⊙(g − ⟨g, s⟩) − g·⟨gg, s⟩]/τ.
    grad, soft = ctx.saved_tensors
    tau, dim = ctx.tau, ctx.dim
    d_grad = _ops.gumbel_softmax_backward.default(gg, soft, tau, dim) if ctx.needs_input_grad[0] else None
    d_soft = None
    if ctx.needs_input_grad[1]:
        g_dot_s = (grad * soft).sum(dim, keepdim=True)
        gg_dot_s = (gg * soft).sum(dim, keepdim=True)
        numerator = gg * (grad - g_dot_s) - grad * gg_dot_s
        # As the first backward: a zero numerator gives 0 however small tau is.
        d_soft = torch.where(numerator == 0, torch.zeros_like(numerator), numerator.double() / tau).to(numerator.dtype)
    return d_grad, d_soft, None, None


torch.library.register_autograd(
    "pynas::gumbel_softmax_backward", _gumbel_softmax_double_backward, setup_context=_gumbel_softmax_backward_setup
)
