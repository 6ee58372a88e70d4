"""Whole search steps: pynas' fused supernet against the eager way (`pynas bench search`).

One search step (``Strategy.step``: the α step and the weight step) of the
DARTS CIFAR supernet for each method, computed two ways over the *same*
modules and parameters:

- ``fused``: :class:`~pynas.nn.SearchNetwork` as it is (``none`` never run, one
  ReLU per edge, all edges of a node in one ``mixed_sum``, fused Gumbel-softmax,
  the operations' lean training forms of :mod:`pynas.nn.ops`);
- ``eager``: :class:`EagerSupernet`, the way public NAS code computes the same
  function: per edge ``sum(w_k * op_k(x))`` over every operation, ``none``
  included as a zeros-producing op, each op with its own ReLU, nodes as a
  Python sum of edges, plain PyTorch operations, Gumbel noise ``-log(-log U)``
  drawn in Python.

Timing: both paths over one model in one process, taking turns step by step,
the order swapped every round (eager, fused; fused, eager; ...), so drift on a
shared machine favours neither; on CPU glibc's free memory is handed back to the
system after every step (``malloc_trim``: with both paths' allocations in one
heap, a batch-64 run once passed 24 GB of RSS without it). Reported per method
and path: the median step time after warm-up and images per second, and the
ratio fused/eager as the median of each round's ratio (``round_ratios``); peak
memory (CUDA max allocated; on CPU the peak RSS, VmHWM, of a separate process
per method and path, since it never goes down); the activations one forward
keeps for backward (the same on any device); and what the data loader takes
per step (``loader_ms``: DARTS' augmentation of synthetic images of the
benchmark's size, in this process, two batches for a bi-level step). Both
steps of a round draw the same Gumbel samples (under hard samples, the same
operations). Before
timing, the two paths are checked to give the same loss, gradients and
BatchNorm statistics on a small network.
"""
import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .ops import device_name
from ..arch import _clip_renormalise, dirichlet_weights
from ..io import write_json
from ..nn.ops import plain_forms, recompute_depthwise, save_memory

# The seed methods (timed by default) and the DARTS family beyond them (with --methods NAME ...).
SEED_METHODS = ("darts", "darts-2nd", "single-level", "snas", "gdas")
METHODS = SEED_METHODS + ("fairdarts", "beta-darts", "darts-minus", "sdarts-adv", "oles", "lambda-darts", "drnas")
PATHS = ("eager", "fused")
# The layout both paths compute in: `auto` is each path's own (fused: channels-last on CPU for
# C >= 8, NCHW on CUDA; eager: NCHW, as public code), the others force it on both.
LAYOUTS = ("auto", "nchw", "channels-last")
# DARTS' CIFAR-10 search (batch 64, C = 16, 8 cells, 32x32), and a CPU-sized one.
FULL = dict(batch_size=64, C=16, layers=8, image_size=32, warmup=2, steps=5)
QUICK = dict(batch_size=16, C=16, layers=8, image_size=32, warmup=1, steps=5)
# The equality check: small, in float64.
CHECK = dict(batch_size=2, C=4, layers=3, image_size=8)
# What a measured step time implies for a whole search: CIFAR-10's 50,000 training images, half of them
# for the weights under bi-level methods (DARTS' train_portion 0.5), 50 epochs (DARTS' public setting;
# its first order took 9 h 04 min on an RTX 2080Ti at batch 64, a published anchor).
CIFAR10_TRAIN_IMAGES, SEARCH_EPOCHS = 50_000, 50


def search_hours(method: str, batch_size: int, step_ms: float) -> float:
    """Hours of the training steps of a 50-epoch CIFAR-10 search at ``step_ms``
    per step (the per-epoch validation pass not counted)."""
    from ..search.methods import METHODS as COMPOSITIONS

    images = CIFAR10_TRAIN_IMAGES // 2 if COMPOSITIONS[method].bilevel else CIFAR10_TRAIN_IMAGES
    return SEARCH_EPOCHS * math.ceil(images / batch_size) * step_ms / 3.6e6

Noise = Callable[[torch.Size, torch.dtype, torch.device], torch.Tensor]


# -- the eager supernet ---------------------------------------------------------


def python_gumbel(generator: Optional[torch.Generator]) -> Noise:
    """Gumbel noise ``-log(-log U)`` as public NAS code draws it (U from ``generator``)."""

    def noise(shape, dtype, device):
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
        return -torch.log(-torch.log(u.clamp_(min=torch.finfo(dtype).tiny)))

    return noise


def fused_gumbel(generator: Optional[torch.Generator]) -> Noise:
    """The noise pynas' ``gumbel_softmax`` kernel draws from ``generator`` (consuming
    it the same way), up to a constant per row, which no softmax or argmax sees:
    ``log softmax(G)`` of a zero-logit sample at τ = 1. For checking equality."""
    from ..functional import gumbel_softmax

    def noise(shape, dtype, device):
        zeros = torch.zeros(shape, dtype=dtype, device=device)
        return torch.log(gumbel_softmax(zeros, tau=1.0, generator=generator))

    return noise


