"""Candidate operations and their registry.

Every operation is built as ``constructor(C, stride, affine)`` and maps
``[B, C, H, W]`` to ``[B, C, H/stride, W/stride]``. Names follow DARTS
(ReLU-Conv-BN order, separable convolutions applied twice, a factorized
reduce for a stride-2 ``skip_connect``) and NAS-Bench-201.

Operations whose first layer is a ReLU expose ``relu_first = True`` and
``after_relu(x)``: a :class:`~pynas.nn.MixedOp` applies that ReLU once for all
of them (the same math with one activation in memory instead of several).

In training, the operations keep fewer tensors for backward than their plain
PyTorch forms, with the same math (see "Lean training forms" below), each form a
choice of :func:`lean_forms` with a default per device and layout, all on in a
model that saves memory (:func:`save_memory`); :func:`plain_forms` switches them
all off (the eager reference of ``pynas bench search``).
On CPU the networks compute in channels-last (:mod:`pynas.nn.layout`).
"""
import contextlib
import functools
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

OpConstructor = Callable[[int, int, bool], nn.Module]

# -- Lean training forms ----------------------------------------------------------
#
# What a DARTS edge keeps for backward, counted in activations of its input's
# size (measured: benchmarks/README.md, "Activation memory"): plain PyTorch keeps,
# per op, each conv and pool output (the next layer's input), each BatchNorm's
# input *and* output (the output for mixed_sum's α gradient), each ReLU's output
# and a max pool's int64 indices (two activations): 25 for the eight DARTS ops
# with one shared ReLU (29 with a ReLU per op and `none` run, the eager path).
# With the same math, in training:
# - `bn_output`: an affine-free BatchNorm keeps its output instead of its input
#   (its input gradient needs only y and 1/σ), which frees the conv or pool
#   output before it (6 per edge);
# - `pool_indices`: a max pool keeps no indices: backward recomputes them from
#   its input, which is kept anyway, a node of the cell (2);
# - `sep_relu`: the ReLU inside a sep_conv is recomputed from the BatchNorm
#   output it follows, which that BatchNorm keeps anyway (1 per sep_conv).
# That leaves 15: the shared ReLU output (1), per sep_conv its two depthwise
# outputs and two BN outputs (4, x2), per dil_conv its depthwise and BN outputs
# (2, x2), and each pool's BN output (1, x2), the last kept both by the BN and by
# the node's mixed_sum (the same storage). Then:
# - `pool_bn`: a pool + BN keeps only its input and 1/σ; its output is marked
#   recomputable (saves_recomputed), so the BN's backward *and* the node's
#   mixed_sum keep a recipe instead: pool and BN forward again in backward, the
#   same ops on the same input, so bitwise the same tensor (2: 13 left). One
#   recomputation serves both consumers. Normalising inside mixed_sum instead
#   (the other option considered) saves nothing more here: the lean BN already keeps
#   only its output, which mixed_sum shares; it would keep the pre-BN tensor
#   instead, the same size.
# - `depthwise`: each depthwise conv output is recomputed in backward (6: 7 left,
#   0.27x eager's activations for the whole DARTS supernet, 0.45x without it).
# The shared ReLU output (1) is left: MixedOp applies that ReLU. Weighted layers
# stay autograd's own nodes (a custom Function cannot tell which gradients a
# backward asks for, so it would compute weight gradients in the α step); what
# they keep is replaced by a recipe through saved-tensor hooks, which compose
# with the hooks below them (torch.utils.checkpoint's, a counter's).
#
# Each trade is a choice (lean_forms): True, False, or None for the default of
# the device and layout the operation runs in and of its model (default_lean):
# - CPU, channels-last (the networks' CPU default): `bn_output` and
#   `pool_indices`, 0.58x eager's activations. On a CPU the convolutions dominate
#   the step, so the fused sums save a few per cent at most and a recomputation
#   costs about that much. Measured on one thread at batch 16, each setting
#   taking turns step by step with the others in one process, each round's steps
#   drawing the same samples (benchmarks/lean_forms_cpu.py; benchmarks/README.md,
#   "Lean forms on CPU"), as the median of the rounds' speed ratios to the step
#   without any form: `bn_output` 0.99x (darts, 5 rounds; gdas, 16 rounds: 0.99x)
#   and `pool_indices` 0.98x (gdas 0.98x), and the two together 0.99x (darts,
#   8 rounds), within rounds that spread ±20 %: on. `bn_output` recomputes
#   nothing, `pool_indices` one max pool per op. Off: `sep_relu` (0.89x darts,
#   0.91x gdas, below 0.95x in 11 of 16 gdas rounds), `pool_bn` (0.88x) and
#   `depthwise` (0.87x); the former default, every form but `depthwise`, made
#   the fused darts step slower than eager (0.90x).
# - CPU, NCHW: none. There each recomputation cost more than the fused sums
#   save (oneDNN's NCHW pools are slow: `pool_indices` 0.65-0.87x the form-free
#   step, `sep_relu` 0.70-0.91x, `bn_output` 0.83-1.00x, three rounds); the
#   plain forms run what eager runs minus `none`, the per-op ReLUs and the Python
#   sums (0.84x eager's activations).
# - A model that saves memory (save_memory: `pynas search --memory-saving`, also
#   `--checkpoint-cells` and `--max-memory`, and what `pynas bench memory` then
#   measures): every form, on any device and layout: 0.27x eager's activations
#   for the whole DARTS supernet, at ~10 % of the CPU step (0.90x the form-free
#   step in channels-last).
# - CUDA (networks stay NCHW): every form, `depthwise` included: a depthwise conv
#   is memory-bound on a GPU (a few FLOPs per byte), so computing it again costs
#   about what reading its kept output would, while GPU memory is what limits the
#   batch; 0.27x eager's activations. Not yet measured on a GPU
#   (benchmarks/gpu_check.sh reports fused vs eager; lean_forms(depthwise=False)
#   switches it off).

