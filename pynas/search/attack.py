"""SDARTS-ADV's adversarial perturbation of the weight step (Chen & Hsieh 2020,
"Stabilizing Differentiable Architecture Search via Perturbation-based
Regularization"), as xiangning-chen/SmoothDARTS runs it: ``Linf_PGD_alpha``
(attacker/perturb.py:11-44) between ``softmax_arch_parameters`` and the weight
step (sota/cnn/train_search.py:214-234).

The weight step's forward sees Ā, not softmax(α): Ā is a PGD attack on the
weight step's own batch within the L∞ ball of radius ε around Ā₀ = softmax(α),
kept only if it raised the loss. α itself is untouched (the code overwrites α
with Ā and restores it after the step; here :meth:`Architecture.replaced` gives
the forward Ā instead).
"""
import contextlib
from typing import Dict, List, Optional

import torch

from ..arch import _clip_renormalise
from .parts import UniformNoise
from .strategies import _world_size


class AdversarialAttack(UniformNoise):
    """SDARTS-ADV's perturbation. In each weight step, with ε(e) = ε_start +
    (ε − ε_start)·e/E (e: epochs done, E: the search's epochs; train_search.py:169-171):

    1. the whole model in eval mode (BatchNorm uses its running statistics and
       does not update them; perturb.py:12-14), each module's flag restored after;
    2. Ā₀ = softmax(α) per cell type (masked entries 0); loss_before = CE at Ā₀;
    3. random start Ā = clip(Ā₀ + U(−ε, ε)) (perturb.py:19-22);
    4. ``steps`` times: Ā ← Ā + (2ε/steps)·sign(∇_Ā CE), then projected
       elementwise onto [Ā₀ − ε, Ā₀ + ε], then clipped (perturb.py:24-34; the
       ascent is ``Linf_SGD``'s descent on −CE, attacker/linf_sgd.py:72, 89);
    5. loss_after = CE at Ā; if loss_before > loss_after, Ā = Ā₀ (a tie keeps
       the attack; perturb.py:38-42).

    ``clip`` (sota/cnn/model_search.py:170-177) clamps each edge to [0, 1] and
    divides by its sum (:func:`pynas.arch._clip_renormalise`), so the clip after
    the projection can leave the ball. CE is the strategy's loss function alone
    (``strategy.loss(batch, None)``; SmoothDARTS' ``_loss`` is its criterion, CE).
    The attack's gradient reaches Ā only: no weight or α gets a ``.grad`` from it.

    The uniform start is drawn on the host (:meth:`prepare`) from the attack's
    own generator, in float64 on the CPU, then cast: the same on every device
    and rank, and resumable (:meth:`state_dict`).

    Data parallel: each rank attacks its own shard of the batch, so its gradient
    signs and its losses differ from the other ranks'. The attack's gradient is
    averaged over ranks before its sign, and the two losses before they are
    compared, so that every rank holds the same Ā (the attack on the union of
    the shards, each under its rank's BatchNorm statistics): the weight step's
    averaged gradient is then that of one perturbed supernet, not a mixture of
    differently perturbed ones.

    After each weight step: ``last_epsilon`` (float), ``last_loss_before``,
    ``last_loss_after`` (0-d tensors), ``last_reverted`` (a 0-d bool tensor:
    reading it is a host synchronisation).
    """

    name = "adversarial"

    generator_key = "attack_generator"

    def __init__(self, epsilon: float = 0.3, epsilon_start: float = 0.03, steps: int = 7, seed: int = 0):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"--attack-steps must be an integer >= 1, got {steps!r}")
        super().__init__(epsilon, epsilon_start, seed)  # self.noise: the next attack's random start
        self.steps = steps
        self.last_loss_before: Optional[torch.Tensor] = None
        self.last_loss_after: Optional[torch.Tensor] = None
        self.last_reverted: Optional[torch.Tensor] = None

    @contextlib.contextmanager
    def weight_step(self, strategy, batch):
        """The weight step under Ā, the attack on ``batch`` (the weight step's own)."""
        if not self.noise:  # a weight step run without the strategy's prepare_step
            self.prepare(strategy)
        attacked = self.attack(strategy, batch)
        with strategy.model.arch.replaced(attacked):
            yield

    def attack(self, strategy, batch) -> Dict[str, torch.Tensor]:
        """Ā per cell type (``[E, K]``, detached) for ``batch``; see the class docstring."""
        model, arch, eps = strategy.model, strategy.model.arch, self.last_epsilon
        types = list(arch.cell_types)
        masks = {t: arch.mask(t) for t in types}
        with torch.no_grad():
            clean = {t: arch.probabilities(t).detach() for t in types}
        training = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            loss_before = self._loss(strategy, batch, clean)
            current = {t: _clip_renormalise(clean[t] + self.noise[t].to(clean[t]), masks[t]) for t in types}
            step = 2 * eps / self.steps
            for _ in range(self.steps):
                grads = self._gradient(strategy, batch, current)
                with torch.no_grad():
                    for t, g in zip(types, grads):
                        moved = current[t] + step * g.sign()
                        # As the code projects: Ā₀ + clamp(Ā − Ā₀, −ε, ε).
                        current[t] = _clip_renormalise(clean[t] + (moved - clean[t]).clamp(-eps, eps), masks[t])
            loss_after = self._loss(strategy, batch, current)
        finally:
            for m, flag in training:
                m.training = flag
        before, after = _averaged([loss_before, loss_after])
        reverted = before > after
        self.last_loss_before, self.last_loss_after, self.last_reverted = before, after, reverted
        return {t: torch.where(reverted, clean[t], current[t]) for t in types}

    @staticmethod
    def _loss(strategy, batch, weights) -> torch.Tensor:
        with torch.no_grad(), strategy.model.arch.replaced(weights):
            return strategy.loss(batch, None)[0].detach()

    @staticmethod
    def _gradient(strategy, batch, weights) -> List[torch.Tensor]:
        """∇_Ā CE at ``weights`` (averaged over ranks), one per cell type in order."""
        leaves = {t: w.detach().requires_grad_(True) for t, w in weights.items()}
        with torch.enable_grad(), strategy.model.arch.replaced(leaves):
            loss = strategy.loss(batch, None)[0]
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        # A cell type the network never reads (no cell of it) has no gradient: it does not move.
        return _averaged([torch.zeros_like(w) if g is None else g for g, w in zip(grads, leaves.values())])


def _averaged(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """The tensors averaged over the data-parallel processes (one all_reduce); as they are alone."""
    world = _world_size()
    if world == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat.div_(world)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out