class EagerSupernet:
    """A :class:`~pynas.nn.SearchNetwork` computed the eager way, over its own
    modules (the same parameters and BatchNorm buffers).

    What differs from ``SearchNetwork.forward``: each edge is
    ``sum(w_k * op_k(x))`` over all operations, ``none`` as ``x * 0``; every op
    runs its own forward (its own ReLU) in its plain PyTorch form
    (:func:`pynas.nn.ops.plain_forms`: autograd keeps what it keeps by default);
    a node is the Python sum of its edges; relaxed weights are computed in
    Python (softmax, sigmoid, Gumbel-softmax with ``noise``, straight-through
    one-hot for ``gumbel_hard``); DrNAS' ``dirichlet`` draws with the
    architecture's own sampler (:func:`pynas.arch.dirichlet_weights`) from its
    generator, so both paths see the same sample. Hard samples run the selected
    operation only, as GDAS' code does (running all would change the gradient to
    α). With the network's ``aux_skip``, each edge adds ``β · aux(x)`` as DARTS-'
    ``MixedOp`` does (Meituan-AutoML/DARTS- src/search/model_search.py:40-45), β
    read from ``model.aux_weight``.

    Partial channels K > 1 (PC-DARTS, yuhuixu1993/PC-DARTS model_search.py
    ``MixedOp``, ``channel_shuffle``; DrNAS' DARTS-space model_search.py:26-56): the
    operations see the first C/K channels, the others bypass them (max-pooled 2x2,
    stride 2, on a reduction edge), ``cat`` of both is channel-shuffled with K
    groups by ``view``/``transpose``; DARTS-' aux joins the operated part. With
    PC-DARTS' edge normalisation a node is ``sum(β̂_e · edge_e)``, β̂ the softmax
    of β over each node's edges (its ``Network._arch_weights``); without it (DrNAS)
    the plain sum.

    Each cell is computed as calling it would: its forward pre-hooks may replace
    its arguments ``(s0, s1, weights, active, edge_weights, aux_weight)``, as
    ``SearchNetwork`` passes them, and its forward hooks its output (Λ-DARTS
    substitutes each cell's edge weights so). Covers spaces where every edge has
    every op. Use as ``strategy.forward = EagerSupernet(model)``.
    """

    def __init__(self, model, noise: Optional[Noise] = None):
        self.model = model
        self.noise = noise if noise is not None else python_gumbel(model.arch.generator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with plain_forms():
            return self._forward(x)

    def _forward(self, x):
        model = self.model
        shared = {}
        if model.channels_last and x.dim() == 4:  # a layout forced on both paths (--layout channels-last)
            x = x.contiguous(memory_format=torch.channels_last)
        aux_weight = model.aux_weight if model.aux_skip else None
        s0 = s1 = model.stem(x)
        for cell in model.cells:
            cell_type = "reduce" if cell.reduction else "normal"
            if model.arch.sample_per == "cell" or cell_type not in shared:
                shared[cell_type] = (*self.relaxed_weights(cell_type, x.size(0)), self.edge_weights(cell_type, cell))
            s0, s1 = s1, _as_called(cell, self.cell, (s0, s1, *shared[cell_type], aux_weight))
        return model.classifier(model.global_pooling(s1).flatten(1))

    def relaxed_weights(self, cell_type: str, batch_size: int):
        """``(weights [E, K] or [B, E, K], active)``: per edge the ops to run (None: all).
        The architecture's overrides as its own forward reads them: the weights of
        ``arch.replaced`` (SDARTS-ADV), softmax(α) plus ``arch.noisy``'s noise,
        clipped and renormalised (SDARTS-RS)."""
        arch = self.model.arch
        if not bool(arch.mask(cell_type).all()):
            raise ValueError("EagerSupernet: every edge must have every operation (no masks)")

        replaced, noise = arch.replacement(cell_type), arch.noise(cell_type)
        alpha = arch.alphas[cell_type] if replaced is None else replaced
        batched = arch.sample_per == "sample"
        if batched:
            alpha = alpha.expand(batch_size, *alpha.shape)
        if replaced is not None:  # the weights themselves, not relaxed
            return alpha, None
        if noise is not None and arch.relaxation != "softmax":
            raise ValueError(f"EagerSupernet: noise on relaxation {arch.relaxation!r} is not covered (softmax only)")
        if arch.relaxation == "softmax":
            w = F.softmax(alpha, dim=-1)
            return (w if noise is None else _clip_renormalise(w + noise.to(w), arch.mask(cell_type))), None
        if arch.relaxation == "sigmoid":
            return torch.sigmoid(alpha), None
        if arch.relaxation == "dirichlet":  # the sampler's own draw, from the generator's state (tested elsewhere)
            return dirichlet_weights(arch.alphas[cell_type], arch.mask(cell_type), arch.generator,
                                     batch_size if batched else None), None
        if arch.relaxation not in ("gumbel", "gumbel_hard"):
            raise ValueError(f"EagerSupernet: relaxation {arch.relaxation!r} is not covered")
        soft = F.softmax((alpha + self.noise(alpha.shape, alpha.dtype, alpha.device)) / arch.temperature, dim=-1)
        if arch.relaxation == "gumbel":
            return soft, None
        index = soft.argmax(-1, keepdim=True)
        hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
        weights = hard - soft.detach() + soft
        chosen = hard.reshape(-1, *hard.shape[-2:]).amax(0) > 0  # [E, K]: union over samples
        return weights, [row.nonzero().flatten().tolist() for row in chosen.cpu()]

    def edge_weights(self, cell_type: str, cell) -> Optional[torch.Tensor]:
        """PC-DARTS' β̂ ``[E]``: per node the softmax of β over its incoming edges, node
        by node as its ``Network._arch_weights`` concatenates them (None without β)."""
        betas = self.model.arch.betas
        if betas is None:
            return None
        beta, parts, start = betas[cell_type], [], 0
        for node in range(cell.steps):
            end = start + cell.inputs + node
            parts.append(F.softmax(beta[start:end], dim=-1))
            start = end
        return torch.cat(parts)

    def cell(self, cell, s0, s1, weights, active, edge_weights, aux_weight):
        states = [cell.preprocess1(s1)] if cell.inputs == 1 else [cell.preprocess0(s0), cell.preprocess1(s1)]
        e = 0
        for _ in range(cell.steps):
            node = 0
            for j, h in enumerate(states):
                out = self.edge(cell, e + j, h, weights[..., e + j, :], None if active is None else active[e + j],
                                aux_weight)
                node = node + (out if edge_weights is None else edge_weights[e + j] * out)
            e += len(states)
            states.append(node)
        return torch.cat([states[n] for n in cell.concat], dim=1)

    @staticmethod
    def edge(cell, e, x, weights, active, aux_weight):
        """DARTS' ``sum(w * op(x) for w, op in zip(weights, ops))`` plus DARTS-' aux; with
        partial channels on the operated slice, joined to the bypass by PC-DARTS' shuffle."""
        mixed = cell.edges[e]
        K = mixed.partial_channels
        operated = x[:, : x.size(1) // K]
        total = 0
        for k in range(len(mixed.names)) if active is None else active:
            out = operated[:, :, :: mixed.stride, :: mixed.stride].mul(0.0) if mixed.names[k] == "none" \
                else mixed.ops[mixed._slot[k]](operated)
            w = weights[..., k]
            total = total + (w.view(-1, 1, 1, 1) if w.dim() == 1 else w) * out
        if cell.aux_skips is not None:  # DARTS-' auxiliary_op(x) * decay_rate
            total = total + aux_weight * cell.aux_skips[e](operated)
        if K == 1:
            return total
        bypass = x[:, x.size(1) // K:]
        if mixed.stride == 2:  # ceil_mode: the operations' ceil(H/2) on odd sizes (PC-DARTS' pool on even ones)
            bypass = F.max_pool2d(bypass, 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([total, bypass], dim=1), K)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle as PC-DARTS' code writes it: channels viewed as
    ``[groups, C/groups]``, transposed, flattened back."""
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


def _as_called(module, forward: Callable, args: tuple):
    """``forward(*args)`` run as ``module(*args)`` runs its own forward (``nn.Module.__call__``'s
    order): the module's forward pre-hooks may replace ``args``, its forward hooks the output."""
    if module._forward_pre_hooks_with_kwargs or module._forward_hooks_with_kwargs:
        raise ValueError("EagerSupernet: a cell's hooks with keyword arguments are not covered")
    for hook in module._forward_pre_hooks.values():
        result = hook(module, args)
        if result is not None:
            args = result if isinstance(result, tuple) else (result,)
    out = forward(module, *args)
    for hook in module._forward_hooks.values():
        result = hook(module, args, out)
        if result is not None:
            out = result
    return out


# -- building a step --------------------------------------------------------------


# What a method's step needs beyond the common size (the check's and the benchmark's): C a multiple of
# `C_multiple`, at least `layers` cells, RunConfig `options`, and `last_epoch`: the step taken in the last epoch.
NEEDS = {
    # DrNAS: its stages' partial channels 6 and 4 both divide C (and leave an even C/K on reduction edges);
    # α frozen in no epoch, so that the step measured and checked has α's step (its code's frozen epochs have none).
    "drnas": dict(C_multiple=12, options=dict(drnas_frozen=0.0)),
    # Λ-DARTS aligns at least two normal cells (4 cells: reductions at 1 and 2); its λ(e) = λ·e/(E − 1) is 0 in
    # the first epoch, so its step is the last epoch's, where the finite-difference term counts.
    "lambda-darts": dict(layers=4, last_epoch=True),
}


def method_size(method: str, C: int, layers: int) -> Tuple[int, int]:
    """``(C, layers)`` raised to what ``method`` needs (:data:`NEEDS`): C to the next
    multiple of its ``C_multiple``, layers to its least."""
    need = NEEDS.get(method, {})
    multiple = need.get("C_multiple", 1)
    return -(-C // multiple) * multiple, max(layers, need.get("layers", 1))


def build(method: str, C: int, layers: int, device="cpu", dtype=torch.float32, seed: int = 0,
          steps_per_epoch: int = 1000, layout: str = "auto", **options):
    """The supernet and strategy of ``pynas search --method method`` on 10 classes,
    computing in ``layout`` (one of :data:`LAYOUTS`), at :func:`method_size` and with
    the method's :data:`NEEDS`; ``options``: RunConfig's, over the method's own
    (e.g. ``partial_channels=2``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    from ..search.build import build_model, strategy_options
    from ..search.config import RunConfig
    from ..search.methods import METHODS as COMPOSITIONS
    from ..search.strategies import SearchConfig

    torch.manual_seed(seed)
    C, layers = method_size(method, C, layers)
    need = NEEDS.get(method, {})
    # The method's own space (the DARTS space, without `none` where its authors searched so) and parts.
    cfg = RunConfig.for_method(method, C=C, layers=layers, seed=seed, device=str(device),
                               **{**need.get("options", {}), **options})
    info = SimpleNamespace(num_classes=10, in_channels=3, image_size=None)
    model = build_model(cfg, info).to(device=device, dtype=dtype)
    config = SearchConfig()
    strategy = COMPOSITIONS[method].order(model, config, steps_per_epoch, **strategy_options(cfg, info))
    if need.get("last_epoch"):
        strategy.epochs_done = config.epochs - 1
    if layout != "auto":
        model.channels_last = layout == "channels-last"
    return model, strategy


def make_batches(batch_size: int, image_size: int, device="cpu", dtype=torch.float32, seed: int = 0,
                 in_channels: int = 3, num_classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    batch = lambda: (torch.randn(batch_size, in_channels, image_size, image_size, generator=g).to(device, dtype),
                     torch.randint(0, num_classes, (batch_size,), generator=g).to(device))
    return batch(), batch()


class _DepthwiseRecomputed:
    """The supernet with :func:`pynas.nn.ops.recompute_depthwise` on."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        with recompute_depthwise(True):
            return self.model(x)


def use_path(strategy, path: str, noise: Optional[Noise] = None, recompute_depthwise: bool = False,
             checkpoint_cells: bool = False, memory_saving: bool = False) -> None:
    """Makes ``strategy`` compute its supernet along ``path`` (``fused``, with the
    depthwise outputs recomputed in backward, the memory-saving forms and each cell
    checkpointed if asked, or ``eager``). As in ``pynas search``, checkpointed cells
    come with the memory-saving forms (:func:`pynas.nn.ops.save_memory`)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    strategy.model.checkpoint_cells = path == "fused" and checkpoint_cells
    save_memory(strategy.model, path == "fused" and (memory_saving or checkpoint_cells))
    if path == "eager":
        strategy.forward = EagerSupernet(strategy.model, noise)
    else:
        strategy.forward = _DepthwiseRecomputed(strategy.model) if recompute_depthwise else strategy.model


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- equality of the two paths -----------------------------------------------------


def step_gradients(method: str, path: str, C: int, layers: int, image_size: int, batch_size: int,
                   dtype=torch.float64, seed: int = 0, recompute_depthwise: bool = False,
                   checkpoint_cells: bool = False, memory_saving: bool = False, device="cpu",
                   options: Optional[dict] = None) -> Dict[str, list]:
    """The loss of one search step along ``path`` on ``device``, the gradients it
    leaves (``weights``, ``alpha``; the optimisers do not step) and the model's
    ``buffers`` after it (BatchNorm statistics). The eager path draws the fused
    kernel's Gumbel noise, so both see the same samples. ``options``: RunConfig's,
    for :func:`build`."""
    model, strategy = build(method, C, layers, device=device, dtype=dtype, seed=seed, **(options or {}))
    use_path(strategy, path, fused_gumbel(model.arch.generator), recompute_depthwise, checkpoint_cells,
             memory_saving)
    strategy.w_opt.step = lambda *a, **k: None
    if strategy.a_opt is not None:
        strategy.a_opt.step = lambda *a, **k: None
    train, val = make_batches(batch_size, image_size, device=device, dtype=dtype, seed=seed)
    loss = strategy.step(train, val)["loss"]
    grads = lambda params: [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    return dict(loss=[torch.as_tensor(loss).detach().clone()], weights=grads(strategy.weights), alpha=grads(strategy.alphas),
                buffers=[b.clone() for b in model.buffers()])


@contextlib.contextmanager
def threads(n: int):
    """Within the block, torch uses ``n`` threads (tiny networks: more threads
    only wait on each other, badly so on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_paths(method: str, rtol: float = 1e-7, atol: float = 1e-10, recompute_depthwise: bool = False,
                checkpoint_cells: bool = False, memory_saving: bool = False, device="cpu",
                **size) -> Dict[str, float]:
    """Asserts that both paths give the same loss, gradients and BatchNorm
    statistics for ``method`` (float64, a small network, on ``device``; ``size``:
    :data:`CHECK`'s keys and ``options``, RunConfig's); returns the largest
    difference of each."""
    size = {**CHECK, **size, "device": device}
    with threads(1):
        eager = step_gradients(method, "eager", **size)
        fused = step_gradients(method, "fused", recompute_depthwise=recompute_depthwise,
                               checkpoint_cells=checkpoint_cells, memory_saving=memory_saving, **size)
    diffs = {}
    for key in eager:
        for i, (a, b) in enumerate(zip(fused[key], eager[key])):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol,
                                       msg=lambda m, k=key, i=i: f"{method}: {k}[{i}] differs: {m}")
        diffs[key] = max(float((a.double() - b.double()).abs().max()) for a, b in zip(fused[key], eager[key]))
    return diffs


# -- time and memory ---------------------------------------------------------------


def trim_heap():
    """Hands glibc's free heap memory back to the system (``malloc_trim``; a no-op
    without glibc). Between the two paths' steps in one process: their different
    allocations otherwise fragment the heap (at batch 64 its RSS once passed 24 GB)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def time_steps(method: str, batch_size: int, C: int, layers: int, image_size: int, warmup: int, steps: int,
               device="cpu", seed: int = 0, recompute_depthwise: bool = False, layout: str = "auto",
               checkpoint_cells: bool = False, memory_saving: bool = False) -> Dict[str, dict]:
    """Seconds per search step of both paths, taking turns: in each round both
    paths take a step, one after the other, the order swapped every round (so drift
    on a shared machine favours neither). On CUDA both run over one model in this
    process; on CPU each path runs in a process of its own (:class:`_PathProcess`,
    the same model from the same seed), the two stepping strictly in turn: one
    heap for both paths fragments (at batch 64 its RSS passed 20 GB of a 24 GB
    machine, heap trimmed after each step), two heaps each keep their own path's
    peak. Per path the median and every step after ``warmup`` rounds, in wall time
    and (``cpu_*``) in the stepping process' CPU time, which other jobs on a shared
    machine disturb less; ``round_ratios`` and ``cpu_round_ratios``, each round's
    eager time over its fused time (fused/eager in images per second). Both steps
    of a round draw the same Gumbel samples (the eager path the fused kernel's
    noise, from the same generator state), so under hard samples (gdas) they run
    the same operations."""
    spec = dict(method=method, batch_size=batch_size, C=C, layers=layers, image_size=image_size, device=device,
                seed=seed, recompute_depthwise=recompute_depthwise, layout=layout, checkpoint_cells=checkpoint_cells,
                memory_saving=memory_saving)
    if torch.device(device).type == "cpu":
        with contextlib.ExitStack() as stack:
            workers = {path: stack.enter_context(_PathProcess(dict(spec, path=path))) for path in PATHS}
            return _alternate(lambda path, round: workers[path].step(round), warmup, steps, batch_size)
    stepper = _PathStepper(**spec)
    return _alternate(stepper.step, warmup, steps, batch_size)


def _alternate(step: Callable[[str, int], tuple], warmup: int, steps: int, batch_size: int) -> Dict[str, dict]:
    """``step(path, round) -> (wall seconds, CPU seconds)`` of both paths in turns, summarised (see time_steps)."""
    times = {p: [] for p in PATHS}
    cpu_times = {p: [] for p in PATHS}
    for i in range(warmup + steps):
        for path in PATHS if i % 2 == 0 else PATHS[::-1]:
            wall, cpu = step(path, i)
            if i >= warmup:
                times[path].append(wall)
                cpu_times[path].append(cpu)
    out = {}
    for path, ts in times.items():
        median = statistics.median(ts)
        out[path] = dict(step_ms=1e3 * median, images_per_s=batch_size / median, steps_ms=[1e3 * t for t in ts],
                         cpu_step_ms=1e3 * statistics.median(cpu_times[path]),
                         cpu_steps_ms=[1e3 * t for t in cpu_times[path]])
    out["round_ratios"] = [e / f for e, f in zip(times["eager"], times["fused"])]
    out["cpu_round_ratios"] = [e / f for e, f in zip(cpu_times["eager"], cpu_times["fused"])]
    return out


class _PathStepper:
    """Search steps of one model along either path; each step of round ``r`` draws its samples from the
    generator seeded by (seed, r), so both paths' steps of a round draw the same ones, in one model or in
    two (the eager path draws more than the fused one, so their generators would part after one step)."""

    def __init__(self, method, batch_size, C, layers, image_size, device, seed, recompute_depthwise, layout,
                 checkpoint_cells, memory_saving):
        self.model, self.strategy = build(method, C, layers, device, seed=seed, layout=layout)
        self.train, self.val = make_batches(batch_size, image_size, device, seed=seed)
        self.device, self.seed = device, seed
        self.forms = dict(recompute_depthwise=recompute_depthwise, checkpoint_cells=checkpoint_cells,
                          memory_saving=memory_saving)
        self.generator = self.model.arch.generator

    def step(self, path: str, round: int) -> tuple:
        if self.generator is not None:
            self.generator.manual_seed(self.seed * 1_000_003 + round)
        use_path(self.strategy, path, fused_gumbel(self.generator), **self.forms)
        if torch.device(self.device).type == "cpu":
            trim_heap()
        _sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        self.strategy.step(self.train, self.val)
        _sync(self.device)
        times = time.perf_counter() - start, time.process_time() - cpu_start
        if torch.device(self.device).type == "cpu":
            trim_heap()  # untimed: the other path's process steps while this one holds only its model
        return times


def _path_process_main() -> None:
    """A :class:`_PathProcess`: reads its spec, then one search step per line of stdin (the round's
    number), each answered with (wall, CPU) seconds as JSON on stdout."""
    spec = json.loads(sys.stdin.readline())
    torch.set_num_threads(spec.pop("threads"))
    path = spec.pop("path")
    stepper = _PathStepper(**spec)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(stepper.step(path, int(line))), flush=True)


class _PathProcess:
    """One path's steps in a fresh Python process of its own (its own heap), started with this process'
    torch thread count; :meth:`step` runs one and waits for it, so two of them never step at once."""

    def __init__(self, spec: dict):
        self.spec = dict(spec, threads=torch.get_num_threads())

    def __enter__(self):
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above pynas/
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        code = "from pynas.bench.search import _path_process_main; _path_process_main()"
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env, text=True)
        self._send(json.dumps(self.spec))
        self._receive("ready")
        return self

    def step(self, round: int) -> tuple:
        self._send(str(round))
        return tuple(json.loads(self._receive("a step's times")))

    def _send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def _receive(self, what: str) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.spec['path']} path's process of {self.spec['method']} ended before "
                               f"{what} (exit code {self.process.wait()}; its error above)")
        return line.strip()

    def __exit__(self, *exc):
        self.process.stdin.close()
        self.process.wait()
        return False


def loader_ms_per_step(method: str, batch_size: int, image_size: int, batches: int = 8, seed: int = 0) -> float:
    """Milliseconds the data loader takes per search step of ``method`` in this
    process (``pynas.data.loader``, no workers: the CPU default): DARTS'
    augmentation (pad, crop, flip) of random uint8 images of the benchmark's size,
    two batches for a bi-level step (``pynas.data.seconds_per_batch``)."""
    from ..data import CIFAR10_MEAN, CIFAR10_STD, ImageDataset, loader, seconds_per_batch
    from ..search.methods import METHODS as COMPOSITIONS

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size * batches, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch_size * batches,), generator=g)
    data = ImageDataset(images, labels, CIFAR10_MEAN, CIFAR10_STD, train=True)
    per_step = 2 if COMPOSITIONS[method].bilevel else 1
    return 1e3 * per_step * seconds_per_batch(loader(data, batch_size, seed, 0), batches)


def _saved_storages(model, forward, x, cells: bool = False, hold: Optional[list] = None):
    """The storages one forward of the training loss keeps for backward (unique,
    the parameters left out), ``{data_ptr: bytes}``; with ``cells``, also
    ``[{data_ptr: bytes}]`` of the saves made inside each cell and ``{data_ptr:
    bytes}`` of the cells' tensor arguments (what a checkpointed cell keeps).
    ``hold``: a list that keeps the forward's graph (and so its storages) alive,
    so that a later forward cannot reuse their addresses."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved, per_cell, arguments, current = {}, [], {}, []

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
            if current:
                per_cell[current[-1]][storage.data_ptr()] = storage.nbytes()
        return t

    def enter(i):
        def hook(module, args):
            per_cell.append({}) if len(per_cell) <= i else None
            current.append(i)
            for a in args:
                if isinstance(a, torch.Tensor):
                    arguments[a.untyped_storage().data_ptr()] = a.untyped_storage().nbytes()
        return hook

    hooks = []
    if cells:
        for i, cell in enumerate(model.cells):
            hooks += [cell.register_forward_pre_hook(enter(i)),
                      cell.register_forward_hook(lambda *_: (current.pop(), None)[1])]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(forward(x[0]), x[1])
    finally:
        for h in hooks:
            h.remove()
    if hold is not None:
        hold.append(loss)
    del loss
    return (saved, per_cell, arguments) if cells else saved


def saved_activations_mb(model, forward, batch) -> float:
    """MB of the tensors one forward of the training loss keeps for backward
    (unique storages, the parameters left out): the activation memory, the same
    on any device. Tensors kept as recomputation recipes do not count (their
    inputs do). With ``model.checkpoint_cells`` see :func:`checkpointed_activations_mb`."""
    if getattr(model, "checkpoint_cells", False):
        return checkpointed_activations_mb(model, forward, batch)["peak_mb"]
    return sum(_saved_storages(model, forward, batch).values()) / 2 ** 20


def checkpointed_activations_mb(model, forward, batch) -> Dict[str, float]:
    """What a forward + backward with each cell checkpointed keeps at its largest
    (``peak_mb``), counted from saved storages: ``forward_mb``, what the
    checkpointed forward keeps for backward (the saves outside the cells, and
    every cell's tensor arguments, which torch.utils.checkpoint holds), plus
    ``cell_mb``, the most one cell's recomputation saves while that cell's
    backward runs (the cell's saves in a forward without checkpointing, less
    storages already counted; the cells after it are done and their recomputed
    tensors freed by then). Gradients in flight are not counted, as in the paths
    without checkpointing."""
    before = model.checkpoint_cells
    # The first forward stays alive through the second: storages are matched by address, and a freed one's
    # address, reused by the second forward, would pass for one already counted.
    held = []
    try:
        model.checkpoint_cells = True
        saved, _, arguments = _saved_storages(model, forward, batch, cells=True, hold=held)
        kept = {**saved, **arguments}
        model.checkpoint_cells = False
        _, per_cell, _ = _saved_storages(model, forward, batch, cells=True)
    finally:
        model.checkpoint_cells = before
        held.clear()
    cell = max(sum(b for ptr, b in c.items() if ptr not in kept) for c in per_cell)
    forward_mb, cell_mb = sum(kept.values()) / 2 ** 20, cell / 2 ** 20
    return dict(forward_mb=forward_mb, cell_mb=cell_mb, peak_mb=forward_mb + cell_mb)


def activations_mb(method: str, path: str, batch_size: int, C: int, layers: int, image_size: int, device="cpu",
                   seed: int = 0, recompute_depthwise: bool = False, layout: str = "auto",
                   checkpoint_cells: bool = False, memory_saving: bool = False) -> float:
    """:func:`saved_activations_mb` of one forward along ``path``."""
    model, strategy = build(method, C, layers, device, seed=seed, layout=layout)
    use_path(strategy, path, recompute_depthwise=recompute_depthwise, checkpoint_cells=checkpoint_cells,
             memory_saving=memory_saving)
    return saved_activations_mb(model, strategy.forward, make_batches(batch_size, image_size, device, seed=seed)[0])


def _proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: its peak), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(method: str, path: str, batch_size: int, C: int, layers: int, image_size: int,
                   steps: int = 2, device="cpu", seed: int = 0, threads: Optional[int] = None,
                   recompute_depthwise: bool = False, layout: str = "auto", warmup: int = 0,
                   checkpoint_cells: bool = False, memory_saving: bool = False) -> dict:
    """Peak memory of ``steps`` search steps along ``path``, in MB: CUDA max
    allocated, or on CPU the peak RSS of this process (call it in a fresh one:
    see :func:`memory_in_subprocess`); ``baseline_mb`` after the model, its
    optimisers and the batches exist, ``increase_mb`` the peak above it; and the
    times of the steps after the first ``warmup`` (``steps_ms``)."""
    if threads:
        torch.set_num_threads(threads)
    model, strategy = build(method, C, layers, device, seed=seed, layout=layout)
    train, val = make_batches(batch_size, image_size, device, seed=seed)
    use_path(strategy, path, recompute_depthwise=recompute_depthwise, checkpoint_cells=checkpoint_cells,
             memory_saving=memory_saving)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2 ** 20
    else:
        baseline = _proc_status_mb("VmRSS")
    times = []
    for i in range(steps):
        _sync(device)
        start = time.perf_counter()
        strategy.step(train, val)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a
        # child would report its parent's peak when that is higher.
        peak = _proc_status_mb("VmHWM")
    return dict(peak_mb=peak, baseline_mb=baseline, increase_mb=peak - baseline, steps_ms=[1e3 * t for t in times])


def memory_in_subprocess(method: str, path: str, **options) -> dict:
    """:func:`measure_memory` on CPU, in a fresh Python process (VmHWM is a
    process-lifetime maximum, so each (method, path) needs its own)."""
    spec = dict(method=method, path=path, device="cpu", threads=torch.get_num_threads(), **options)
    return in_fresh_process("pynas.bench.search", "measure_memory", spec, f"memory measurement of {method}/{path}")


def in_fresh_process(module: str, function: str, kwargs: dict, what: str) -> dict:
    """``module.function(**kwargs)`` in a fresh Python process (for a peak RSS of
    its own); ``kwargs`` and the result travel as JSON."""
    code = f"import json, sys; from {module} import {function}; " \
           f"print(json.dumps({function}(**json.loads(sys.argv[1]))))"
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above pynas/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_graphed(method: str, batch_size: int, C: int, layers: int, image_size: int, warmup: int, steps: int,
                 device="cuda", seed: int = 0, recompute_depthwise: bool = False, layout: str = "auto",
                 checkpoint_cells: bool = False, memory_saving: bool = False, capture=None) -> dict:
    """The fused path with each step replayed from a CUDA graph (``--cuda-graphs``,
    :class:`~pynas.search.cuda_graphs.GraphedStep`): seconds per step after the
    graph's eager warm-up steps, its capture and ``warmup`` replays, and the peak
    memory (CUDA max allocated) of the whole sequence. ``capture``: a stand-in for
    :func:`~pynas.search.cuda_graphs.cuda_capture` (tests, on the CPU)."""
    from ..search.cuda_graphs import GraphedStep, check_cuda_graphs

    cuda = torch.device(device).type == "cuda"
    if capture is None:
        check_cuda_graphs(method, torch.device(device).type, checkpoint_cells=checkpoint_cells)
    model, strategy = build(method, C, layers, device, seed=seed, layout=layout)
    train, val = make_batches(batch_size, image_size, device, seed=seed)
    use_path(strategy, "fused", recompute_depthwise=recompute_depthwise, memory_saving=memory_saving)
    graphed = GraphedStep(strategy, **({} if capture is None else {"capture": capture}))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(graphed.warmup + warmup + steps):
        _sync(device)
        start = time.perf_counter()
        graphed(train, val if strategy.bilevel else None)
        _sync(device)
        if graphed.replays > warmup:
            times.append(time.perf_counter() - start)
    if len(times) != steps or graphed.captures != 1:
        raise RuntimeError(f"{method}: the step was captured {graphed.captures} times and replayed "
                           f"{graphed.replays} times in {graphed.warmup + warmup + steps} steps (expected once, "
                           f"then every step)")
    median = statistics.median(times)
    return dict(step_ms=1e3 * median, images_per_s=batch_size / median, steps_ms=[1e3 * t for t in times],
                peak_mb=torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
                eager_steps=graphed.eager_steps, captures=graphed.captures)


def profile_step(method: str, path: str, batch_size: int, C: int, layers: int, image_size: int,
                 device="cpu", row_limit: int = 15, seed: int = 0, recompute_depthwise: bool = False, layout: str = "auto",
                 checkpoint_cells: bool = False, memory_saving: bool = False) -> str:
    """torch.profiler tables of one search step after a warm-up step: the top
    operators by self time and by the memory they allocate themselves."""
    from torch.profiler import ProfilerActivity, profile

    model, strategy = build(method, C, layers, device, seed=seed, layout=layout)
    train, val = make_batches(batch_size, image_size, device, seed=seed)
    use_path(strategy, path, recompute_depthwise=recompute_depthwise, checkpoint_cells=checkpoint_cells,
             memory_saving=memory_saving)
    strategy.step(train, val)
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, profile_memory=True) as prof:
        strategy.step(train, val)
        _sync(device)
    events = prof.key_averages()
    by_time = events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=row_limit)
    by_memory = events.table(sort_by="self_cuda_memory_usage" if cuda else "self_cpu_memory_usage",
                             row_limit=row_limit)
    return f"{method} / {path}: by self time\n{by_time}\n{method} / {path}: by self memory\n{by_memory}"


# -- the benchmark -------------------------------------------------------------------


def run_device(device: str, methods: List[str], size: dict, recompute_depthwise: bool = False, log=print,
               layout: str = "auto", checkpoint_cells: bool = False, memory_saving: bool = False,
               cuda_graphs: bool = False) -> dict:
    """Both paths of every method checked equal, then measured; with
    ``cuda_graphs`` (CUDA), the fused path of each method that can replay its step
    from a graph is timed that way too (``row["fused_graphs"]``)."""
    from ..search.cuda_graphs import GRAPH_METHODS

    if cuda_graphs and device != "cuda":
        raise ValueError(f"--cuda-graphs needs --device cuda, got --device {device}")
    if cuda_graphs and checkpoint_cells:
        raise ValueError("--cuda-graphs and --checkpoint-cells: use one (checkpointing restores the RNG state "
                         "from the host in every step)")
    opts = dict({k: size[k] for k in ("batch_size", "C", "layers", "image_size")},
                recompute_depthwise=recompute_depthwise, layout=layout, checkpoint_cells=checkpoint_cells,
                memory_saving=memory_saving)
    checks = {}
    for method in methods:
        checks[method] = check_paths(method, recompute_depthwise=recompute_depthwise, checkpoint_cells=checkpoint_cells,
                                     memory_saving=memory_saving)
        log(f"{method}: eager and fused give the same loss, gradients and BatchNorm statistics")
    # Memory per (method, path): on CPU in a fresh process each (VmHWM never goes down); two steps, as
    # `pynas bench memory` probes. Time: both paths stepping in turns (time_steps).
    memory = {}
    for method in methods:
        for path in PATHS:
            if device == "cpu":
                memory[method, path] = memory_in_subprocess(method, path, steps=2, **opts)
            else:
                memory[method, path] = measure_memory(method, path, device=device, **opts)
            memory[method, path].pop("steps_ms")
            if device == "cpu":  # in a process of its own: this one's heap would keep GBs of it at batch 64
                memory[method, path]["activations_mb"] = in_fresh_process(
                    "pynas.bench.search", "activations_mb", dict(opts, method=method, path=path, device=device),
                    f"the activations of {method}/{path}")
            else:
                memory[method, path]["activations_mb"] = activations_mb(method, path, device=device, **opts)
            log(f"{method} / {path}: peak {memory[method, path]['peak_mb']:.0f} MB")
    rows = []
    for method in methods:
        times = time_steps(method, warmup=size["warmup"], steps=size["steps"], device=device, **opts)
        row = dict(method=method, round_ratios=times.pop("round_ratios"),
                   cpu_round_ratios=times.pop("cpu_round_ratios"))
        C, layers = method_size(method, size["C"], size["layers"])
        if (C, layers) != (size["C"], size["layers"]):  # built larger, as it needs (NEEDS)
            row["size"] = dict(C=C, layers=layers)
        for path in PATHS:
            row[path] = {**times[path], **memory[method, path]}
        e, f = row["eager"], row["fused"]
        row["loader_ms"] = loader_ms_per_step(method, size["batch_size"], size["image_size"])
        row["search_50_epochs_h"] = {p: search_hours(method, size["batch_size"], row[p]["step_ms"]) for p in PATHS}
        row.update(speedup=statistics.median(row["round_ratios"]),
                   cpu_speedup=statistics.median(row["cpu_round_ratios"]), memory_ratio=f["peak_mb"] / e["peak_mb"],
                   increase_ratio=f["increase_mb"] / e["increase_mb"],
                   activations_ratio=f["activations_mb"] / e["activations_mb"])
        if cuda_graphs and method in GRAPH_METHODS:
            g = row["fused_graphs"] = time_graphed(method, warmup=size["warmup"], steps=size["steps"], device=device,
                                                   **opts)
            row.update(graphs_speedup=g["images_per_s"] / e["images_per_s"],
                       graphs_vs_fused=g["images_per_s"] / f["images_per_s"],
                       graphs_memory_ratio=g["peak_mb"] / e["peak_mb"])
            row["search_50_epochs_h"]["fused_graphs"] = search_hours(method, size["batch_size"], g["step_ms"])
            log(f"{method}: fused with CUDA graphs {g['step_ms']:.0f} ms per step")
        rows.append(row)
        log(f"{method}: eager {e['step_ms']:.0f} ms, fused {f['step_ms']:.0f} ms per step")
    result = dict(benchmark="search", device=device, device_name=device_name(device), threads=torch.get_num_threads(),
                  size=size, recompute_depthwise=recompute_depthwise, layout=layout, checkpoint_cells=checkpoint_cells,
                  memory_saving=memory_saving,
                  cuda_graphs=cuda_graphs,
                  activations=("saved storages of one forward" if not checkpoint_cells else
                               "saved storages; fused: the checkpointed forward's plus one cell's recomputation, "
                               "the largest (bench_search.checkpointed_activations_mb)"),
                  memory="cuda max allocated" if device == "cuda" else "peak RSS, one process per method and path",
                  timing="paths alternating step by step, the order swapped every round"
                         + ("; each path in a process of its own, stepping in turns, heap trimmed before each step"
                            if device == "cpu" else ", in one process"),
                  check=checks, rows=rows)
    by_method = {r["method"]: r for r in rows}
    if "darts" in by_method and "gdas" in by_method:
        result["gdas_vs_darts_fused"] = by_method["gdas"]["fused"]["images_per_s"] / by_method["darts"]["fused"]["images_per_s"]
    return result


def format_table(result: dict) -> str:
    """The result as text: throughput, peak memory (and its increase over the
    process after the model was built), and the activations kept for backward."""
    s = result["size"]
    head = (f"{result['device']} ({result['device_name']}, {result['threads']} threads), torch {result.get('torch', '?')}, "
            f"{result.get('date', '?')}: batch {s['batch_size']}, C = {s['C']}, {s['layers']} cells, "
            f"{s['image_size']}x{s['image_size']}; median of {s['steps']} steps after {s['warmup']}; "
            f"memory: {result['memory']}" + (f"; timing: {result['timing']}" if result.get("timing") else "") + ("; fused: depthwise recomputed" if result.get("recompute_depthwise") else "")
            + ("; fused: cells checkpointed (act. MB: forward + one cell's recomputation)" if result.get("checkpoint_cells") else "")
            + ("; fused: memory-saving forms" if result.get("memory_saving") else "")
            + (f"; layout: {result['layout']} (both paths)" if result.get("layout", "auto") != "auto" else ""))
    cols = [("img/s", "images_per_s", ".2f", "speedup"), ("peak MB", "peak_mb", ".0f", "memory_ratio"),
            ("+MB", "increase_mb", ".0f", "increase_ratio"), ("act. MB", "activations_mb", ".0f", "activations_ratio")]
    header = f"{'method':<14}" + "".join(f"{'eager ' + n:>14}{'fused ' + n:>14}{'fused/eager':>12}" for n, *_ in cols)
    lines = [head, header]
    for r in result["rows"]:
        cells = "".join(f"{r['eager'][k]:>14{fmt}}{r['fused'][k]:>14{fmt}}{r[ratio]:>11.2f}x" for _, k, fmt, ratio in cols)
        lines.append(f"{r['method']:<14}{cells}")
    for r in result["rows"]:
        if "size" in r:
            lines.append(f"{r['method']}: built at C = {r['size']['C']}, {r['size']['layers']} cells (what it needs)")
    for r in result["rows"]:
        if "fused_graphs" in r:
            g = r["fused_graphs"]
            lines.append(f"{r['method']}: fused + CUDA graphs {g['images_per_s']:.2f} img/s ({r['graphs_speedup']:.2f}x eager, "
                         f"{r['graphs_vs_fused']:.2f}x fused), peak {g['peak_mb']:.0f} MB ({r['graphs_memory_ratio']:.2f}x eager)")
    for r in result["rows"]:
        if "round_ratios" in r:  # results before the alternating CPU timing have none
            e, f = r["eager"], r["fused"]
            rounds = " ".join(f"{x:.2f}x" for x in r["round_ratios"])
            cpu_rounds = " ".join(f"{x:.2f}x" for x in r["cpu_round_ratios"])
            lines.append(f"{r['method']}: step eager {e['step_ms']:.0f} ms, fused {f['step_ms']:.0f} ms (medians), "
                         f"fused/eager per round {rounds}; process CPU time eager {e['cpu_step_ms']:.0f} ms, fused "
                         f"{f['cpu_step_ms']:.0f} ms, per round {cpu_rounds} (median {r['cpu_speedup']:.2f}x); "
                         f"data loader {r['loader_ms']:.1f} ms per step")
    for r in result["rows"]:
        hours = ", ".join(f"{path} {h:.1f} h" for path, h in r["search_50_epochs_h"].items())
        lines.append(f"{r['method']}: a 50-epoch CIFAR-10 search at batch {s['batch_size']} and these step times "
                     f"(training steps only): {hours}")
    if "gdas_vs_darts_fused" in result:
        lines.append(f"gdas / darts (fused, images/s): {result['gdas_vs_darts_fused']:.2f}x")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    parser.add_argument("--quick", action="store_true", help=f"CPU size: batch {QUICK['batch_size']}")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(SEED_METHODS),
                        help="(default: the seed methods; the DARTS family beyond them by name)")
    for name in ("batch_size", "C", "layers", "image_size", "warmup", "steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"override the size (full: {FULL[name]}, quick: {QUICK[name]})")
    parser.add_argument("--recompute-depthwise", action="store_true",
                        help="fused path: recompute depthwise conv outputs in backward (pynas.nn.ops.recompute_depthwise)")
    parser.add_argument("--checkpoint-cells", action="store_true",
                        help="fused path: each cell checkpointed (SearchNetwork.checkpoint_cells); act. MB is then the "
                             "checkpointed forward's saves plus the largest cell's recomputation")
    parser.add_argument("--memory-saving", action="store_true",
                        help="fused path: the lean forms that trade time for memory on, as `pynas search "
                             "--memory-saving` (pynas.nn.ops.save_memory; also implied by --checkpoint-cells)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="memory layout of both paths (auto: fused channels-last on CPU, eager NCHW)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time the fused path with each step replayed from a CUDA graph (pynas search "
                             "--cuda-graphs; CUDA, the methods it accepts)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler tables of one step per method and path instead of benchmarking")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"),
                        help="folder for the JSON results ('' to skip writing)")


def run(args):
    import pynas

    device = args.device or ("cuda" if torch.cuda.is_available() and pynas.cuda_kernels_available() else "cpu")
    if device == "cuda" and not (torch.cuda.is_available() and pynas.cuda_kernels_available()):
        raise SystemExit("pynas bench search: --device cuda needs a GPU and pynas' CUDA kernels")
    if args.cuda_graphs and device != "cuda":
        raise SystemExit(f"pynas bench search: --cuda-graphs needs --device cuda, got --device {device}")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = dict(QUICK if args.quick else FULL)
    size.update({k: getattr(args, k) for k in size if getattr(args, k, None) is not None})
    if args.profile:
        shape = {k: size[k] for k in ("batch_size", "C", "layers", "image_size")}
        for method in args.methods:
            for path in PATHS:
                print(profile_step(method, path, device=device, recompute_depthwise=args.recompute_depthwise,
                                   layout=args.layout, checkpoint_cells=args.checkpoint_cells,
                                   memory_saving=args.memory_saving, **shape),
                      flush=True)
        return 0
    # No keep_freed_memory() here (the ops benchmark's): glibc's default, as users
    # run it; with every block below 1 GB on the heap a batch-64 run passed 24 GB.
    stamp = datetime.datetime.now(datetime.timezone.utc)
    result = run_device(device, args.methods, size, args.recompute_depthwise,
                        log=lambda m: print(m, file=sys.stderr, flush=True), layout=args.layout,
                        checkpoint_cells=args.checkpoint_cells, memory_saving=args.memory_saving,
                        cuda_graphs=args.cuda_graphs)
    result.update(torch=torch.__version__, pynas=pynas.__version__, date=stamp.isoformat(timespec="seconds"),
                  quick=args.quick)
    print(format_table(result), flush=True)
    if args.out:
        name = (f"search-{device}{'-quick' if args.quick else ''}{'-recompute' if args.recompute_depthwise else ''}"
                f"{'-checkpoint' if args.checkpoint_cells else ''}{'-memory-saving' if args.memory_saving else ''}"
                f"{'-graphs' if args.cuda_graphs else ''}"
                f"{'' if args.layout == 'auto' else '-' + args.layout}"
                f"-{stamp:%Y%m%d}.json")
        path = os.path.join(args.out, name)
        write_json(path, result)
        print(f"wrote {path}", flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args())
