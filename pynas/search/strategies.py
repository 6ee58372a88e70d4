"""Search strategies: how one step updates the weights w and the architecture α.

Each strategy works on any model with ``weight_parameters()``,
``arch_parameters()`` and an ``arch`` (:class:`~pynas.arch.Architecture`), e.g.
:class:`~pynas.nn.SearchNetwork`. ``step(train_batch, val_batch)`` does one
search step; ``epoch_end()`` advances the learning-rate schedule.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class SearchConfig:
    """The public DARTS defaults (weights: SGD with cosine annealing; α: Adam)."""

    epochs: int = 50
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_betas: Tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = 1e-3


def _global_norm(tensors: List[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.detach().double() ** 2).sum() for t in tensors))


class Strategy:
    """Weight optimiser and schedule shared by every strategy."""

    name = "base"
    bilevel = True  # whether step() uses the validation batch for α

    def __init__(self, model: nn.Module, config: SearchConfig, steps_per_epoch: int,
                 loss_fn: Callable = F.cross_entropy):
        self.model, self.config, self.loss_fn = model, config, loss_fn
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.weights = list(model.weight_parameters())
        self.alphas = list(model.arch_parameters())
        self.w_opt = torch.optim.SGD(self.weights, lr=config.w_lr, momentum=config.w_momentum,
                                     weight_decay=config.w_weight_decay)
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, config.epochs, eta_min=config.w_lr_min)
        self.a_opt = torch.optim.Adam(self.alphas, lr=config.a_lr, betas=config.a_betas,
                                      weight_decay=config.a_weight_decay) if self.alphas else None
        self.global_step = 0
        self.device = next(iter(self.weights)).device
        self.forward = model  # may be replaced by a torch.compile'd model
        self.autocast_dtype: Optional[torch.dtype] = None  # e.g. torch.bfloat16
        self.channels_last = False

    def sync(self, params: List[torch.Tensor]) -> None:
        """Averages gradients over processes (data parallel); a no-op alone.
        Every rank makes the same calls in the same order, so every rank steps
        with bit-identical gradients and keeps bit-identical α."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)

    # -- pieces ---------------------------------------------------------------
    def loss(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            logits = self.model(x) if self.forward is self.model else self.forward(x)
        logits = logits.float()
        return self.loss_fn(logits, y), logits

    def weight_step(self, batch: Batch) -> Dict[str, float]:
        self.w_opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(batch)
        # Gradients for the weights only: the α side of every mixed_sum is skipped.
        grads = torch.autograd.grad(loss, self.weights, allow_unused=True)
        for w, g in zip(self.weights, grads):
            w.grad = g
        self.sync(self.weights)
        nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.w_opt.step()
        return _metrics(loss, logits, batch[1])

    def arch_step(self, train_batch: Batch, val_batch: Batch) -> None:
        self.a_opt.zero_grad(set_to_none=True)
        loss, _ = self.loss(val_batch)
        grads = torch.autograd.grad(loss, self.alphas)
        for a, g in zip(self.alphas, grads):
            a.grad = g
        self.sync(self.alphas)
        self.a_opt.step()

    def progress(self) -> float:
        return self.global_step / (self.config.epochs * self.steps_per_epoch)

    # -- the step -------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Optional[Batch]) -> Dict[str, float]:
        """DARTS order: α first (on the validation batch), then the weights."""
        self.model.arch.set_progress(self.progress())
        if self.a_opt is not None:
            self.arch_step(train_batch, val_batch)
        metrics = self.weight_step(train_batch)
        self.global_step += 1
        return metrics

    def epoch_end(self) -> None:
        self.w_sched.step()

    def state_dict(self):
        return {"w_opt": self.w_opt.state_dict(), "w_sched": self.w_sched.state_dict(),
                "a_opt": self.a_opt.state_dict() if self.a_opt else None, "global_step": self.global_step}

    def load_state_dict(self, state):
        self.w_opt.load_state_dict(state["w_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        if self.a_opt is not None:
            self.a_opt.load_state_dict(state["a_opt"])
        self.global_step = state["global_step"]


class DartsFirstOrder(Strategy):
    """DARTS (first order): ∇α L_val(w, α), then a weight step on L_train."""

    name = "darts"


class DartsSecondOrder(Strategy):
    """DARTS (second order): ∇α L_val(w', α) − η·H with the virtual step
    w' = w − η(momentum·buffer + ∇w L_train(w) + wd·w) and
    H = (∇α L_train(w⁺) − ∇α L_train(w⁻)) / 2R, w± = w ± R·∇w' L_val(w'),
    R = 0.01 / ‖∇w' L_val(w')‖. Weights (and BN statistics) are restored exactly."""

    name = "darts-2nd"

    def arch_step(self, train_batch, val_batch):
        eta = self.w_opt.param_groups[0]["lr"]
        momentum, wd = self.config.w_momentum, self.config.w_weight_decay
        saved_w = [w.detach().clone() for w in self.weights]
        saved_buffers = [b.detach().clone() for b in self.model.buffers()]

        # Virtual step w' = w − η(momentum·buffer + ∇w L_train + wd·w).
        loss, _ = self.loss(train_batch)
        g_train = torch.autograd.grad(loss, self.weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(self.weights, g_train):
                buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
                step = (0 if g is None else g) + wd * w
                if buf is not None:
                    step = step + momentum * buf
                w.sub_(eta * step)

        # ∇α and ∇w' of L_val at w'.
        loss, _ = self.loss(val_batch)
        grads = torch.autograd.grad(loss, self.alphas + self.weights, allow_unused=True)
        g_alpha = [_zero_if_none(g, a) for g, a in zip(grads[:len(self.alphas)], self.alphas)]
        v = [_zero_if_none(g, w) for g, w in zip(grads[len(self.alphas):], self.weights)]
        R = 0.01 / float(_global_norm(v))

        def alpha_grad_at(sign):
            with torch.no_grad():
                for w, w0, vi in zip(self.weights, saved_w, v):
                    w.copy_(w0).add_(vi, alpha=sign * R)
            loss, _ = self.loss(train_batch)
            return [_zero_if_none(g, a) for g, a in
                    zip(torch.autograd.grad(loss, self.alphas, allow_unused=True), self.alphas)]

        g_pos, g_neg = alpha_grad_at(+1), alpha_grad_at(-1)
        with torch.no_grad():
            for w, w0 in zip(self.weights, saved_w):
                w.copy_(w0)
            for b, b0 in zip(self.model.buffers(), saved_buffers):
                b.copy_(b0)
        self.a_opt.zero_grad(set_to_none=True)
        for a, ga, gp, gn in zip(self.alphas, g_alpha, g_pos, g_neg):
            a.grad = ga - eta * (gp - gn) / (2 * R)
        self.sync(self.alphas)
        self.a_opt.step()


class SingleLevel(Strategy):
    """Single-DARTS (and SNAS, DSNAS): weights and α from the identical batch of
    the training set, one backward pass, both optimisers step."""

    name = "single-level"
    bilevel = False

    def step(self, train_batch, val_batch=None):
        self.model.arch.set_progress(self.progress())
        self.w_opt.zero_grad(set_to_none=True)
        if self.a_opt is not None:
            self.a_opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(train_batch)
        loss.backward()
        self.sync(self.weights + self.alphas)
        nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.w_opt.step()
        if self.a_opt is not None:
            self.a_opt.step()
        self.global_step += 1
        return _metrics(loss, logits, train_batch[1])


class Snas(SingleLevel):
    """SNAS: single-level with soft Gumbel samples (the relaxation of the
    model's ``arch``) and, optionally, the resource constraint λ·E_Z[C(Z)]."""

    name = "snas"

    def __init__(self, model, config, steps_per_epoch, loss_fn=F.cross_entropy, constraint=None,
                 image_size: Optional[int] = None):
        super().__init__(model, config, steps_per_epoch, loss_fn)
        self.constraint = constraint
        if constraint is not None:
            if image_size is None:
                raise ValueError("Snas: a resource constraint needs `image_size`")
            self.tables = constraint.tables(model, image_size)
        self.last_cost = 0.0

    def loss(self, batch):
        loss, logits = super().loss(batch)
        if self.constraint is None or not torch.is_grad_enabled():
            return loss, logits
        penalty = self.constraint.penalty(self.model.arch, self.tables)
        self.last_cost = float(penalty.detach())
        return loss + penalty, logits


class FixedAlpha(Strategy):
    """α frozen (uniform): trains the supernet alone, for perturbation-based
    selection with fixed α (DARTS-PT Sec. 6.3)."""

    name = "fixed"
    bilevel = False

    def __init__(self, model, config, steps_per_epoch, loss_fn=F.cross_entropy):
        for a in model.arch_parameters():
            a.requires_grad_(False)
            with torch.no_grad():
                a.zero_()
        super().__init__(model, config, steps_per_epoch, loss_fn)
        self.alphas, self.a_opt = [], None


def _zero_if_none(g, like):
    return torch.zeros_like(like) if g is None else g


def _metrics(loss, logits, y):
    y = y.to(logits.device)
    return {"loss": float(loss.detach()), "acc": float((logits.detach().argmax(-1) == y).float().mean())}


# method name -> (strategy class, relaxation, extra Architecture options)
METHODS = {
    "darts": (DartsFirstOrder, "softmax", {}),
    "darts-2nd": (DartsSecondOrder, "softmax", {}),
    "single-level": (SingleLevel, "softmax", {}),
    "snas": (Snas, "gumbel", {}),
    "gdas": (DartsFirstOrder, "gumbel_hard", {}),
    "dsnas": (SingleLevel, "categorical", {}),
    "fixed": (FixedAlpha, "softmax", {"init": "zeros"}),
}
