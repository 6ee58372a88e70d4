"""DrNAS' progressive learning (Chen et al., ICLR 2021), as its code runs it in the
DARTS space (xiangning-chen/DrNAS DARTS-space/train_search.py:119-160) and on
NAS-Bench-201 (201-space/train_search_progressive.py:189-255).

The search runs in stages. Stage i trains with partial channels K_i (PC-DARTS'
operated slice, bypass and shuffle, without edge normalisation) and
``keep_ops[i]`` operations per edge. At the end of a stage (in :meth:`epoch_end`)
each edge keeps its ``keep_ops[i+1]`` largest α (utils.py:197-207 ``prune`` with
``reset=False``: the kept α keep their values, the others are set to 0 and masked
by :meth:`~pynas.arch.Architecture.remove_op`), then every operation is widened
to C/K_{i+1} channels Net2Net-style (:func:`pynas.nn.widen.widen`; the weights'
SGD momentum widened alike). α's Adam state is kept (train_search.py:149 leaves
its reset commented out).

- Defaults: the DARTS-space code's ``ks = [6, 4]``, ``num_keeps = [7, 4]``
  (train_search.py:120-121) in a 7-operation space (no ``none``); each stage half
  of the epochs (its 25 + 25 of 50; an odd count gives the last stage the extra
  epoch). NAS-Bench-201's progressive variant: ``partial_channels=(4, 2)``,
  ``keep_ops=(5, 3)``, 50 + 50 epochs (train_search_progressive.py:189-191).
- α is frozen in the first epochs of every stage: the code trains α when the
  stage-local epoch is >= 10 (train_search.py:182, with the stage's ``e`` passed
  at 136), 10 of the DARTS space's 25-epoch stages. pynas scales this to the
  stage's length: ``floor(frozen_fraction · stage_epochs + 0.5)`` epochs, with
  ``frozen_fraction`` 10/25 = 0.4 (NAS-Bench-201's code: 10 of 50, 0.2).
- The weights' learning rate is one cosine over all epochs, epoch e at η(e)
  (T_max = the search's epochs; train_search.py:123-124). The code builds a new
  SGD at lr 0.1 after widening and loads the old scheduler's state into a new
  scheduler on it (net2wider.py:113-116); with PyTorch's recursive cosine form the
  second stage then trains at 0.1/η(25) · η(e) = 2·η(e) at its defaults. pynas keeps
  the one optimiser and schedule: η(e) throughout.
- Widening draws its indices from a CPU generator seeded with ``seed`` and the
  stage: the same on every data-parallel rank, and a resumed run (which rebuilds
  the widened shapes with :meth:`restore_structure` and then loads the weights)
  is the uninterrupted run.

The relaxation is the model's (DrNAS' own is a Dirichlet; this order works with any soft one).
"""
import math
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..nn.widen import mixed_ops, partial_channels_of, widen
from .strategies import DartsFirstOrder

# train_search.py:182 (α trains at stage-local epoch >= 10) of train_search.py:122's 25-epoch stages.
DARTS_FROZEN_FRACTION = 10 / 25