LEAN_FORMS = ("bn_output", "pool_indices", "sep_relu", "depthwise", "pool_bn")
CPU_CHANNELS_LAST_FORMS = ("bn_output", "pool_indices")  # the CPU default in channels-last
_PLAIN = False
_CHOICES: Dict[str, Optional[bool]] = {form: None for form in LEAN_FORMS}


@contextlib.contextmanager
def lean_forms(**choices: Optional[bool]):
    """Within the block, each named memory-for-time trade is on (True), off
    (False) or the device's default (None; see :func:`default_lean`):

    - ``bn_output``: affine-free BatchNorm keeps its output, not its input;
    - ``pool_indices``: max pools recompute their indices in backward;
    - ``sep_relu``: the ReLU inside a sep_conv is recomputed in backward;
    - ``depthwise``: depthwise conv outputs are recomputed in backward;
    - ``pool_bn``: a pool's BatchNorm output (and the pool's) is recomputed in
      backward from the pool's input and the batch statistics.

    The decisions are taken in the forward pass."""
    unknown = set(choices) - set(LEAN_FORMS)
    if unknown:
        raise ValueError(f"lean_forms: unknown form(s) {sorted(unknown)}; known: {LEAN_FORMS}")
    before = dict(_CHOICES)
    _CHOICES.update({k: None if v is None else bool(v) for k, v in choices.items()})
    try:
        yield
    finally:
        _CHOICES.clear()
        _CHOICES.update(before)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.stride(1) == 1 and x.size(1) > 1 and x.is_contiguous(memory_format=torch.channels_last)


def default_lean(form: str, x: torch.Tensor, memory_saving: bool = False) -> bool:
    """Whether ``form`` is on by default for input ``x``, in an operation whose
    model saves memory (:func:`save_memory`) or not (see the comment above)."""
    if x.device.type != "cpu" or memory_saving:
        return True
    return _channels_last(x) and form in CPU_CHANNELS_LAST_FORMS


