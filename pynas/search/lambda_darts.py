"""Λ-DARTS (Movahedi et al., ICLR 2023) as its authors' code runs it
(dr-faustus/Lambda-DARTS @ c7ac3ba): DARTS first order whose weight step adds a
finite-difference term that pushes the α-gradients of the normal cells towards
one another (the "layer alignment" of the paper).

The weight step (sota/cnn/train_search.py:233-249, model_search.py:127-150, 234-283):

1. One forward/backward on the training batch with a detached copy A_l of the
   edge weights (softmax(α)) for every cell l: the weights' gradient g and each
   cell's gradient g_l = ∂L/∂A_l.
2. For the L normal cells, u_l = g_l/‖g_l‖ and
   p_l = c·(1/‖g_l‖)(I − u_l u_lᵀ)·Σ_m u_m, c = 1/(L(L−1)/2)
   (:func:`lambda_perturbation`); reduction cells get p = 0 (model_search.py:264-265).
3. ε = ε₀/‖concat(p)‖; two more forward/backward passes with A_l − ε·p_l and
   A_l + ε·p_l give g⁺ and g⁻, the gradients of the bare loss w.r.t. the weights.
4. g += λ(e)·(g⁺ − g⁻)/(2ε) (model_search.py:280-283), λ(e) = λ·e/(E − 1)
   (train_search.py:168-169); then clipping and the SGD step.

At the authors' ε₀ this is a finite difference, not a Hessian-vector product:
ReLUs and max pools may switch between the passes, and a `noise` operation draws
afresh in each pass; it is computed as the code does (three training-mode
forwards, so BatchNorm's running statistics move three times per step).

NAS-Bench-201 (NAS-Bench201/exps/algos/DARTS-V1.py:38-63) runs the weight step
before α's step and perturbs every search cell: ``weight_first`` defaults to that
order on an :class:`~pynas.nn.nb201.NB201Network`.
"""
import contextlib
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.cells import SearchCell
from ..nn.nb201 import NB201Network, NB201SearchCell
from .strategies import DartsFirstOrder, _metrics, _world_size, _zero_if_none