class ProgressiveDrnas(DartsFirstOrder):
    """DrNAS' first-order search in stages of partial channels ``partial_channels``
    and operations per edge ``keep_ops`` (see the module's text). ``stage_epochs``:
    epochs per stage (None: the config's epochs split evenly); ``frozen_fraction``:
    the share of each stage, from its start, in which α is not trained; ``seed``:
    of the widening's draws."""

    name = "drnas"

    def __init__(self, model, config, steps_per_epoch, loss_fn: Callable = F.cross_entropy, *,
                 partial_channels: Sequence[int] = (6, 4), keep_ops: Sequence[int] = (7, 4),
                 stage_epochs: Optional[Sequence[int]] = None, frozen_fraction: float = DARTS_FROZEN_FRACTION,
                 seed: int = 0, **parts):
        super().__init__(model, config, steps_per_epoch, loss_fn, **parts)
        self.stage_partial_channels = _positive_ints(partial_channels, "partial_channels")
        self.keep_ops = _positive_ints(keep_ops, "keep_ops")
        n = len(self.stage_partial_channels)
        if len(self.keep_ops) != n:
            raise ValueError(f"drnas: `keep_ops` {list(self.keep_ops)} must name one count per stage, like "
                             f"`partial_channels` {list(self.stage_partial_channels)}")
        if any(a <= b for a, b in zip(self.stage_partial_channels, self.stage_partial_channels[1:])):
            raise ValueError(f"drnas: `partial_channels` {list(self.stage_partial_channels)} must decrease from "
                             f"stage to stage (each stage widens the operations)")
        if any(a < b for a, b in zip(self.keep_ops, self.keep_ops[1:])):
            raise ValueError(f"drnas: `keep_ops` {list(self.keep_ops)} must not increase (pruning only removes)")
        K = partial_channels_of(model)
        if K != self.stage_partial_channels[0]:
            raise ValueError(f"drnas: the supernet has partial channels {K}, but the first stage's "
                             f"`partial_channels` is {self.stage_partial_channels[0]}: build it with that K")
        for edge in mixed_ops(model):  # refused now, not after the first stage's training
            bad = [k for k in self.stage_partial_channels[1:] if edge.channels % k or (edge.stride == 2 and
                                                                                       (edge.channels // k) % 2)]
            if bad:
                raise ValueError(f"drnas: `partial_channels` {bad[0]} does not widen an edge of {edge.channels} "
                                 f"channels: K must divide each edge's channels (and leave an even C/K on a "
                                 f"reduction edge, for its factorized reduce)")
        arch = model.arch
        for t in arch.cell_types:
            counts = set(arch.mask(t).sum(-1).tolist())
            if counts != {self.keep_ops[0]}:
                raise ValueError(f"drnas: the first stage's `keep_ops` {self.keep_ops[0]} must be the operations "
                                 f"each edge has ({sorted(counts)} in {t!r} cells; DrNAS' DARTS space has 7, "
                                 f"without `none`: --space darts-no-none)")
        if stage_epochs is None:
            base = config.epochs // n
            stage_epochs = [base] * (n - 1) + [config.epochs - base * (n - 1)]
        self.stage_epochs = _positive_ints(stage_epochs, "stage_epochs")
        if len(self.stage_epochs) != n or sum(self.stage_epochs) != config.epochs:
            raise ValueError(f"drnas: `stage_epochs` {list(self.stage_epochs)} must give each of the {n} stages at "
                             f"least one epoch and sum to the epochs, {config.epochs}")
        if isinstance(frozen_fraction, bool) or not isinstance(frozen_fraction, (int, float)) \
                or not 0 <= frozen_fraction < 1:
            raise ValueError(f"drnas: `frozen_fraction` must be in [0, 1), got {frozen_fraction!r}")
        if config.warmup_epochs:
            raise ValueError(f"drnas: α's frozen epochs are per stage (`frozen_fraction`); --warmup-epochs must be 0, "
                             f"got {config.warmup_epochs}")
        self.frozen_epochs = [math.floor(frozen_fraction * e + 0.5) for e in self.stage_epochs]
        self.seed = seed

    # -- the schedule -----------------------------------------------------------
    def stage_of(self, epoch: int) -> int:
        """The stage that trains 0-based ``epoch``."""
        end = 0
        for stage, epochs in enumerate(self.stage_epochs):
            end += epochs
            if epoch < end:
                return stage
        return len(self.stage_epochs) - 1

    def stage_start(self, stage: int) -> int:
        return sum(self.stage_epochs[:stage])

    def partial_channels_at(self, epoch: int) -> int:
        """K while 0-based ``epoch`` trains."""
        return self.stage_partial_channels[self.stage_of(epoch)]

    @property
    def partial_channels(self) -> int:
        """The supernet's partial channels now."""
        return partial_channels_of(self.model)

    def alpha_trains(self) -> bool:
        """α trains from the stage's ``frozen_epochs``-th epoch on (train_search.py:182)."""
        stage = self.stage_of(self.epochs_done)
        local = self.epochs_done - self.stage_start(stage)
        return self.a_opt is not None and local >= self.frozen_epochs[stage]

    def epoch_end(self) -> None:
        super().epoch_end()
        stage = self.stage_of(self.epochs_done)
        if stage > 0 and self.epochs_done == self.stage_start(stage):
            self.prune(self.keep_ops[stage])
            self._widen(stage, self.w_opt)

    # -- the boundary -------------------------------------------------------------
    def prune(self, keep: int) -> None:
        """Each edge keeps its ``keep`` largest α among its operations (ties: the first);
        the others are masked and their α set to 0 (utils.py:197-207, ``reset=False``)."""
        arch = self.model.arch
        with torch.no_grad():
            for t in arch.cell_types:
                alpha, mask = arch.alphas[t], arch.mask(t)
                for e in range(arch.num_edges):
                    live = [k for k in range(len(arch.ops)) if bool(mask[e, k])]
                    ranked = sorted(live, key=lambda k: (-float(alpha[e, k]), k))
                    for k in ranked[keep:]:
                        arch.remove_op(t, e, k)
                        alpha[e, k] = 0.0

    def _widen(self, stage: int, optimizer) -> None:
        generator = torch.Generator().manual_seed(self.seed * 1000 + stage)
        widen(self.model, self.stage_partial_channels[stage], generator, optimizer)
        # The optimiser now holds the new parameters; so must the steps and the data-parallel reduction.
        self.weights = list(self.model.weight_parameters())
        self._weight_reduction = None

    def restore_structure(self, epochs_done: int) -> None:
        """Gives a freshly built supernet and this (fresh) strategy the shapes of a
        search after ``epochs_done`` epochs (the stages' widenings), before a
        checkpoint's model state (weights, α, masks) and this strategy's state are
        loaded into them."""
        if self.partial_channels != self.stage_partial_channels[0] or self.epochs_done:
            raise ValueError("drnas: restore_structure needs the supernet and strategy as built (first stage)")
        if isinstance(epochs_done, bool) or not isinstance(epochs_done, int) \
                or not 0 <= epochs_done <= self.config.epochs:
            raise ValueError(f"drnas: `epochs_done` must be an epoch count in [0, {self.config.epochs}], "
                             f"got {epochs_done!r}")
        for stage in range(1, self.stage_of(epochs_done) + 1):
            self._widen(stage, self.w_opt)

    def load_state_dict(self, state):
        expected = self.partial_channels_at(state["epochs_done"])
        if self.partial_channels != expected:
            raise ValueError(f"drnas: a state after {state['epochs_done']} epochs needs the supernet at partial "
                             f"channels {expected}, it has {self.partial_channels}: call restore_structure first")
        super().load_state_dict(state)


def _positive_ints(values, name: str) -> List[int]:
    values = list(values) if isinstance(values, (list, tuple)) else None
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"drnas: `{name}` must be a non-empty list of integers >= 1")
    return values
