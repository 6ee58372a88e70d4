"""The fused ops of pynas as Python functions, with their fake kernels (for
torch.compile) and autograd, both registered through ``torch.library``.

- :func:`mixed_sum`      y = Σ_k w[k]·outputs[k]          (DARTS' mixed operation)
- :func:`gumbel_softmax` softmax((logits + G)/τ)           (SNAS Eq. 5; GDAS when hard)
- :func:`edge_cost`      C_k = Σ grad ⊙ outputs[k]          (wiring-evolution Eq. 4-5)

Every backward is made of pynas ops, so the whole graph stays traceable.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the schemas and kernels)

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
    sample, _ = _ops.gumbel_softmax.default(logits, float(tau), bool(hard), int(dim), generator)
    return sample


# ---------------------------------------------------------------------------
# Fake kernels: output metadata only, mirroring csrc/common/checks.cpp.


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
    torch._check(len(outputs) > 0, lambda: "mixed_sum: `outputs` must be a non-empty list of tensors")
    return _empty_in_common_layout(outputs[0], _rows(weights) > 1)


@torch.library.register_fake("pynas::mixed_sum_backward")
def _mixed_sum_backward_fake(grad, outputs, weights, outputs_grad, weights_grad):
    # The kernel lays grad out first, then writes the output grads in its layout.
    batch_outer = _rows(weights) > 1
    grad_outputs = [_empty_in_common_layout(grad, batch_outer) for _ in outputs] if outputs_grad else []
    grad_weights = torch.empty_like(weights, memory_format=torch.contiguous_format) if weights_grad else weights.new_empty(0)
    return grad_outputs, grad_weights


@torch.library.register_fake("pynas::edge_cost")
def _edge_cost_fake(grad, outputs, per_sample):
    shape = (grad.size(0), len(outputs)) if per_sample else (len(outputs),)
    return grad.new_empty(shape, dtype=_accumulate_dtype(grad.dtype))


@torch.library.register_fake("pynas::gumbel_softmax")
def _gumbel_softmax_fake(logits, tau, hard, dim, generator):
    make = lambda: torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    return make(), make()


@torch.library.register_fake("pynas::gumbel_softmax_backward")
def _gumbel_softmax_backward_fake(grad, soft, tau, dim):
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
        d_soft = (gg * (grad - g_dot_s) - grad * gg_dot_s) / tau
    return d_grad, d_soft, None, None


torch.library.register_autograd(
    "pynas::gumbel_softmax_backward", _gumbel_softmax_double_backward, setup_context=_gumbel_softmax_backward_setup
)