def lambda_perturbation(grads: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Λ-DARTS' perturbation of each normal cell's edge weights (model_search.py:242-250,
    ``corr``): p_l = c·(1/‖g_l‖)(I − u_l u_lᵀ)·Σ_m u_m with u_l = g_l/‖g_l‖ and
    c = 1/(L(L−1)/2), L = len(grads) >= 2; each p_l has g_l's shape. The projection
    is applied as s − u_l(u_lᵀs), which equals (I − u_l u_lᵀ)s without the matrix.
    A cell whose gradient is zero has no direction: its u_l and p_l are 0 (the
    authors' code gives NaN there)."""
    L = len(grads)
    if L < 2:
        raise ValueError(f"lambda_perturbation: the alignment needs at least two normal cells' gradients, got {L}")
    flat = [g.reshape(-1) for g in grads]
    norms = [f.norm() for f in flat]
    inv = [torch.where(n > 0, 1 / n, torch.zeros_like(n)) for n in norms]
    u = [f * i for f, i in zip(flat, inv)]
    total = sum(u)
    c = 1.0 / (L * (L - 1) / 2)
    return [(c * i * (total - u_l * torch.dot(u_l, total))).reshape(g.shape) for g, u_l, i in zip(grads, u, inv)]


def lambda_at(lam: float, epoch: int, epochs: int) -> float:
    """λ(e) = λ·e/(E − 1) (train_search.py:169; DARTS-V1.py:197), e 0-based; a
    one-epoch search (where the code divides by zero) stays at the schedule's start, 0."""
    return 0.0 if epochs <= 1 else lam * epoch / (epochs - 1)


def _check_positive(value, option: str, allow_zero: bool) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{option} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


class _PerCellWeights:
    """Within :meth:`substituting`, every search cell of ``model`` runs with its own
    edge weights in place of the shared ones its network hands it: on the first
    forward a detached copy (a leaf that requires grad, so the cell's ∂L/∂A_l is
    its gradient); later, that copy minus ``shifts[l]``. The network's own forward
    runs (its layout, checkpointing, PC-DARTS' edge weights, SDARTS' noise)."""

    def __init__(self, model: nn.Module):
        # (cell, position of its `weights` argument, whether it is perturbed)
        self.cells = [(m, 2, not m.reduction) for m in model.modules() if isinstance(m, SearchCell)] \
            + [(m, 1, True) for m in model.modules() if isinstance(m, NB201SearchCell)]
        self.leaves: List[Optional[torch.Tensor]] = [None] * len(self.cells)

    @property
    def perturbed(self) -> List[int]:
        return [i for i, (_, _, p) in enumerate(self.cells) if p]

    @contextlib.contextmanager
    def substituting(self, shifts: Optional[Dict[int, torch.Tensor]] = None):
        def hook_for(i, position):
            def hook(module, args):
                if self.leaves[i] is None:
                    self.leaves[i] = args[position].detach().clone().requires_grad_(True)
                w = self.leaves[i] if shifts is None or i not in shifts else self.leaves[i].detach() - shifts[i]
                return args[:position] + (w,) + args[position + 1:]
            return hook

        handles = [cell.register_forward_pre_hook(hook_for(i, pos)) for i, (cell, pos, _) in enumerate(self.cells)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


class LambdaDarts(DartsFirstOrder):
    """Λ-DARTS: DARTS first order plus λ(e)·(g⁺ − g⁻)/(2ε) in the weights' gradient
    (see the module's docstring). ``lam`` λ (``--lambda``, the code's default
    0.125; 0: DARTS first order exactly), ``epsilon0`` ε₀ (``--lambda-epsilon``,
    the code's default 1e-4), ``weight_first``: the weight step before α's
    (None: on NAS-Bench-201's supernet, as its code; DARTS' order elsewhere)."""

    name = "lambda-darts"

    def __init__(self, model, config, steps_per_epoch, loss_fn=F.cross_entropy, lam: float = 0.125,
                 epsilon0: float = 1e-4, weight_first: Optional[bool] = None, schedule_epochs: Optional[int] = None,
                 **parts):
        self.lam = _check_positive(lam, "--lambda", allow_zero=True)
        # E of λ(e) = λ·e/(E − 1) (None: the config's epochs; DARTS-PT's tuning: the search's).
        self.schedule_epochs = schedule_epochs
        self.epsilon0 = _check_positive(epsilon0, "--lambda-epsilon", allow_zero=False)
        super().__init__(model, config, steps_per_epoch, loss_fn, **parts)
        self.weight_first = isinstance(model, NB201Network) if weight_first is None else bool(weight_first)
        arch = model.arch
        if self.lam > 0:
            if arch.relaxation != "softmax" or arch.sample_per == "sample":
                raise ValueError(f"--lambda: Λ-DARTS perturbs each cell's softmax(α); --relaxation "
                                 f"{arch.relaxation} (sample_per={arch.sample_per}) gives other weights")
            normal = len(_PerCellWeights(model).perturbed)
            if normal < 2:
                raise ValueError(f"--lambda: Λ-DARTS aligns the gradients of at least two normal cells, the "
                                 f"supernet has {normal} (raise --layers)")

    def lambda_now(self) -> float:
        """λ(e) of the epoch being trained (e = epochs done, E = the config's epochs)."""
        return lambda_at(self.lam, self.epochs_done, self.schedule_epochs or self.config.epochs)

    def step_body(self, train_batch, val_batch, alpha_trains):
        if not self.weight_first:
            return super().step_body(train_batch, val_batch, alpha_trains)
        metrics = self.weight_step(train_batch)
        if alpha_trains:
            self.arch_step(train_batch, val_batch)
        return metrics

    def _weight_step(self, batch) -> Dict[str, torch.Tensor]:
        if self.lam == 0:  # the authors' `--corr_regularization none`: no extra passes
            return super()._weight_step(batch)
        self.w_opt.zero_grad(set_to_none=True)
        cells = _PerCellWeights(self.model)
        with cells.substituting():
            loss, logits = self.loss(batch, "weights")
        n = len(self.weights)
        grads = torch.autograd.grad(loss, self.weights + cells.leaves, allow_unused=True)
        g = [_zero_if_none(gi, w) for gi, w in zip(grads[:n], self.weights)]
        normal = cells.perturbed
        g_cells = [_zero_if_none(grads[n + i], cells.leaves[i]) for i in normal]
        if _world_size() > 1:  # every rank builds p from the whole batch's gradients, so all use the same p
            g_cells = self._averaged(g_cells)
        p = lambda_perturbation(g_cells)
        norm = torch.cat([pl.reshape(-1) for pl in p]).norm()
        # p = 0 (every gradient parallel): ε·p = 0 and the term vanishes instead of the code's division by zero.
        eps = self.epsilon0 / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        shifts = {i: eps * pl for i, pl in zip(normal, p)}
        g_plus = self._bare_grads(cells, batch, shifts)  # at A − εp (the code's `forward_grads`)
        g_minus = self._bare_grads(cells, batch, {i: -s for i, s in shifts.items()})  # at A + εp
        lam_e = self.lambda_now()
        for w, gi, gp, gm in zip(self.weights, g, g_plus, g_minus):
            w.grad = gi + lam_e * ((gp - gm) / (2 * eps))
        self.sync(self.weights)
        nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.w_opt.step()
        return _metrics(loss, logits, batch[1])

    def _bare_grads(self, cells: _PerCellWeights, batch, shifts) -> List[torch.Tensor]:
        """The weights' gradient of the loss function alone (the code's criterion) with A_l − shifts[l]."""
        with cells.substituting(shifts):
            loss, _ = self.loss(batch, None)
        grads = torch.autograd.grad(loss, self.weights, allow_unused=True)
        return [_zero_if_none(gi, w) for gi, w in zip(grads, self.weights)]

    @staticmethod
    def _averaged(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat.div_(_world_size())
        return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