def save_memory(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Makes every lean form the default of ``model``'s operations (``enabled``),
    or the device's default again: what ``pynas search --memory-saving`` (also
    ``--checkpoint-cells``, ``--max-memory``) runs. The choice stays with the
    modules, so a checkpointed cell's recomputation in backward makes the same one.
    :func:`lean_forms` choices still override it. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, _FORM_MODULES):
            module.memory_saving = bool(enabled)
    return model


def _use(form: str, module: nn.Module, x: torch.Tensor) -> bool:
    if not _lean(module, x):
        return False
    choice = _CHOICES[form]
    return default_lean(form, x, getattr(module, "memory_saving", False)) if choice is None else choice


@contextlib.contextmanager
def plain_forms():
    """Within the block, every operation runs its plain PyTorch form: autograd
    keeps what it keeps by default."""
    global _PLAIN
    before, _PLAIN = _PLAIN, True
    try:
        yield
    finally:
        _PLAIN = before


def recompute_depthwise(enabled: bool = True):
    """Within the block, depthwise conv outputs are (or are not) recomputed in
    backward instead of kept: ``lean_forms(depthwise=enabled)``."""
    return lean_forms(depthwise=enabled)


def _lean(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` runs its lean form on ``x``: in training, with autograd
    recording, outside autocast (whose casts the recomputations would have to
    redo) and outside torch.compile (whose partitioner chooses what to recompute)."""
    return (not _PLAIN and module.training and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(x.device.type) and not torch.compiler.is_compiling())


class _BatchNormKeepingOutput(torch.autograd.Function):
    """Training-mode BatchNorm without affine parameters that keeps its output y
    and 1/σ for backward instead of its input: dx = (dy − mean dy − y·mean(dy·y))/σ.
    1/σ is a second, differentiable output, so that a double backward sees how
    it depends on x (∂(1/σ)/∂x = −y/(σ²·n))."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, momentum, eps):
        y, _, invstd = torch.native_batch_norm(x, None, None, running_mean, running_var, True, momentum, eps)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(y, invstd)
        return y, invstd

    @staticmethod
    def backward(ctx, dy, dinvstd):
        y, invstd = ctx.saved_tensors
        dims = [0, *range(2, y.dim())]
        shape = [1, -1] + [1] * (y.dim() - 2)
        dx = None
        if dy is not None:
            if torch.is_grad_enabled():  # a double backward follows: differentiable in y and 1/σ
                dx = invstd.view(shape) * (dy - dy.mean(dims, keepdim=True) - y * (dy * y).mean(dims, keepdim=True))
            else:  # BN's own backward kernel with y as the normalised input (mean 0, 1/σ 1) and weight 1/σ
                dx = torch.ops.aten.native_batch_norm_backward(
                    dy, y, invstd, None, None, torch.zeros_like(invstd), torch.ones_like(invstd), True, ctx.eps,
                    [True, False, False])[0]
        if dinvstd is not None:
            term = (invstd ** 2).view(shape) * y * dinvstd.view(shape) * (-y.size(1) / y.numel())
            dx = term if dx is None else dx + term
        return dx, None, None, None, None


_RECOMPUTING = False


@contextlib.contextmanager
def recomputing():
    """Within the block, a forward is a recomputation of one already done (activation
    checkpointing): pynas' BatchNorm layers normalise by the batch as before but leave
    their running statistics and ``num_batches_tracked`` alone (updated once, by the
    first forward)."""
    global _RECOMPUTING
    before, _RECOMPUTING = _RECOMPUTING, True
    try:
        yield
    finally:
        _RECOMPUTING = before


def _bn_momentum(bn: nn.BatchNorm2d) -> float:
    """Counts the batch and returns the running statistics' momentum (as nn.BatchNorm2d)."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d``; without affine parameters, in training, it keeps its
    output for backward instead of its input. Within :func:`recomputing` its
    running statistics are left alone."""

    def forward(self, x):
        recompute = _RECOMPUTING and self.training and self.track_running_stats
        if self.affine or not self.track_running_stats or not _use("bn_output", self, x):
            if recompute:  # copies of the statistics take the update (autograd saves what the forward saved)
                self._check_input_dim(x)
                return F.batch_norm(x, self.running_mean.clone(), self.running_var.clone(), self.weight, self.bias,
                                    True, 0.0 if self.momentum is None else self.momentum, self.eps)
            return super().forward(x)
        self._check_input_dim(x)
        if recompute:
            return _BatchNormKeepingOutput.apply(x, None, None, 0.0, self.eps)[0]
        momentum = _bn_momentum(self)
        return _BatchNormKeepingOutput.apply(x, self.running_mean, self.running_var, momentum, self.eps)[0]


def _pool_args(pool):
    """``(kernel, stride, padding)`` as lists for a square pool, else None."""
    k, s, p = pool.kernel_size, pool.stride, pool.padding
    if not all(isinstance(v, int) for v in (k, s, p)):
        return None
    return [k, k], [s, s], [p, p]


class _MaxPoolRecomputed(torch.autograd.Function):
    """A max pool that keeps no indices: backward recomputes them from the input."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        ctx.args = (kernel_size, stride, padding)
        ctx.save_for_backward(x)
        return F.max_pool2d(x, kernel_size, stride, padding)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        kernel_size, stride, padding = ctx.args
        with torch.no_grad():
            _, indices = F.max_pool2d(x.detach(), kernel_size, stride, padding, return_indices=True)
        dx = torch.ops.aten.max_pool2d_with_indices_backward(dy, x.detach(), kernel_size, stride, padding, [1, 1],
                                                             False, indices)
        return dx, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (square, no dilation); in training it recomputes its
    indices in backward instead of keeping them."""

    def forward(self, x):
        args = _pool_args(self)
        if (args is None or self.dilation != 1 or self.ceil_mode or self.return_indices or x.dim() != 4
                or not _use("pool_indices", self, x)):
            return super().forward(x)
        return _MaxPoolRecomputed.apply(x, *args)


class _ReLUKeepingInput(torch.autograd.Function):
    """``F.relu(x)`` that keeps its input, not its output, for backward (where it
    runs ``F.relu`` again under autograd: the gradient is F.relu's, whatever it is)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.relu(x)

    @staticmethod
    def backward(ctx, dr):
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward follows: through the saved x itself
            return torch.autograd.grad(F.relu(x), x, dr, create_graph=True)[0]
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            return torch.autograd.grad(F.relu(leaf), leaf, dr)[0]


class _Recipe:
    """How to compute a tensor again: ``compute(*inputs)``, from ``inputs`` as they were."""

    def __init__(self, compute, inputs):
        self.compute, self.inputs = compute, list(inputs)
        self.versions = [t._version for t in self.inputs]


class _PackedRecipe:
    """A recipe as saved: its inputs packed by the hooks below ours (torch.utils.checkpoint's,
    a counter's), so that those still see, and may drop, every tensor it refers to."""

    __slots__ = ("compute", "inputs", "versions")

    def __init__(self, compute, inputs, versions):
        self.compute, self.inputs, self.versions = compute, inputs, versions


def recomputable(t: torch.Tensor, compute, inputs) -> torch.Tensor:
    """Marks ``t`` as ``compute(*inputs)``: saved for backward within
    :func:`saves_recomputed` (by any operation: the next layer, a node's
    ``mixed_sum``), it is kept as that recipe and computed again when backward
    unpacks it. ``compute`` must give bitwise the same tensor."""
    t._pynas_recipe = (_Recipe(compute, inputs), t._version)
    return t


def _is_ours(hooks) -> bool:
    return hooks is not None and getattr(hooks[0], "_pynas_recipes", False)


def saves_recomputed():
    """Within the block, autograd saves each tensor marked by :func:`recomputable`
    (and unmodified since) as its recipe. Composes with the saved-tensor hooks
    active when it is entered (the recipe's inputs and every other tensor go
    through them: checkpointing and counting still see everything). Autograd's own
    nodes still compute the gradients (only those a backward asks for); under
    ``create_graph`` the recomputation is recorded, so double backward sees it."""
    if torch.compiler.is_compiling():  # the lean forms are off there (the partitioner chooses what to recompute)
        return contextlib.nullcontext()
    top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    if _is_ours(top):
        return contextlib.nullcontext()
    outer_pack, outer_unpack = top if top is not None else (None, None)

    def pack(t):
        marked = getattr(t, "_pynas_recipe", None)
        if marked is not None and marked[1] == t._version:
            recipe = marked[0]
            if all(i._version == v for i, v in zip(recipe.inputs, recipe.versions)):
                inputs = [outer_pack(i) for i in recipe.inputs] if outer_pack else recipe.inputs
                return _PackedRecipe(recipe.compute, inputs, recipe.versions)
        return outer_pack(t) if outer_pack else t

    def unpack(packed):
        if not isinstance(packed, _PackedRecipe):
            return outer_unpack(packed) if outer_unpack else packed
        inputs = [outer_unpack(i) for i in packed.inputs] if outer_unpack else packed.inputs
        if any(i._version != v for i, v in zip(inputs, packed.versions)):
            raise RuntimeError("pynas: a tensor that a lean operation recomputes from in backward was modified "
                               "in place after the forward pass")
        return packed.compute(*inputs)

    pack._pynas_recipes = True
    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise (dilated) conv, pointwise conv, BN; ``relu=True`` applies a ReLU
    first. In training that ReLU's output (and, with :func:`recompute_depthwise`,
    the depthwise output) is recomputed in backward instead of kept."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine):
        super().__init__(
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x, relu: bool = False):
        dw, pw, bn = self
        lean_relu, lean_dw = relu and _use("sep_relu", self, x), _use("depthwise", self, x)
        if not (lean_relu or lean_dw):
            return bn(pw(dw(F.relu(x) if relu else x)))
        r = (_ReLUKeepingInput.apply(x) if lean_relu else F.relu(x)) if relu else x
        if lean_relu:
            recomputable(r, F.relu, [x])
        with saves_recomputed():
            h = dw(r)
            if lean_dw:
                recomputable(h, functools.partial(_depthwise, dw, relu), [x, dw.weight])
            return bn(pw(h))


def _depthwise(dw: nn.Conv2d, relu: bool, x, weight):
    """``dw(relu(x) if relu else x)``, as the depthwise recipe (bitwise dw's forward)."""
    return F.conv2d(F.relu(x) if relu else x, weight, None, dw.stride, dw.padding, dw.dilation, dw.groups)


class ReLUFirst(nn.Module):
    """An operation ``body(relu(x))``."""

    relu_first = True

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def after_relu(self, x):
        return self.body(x)

    def forward(self, x):
        return self.after_relu(F.relu(x))


class ReLUConvBN(ReLUFirst):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(nn.Sequential(
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            BatchNorm2d(C_out, affine=affine),
        ))


class DilConv(ReLUFirst):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(DepthwiseSeparable(C_in, C_out, kernel_size, stride, padding, dilation, affine))


class SepConv(ReLUFirst):
    """A separable convolution applied twice (the first with the stride), as in DARTS."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(nn.Sequential(
            DepthwiseSeparable(C_in, C_in, kernel_size, stride, padding, 1, affine),
            nn.ReLU(inplace=False),
            DepthwiseSeparable(C_in, C_out, kernel_size, 1, padding, 1, affine),
        ))

    def after_relu(self, x):
        if not (_use("sep_relu", self, x) or _use("depthwise", self, x)):
            return self.body(x)
        first, _, second = self.body
        return second(first(x), relu=True)  # the ReLU between the pairs is recomputed in backward


class FactorizedReduce(nn.Module):
    """Halves the resolution without losing pixels: two stride-2 1x1 convs, one
    shifted by a pixel, concatenated (ReLU first)."""

    relu_first = True

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce: C_out must be even, got {C_out}")
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = BatchNorm2d(C_out, affine=affine)

    def after_relu(self, x):
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)) if x.size(2) % 2 or x.size(3) % 2 else x[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))

    def forward(self, x):
        return self.after_relu(F.relu(x))


class Zero(nn.Module):
    """``none``: zeros of the output shape (never run inside a MixedOp)."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Noise(nn.Module):
    """S4's ``noise``: N(0, 1) samples of the output shape, independent of the input."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        B, C, H, W = x.shape
        s = self.stride
        return torch.randn(B, C, (H + s - 1) // s, (W + s - 1) // s, dtype=x.dtype, device=x.device)


class Identity(nn.Module):
    def forward(self, x):
        return x


def _skip(C, stride, affine):
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine)


def _pool(kind):
    def build(C, stride, affine):
        if kind == "max":
            return MaxPool2d(3, stride=stride, padding=1)
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    return build


OPS: Dict[str, OpConstructor] = {
    "none": lambda C, stride, affine: Zero(stride),
    "noise": lambda C, stride, affine: Noise(stride),
    "max_pool_3x3": _pool("max"),
    "avg_pool_3x3": _pool("avg"),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_7x1_1x7": lambda C, stride, affine: ReLUFirst(nn.Sequential(
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        BatchNorm2d(C, affine=affine),
    )),
    # NAS-Bench-201 (Single-DARTS App. B): ReLU-Conv-BN convolutions.
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
}

def _pool(pool: nn.Module, x, indices: bool = False):
    """``pool(x)`` as its plain PyTorch op (a max pool also returns its indices with ``indices``)."""
    k, s, p = _pool_args(pool)
    if isinstance(pool, nn.MaxPool2d):
        return F.max_pool2d(x, k, s, p, return_indices=indices)
    return F.avg_pool2d(x, k, s, p, pool.ceil_mode, pool.count_include_pad, pool.divisor_override)


def _pool_backward(pool: nn.Module, dp, x, indices):
    k, s, p = _pool_args(pool)
    if isinstance(pool, nn.MaxPool2d):
        if indices is None:
            indices = F.max_pool2d(x, k, s, p, return_indices=True)[1]
        return torch.ops.aten.max_pool2d_with_indices_backward(dp, x, k, s, p, [1, 1], False, indices)
    return torch.ops.aten.avg_pool2d_backward(dp, x, k, s, p, pool.ceil_mode, pool.count_include_pad,
                                              pool.divisor_override)


def _batch_norm(p, eps: float, running_mean=None, running_var=None, momentum: float = 0.0):
    """``(y, mean, 1/σ)`` of an affine-free training-mode BatchNorm: BatchNorm's own kernel,
    in the forward and in its recomputation alike (the same op on the same input: the same y)."""
    return torch.native_batch_norm(p, None, None, running_mean, running_var, True, momentum, eps)


def _pool_bn_output(pool, eps: float, memo: dict, x):
    """The lean pool + BN's output again, from its input (the recipe its consumers keep):
    left in ``memo`` (with a max pool's indices) for the op's own backward, which comes
    next, so that one recomputation serves both. Under ``create_graph`` (a double
    backward) it is recorded, differentiable in x through the batch statistics too."""
    if torch.is_grad_enabled():
        return F.batch_norm(_pool(pool, x), None, None, None, None, True, 0.0, eps)
    p = _pool(pool, x, indices=isinstance(pool, nn.MaxPool2d))
    if isinstance(p, tuple):
        p, memo["indices"] = p
    memo["y"] = y = _batch_norm(p, eps)[0]
    return y


class _PoolBNRecomputed(torch.autograd.Function):
    """``BN(pool(x))`` for an affine-free BN in training that keeps, for backward,
    only x (a node of the cell, kept anyway) and the batch's 1/σ: backward computes
    the pool and the BN output again (bitwise: the same ops on the same input), and
    the output is marked :func:`recomputable` for the node's ``mixed_sum``, which
    saves it for α's gradient."""

    @staticmethod
    def forward(ctx, x, pool, memo, running_mean, running_var, momentum, eps):
        y, _, invstd = _batch_norm(_pool(pool, x), eps, running_mean, running_var, momentum)
        ctx.pool, ctx.memo, ctx.eps = pool, memo, eps
        ctx.save_for_backward(x, invstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, invstd = ctx.saved_tensors
        pool = ctx.pool
        if torch.is_grad_enabled():  # a double backward follows: the plain form's gradient at the saved x
            y = F.batch_norm(_pool(pool, x), None, None, None, None, True, 0.0, ctx.eps)
            return (torch.autograd.grad(y, x, dy, create_graph=True)[0],) + (None,) * 6
        if "y" not in ctx.memo:  # nothing unpacked the recipe before (e.g. mixed_sum's weights need no gradient)
            _pool_bn_output(pool, ctx.eps, ctx.memo, x)
        y, indices = ctx.memo.pop("y"), ctx.memo.pop("indices", None)
        dp = torch.ops.aten.native_batch_norm_backward(
            dy, y, invstd, None, None, torch.zeros_like(invstd), torch.ones_like(invstd), True, ctx.eps,
            [True, False, False])[0]
        return (_pool_backward(pool, dp, x, indices),) + (None,) * 6


class PoolBN(nn.Sequential):
    """A pool followed by an affine-free BatchNorm (the supernet's pools, DARTS).
    In training its lean form (``pool_bn``) keeps neither the pool's nor the BN's
    output: both are recomputed in backward from the input and the batch statistics."""

    def forward(self, x):
        pool, bn = self
        if (bn.affine or not bn.track_running_stats or x.dim() != 4 or not _use("pool_bn", self, x)
                or not _lean_pool(pool)):
            return super().forward(x)
        bn._check_input_dim(x)
        if _RECOMPUTING:
            running_mean = running_var = None
            momentum = 0.0
        else:
            running_mean, running_var, momentum = bn.running_mean, bn.running_var, _bn_momentum(bn)
        memo = {}
        y = _PoolBNRecomputed.apply(x, pool, memo, running_mean, running_var, momentum, bn.eps)
        return recomputable(y, functools.partial(_pool_bn_output, pool, bn.eps, memo), [x])


# The modules whose forward chooses a lean form (what save_memory marks).
_FORM_MODULES = (BatchNorm2d, MaxPool2d, DepthwiseSeparable, SepConv, PoolBN)


def _lean_pool(pool: nn.Module) -> bool:
    """Whether the lean pool + BN computes ``pool`` (a square max pool without dilation, or an average pool)."""
    if _pool_args(pool) is None:
        return False
    if isinstance(pool, nn.MaxPool2d):
        return pool.dilation == 1 and not pool.ceil_mode and not pool.return_indices
    return isinstance(pool, nn.AvgPool2d)


# Parameter-free operations; in a search supernet they are followed by a
# BatchNorm without affine parameters when they are pools (DARTS; SNAS App. G.1).
POOLS = {"max_pool_3x3", "avg_pool_3x3"}


def register_op(name: str, constructor: OpConstructor, *, overwrite: bool = False) -> None:
    """Adds an operation ``constructor(C, stride, affine) -> nn.Module`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("register_op: `name` must be a non-empty string")
    if not callable(constructor):
        raise ValueError(f"register_op: `constructor` for {name!r} must be callable")
    if name in OPS and not overwrite:
        raise ValueError(f"register_op: an operation named {name!r} exists; pass overwrite=True to replace it")
    OPS[name] = constructor


def build_op(name: str, C: int, stride: int, affine: bool, search: bool = False) -> nn.Module:
    """The operation ``name``; in a search supernet (``search=True``) a pool gets
    a non-affine BatchNorm after it."""
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; known: {sorted(OPS)} (add one with pynas.nn.register_op)")
    op = OPS[name](C, stride, affine)
    if search and name in POOLS:
        op = PoolBN(op, BatchNorm2d(C, affine=False))
    return op
