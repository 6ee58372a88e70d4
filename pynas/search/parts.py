"""The parts a search method is composed of besides its optimisation order
(:mod:`pynas.search.strategies`): terms of the objective, a perturbation of the
weight step's edge weights, and DARTS-' auxiliary skip schedule.

Every part works on any strategy and supernet; :mod:`pynas.search.methods`
names the compositions the papers define. A part checks its own options
(:meth:`check`) and what it combines with (:meth:`check_with`: the relaxation,
the optimisation order, the space), so a nonsensical combination stops in one
line that says why.

- **Terms** (:class:`Term`): ``weight(e)·value(model)`` added to the losses the
  term joins: α's (``"alpha"``), the weights' (``"weights"``) or both. Under a
  single-level order the one loss is both and a term enters once.
- **Perturbations** (:class:`Perturbation`): what the weight step's forward sees
  instead of the relaxed weights (SDARTS' random smoothing and adversarial
  attack); α's step sees the clean weights.
- **Auxiliary skip** (:class:`AuxSkipDecay`): the coefficient β(e) of DARTS-'
  skip path beside every edge (:class:`~pynas.nn.SearchNetwork` ``aux_skip``).
"""
import contextlib
import math
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..arch import dirichlet_concentration


# -- terms of the objective ---------------------------------------------------------


class Term:
    """A term of the objective. ``name`` is how ``--regularizer`` names it,
    ``joins`` the losses it is added to, ``relaxations`` those it is defined for."""

    name = "term"
    joins: Tuple[str, ...] = ("alpha",)
    relaxations: Tuple[str, ...] = ()

    def weight(self, epoch: int) -> float:
        """The term's weight in epoch ``epoch`` (0-based)."""
        raise NotImplementedError

    def value(self, model) -> torch.Tensor:
        """The term (a 0-d tensor differentiable in α) for ``model``'s architecture."""
        raise NotImplementedError

    def check_with(self, relaxation: str) -> None:
        if self.relaxations and relaxation not in self.relaxations:
            raise ValueError(f"--regularizer {self.name}: {self.why}; it needs --relaxation "
                             f"{' or '.join(self.relaxations)}, got {relaxation}")

    why = ""


def _available_alpha(arch):
    """Per cell type, α's rows of the edges its mask leaves and, in them, the available entries."""
    for t in arch.cell_types:
        mask = arch.mask(t)
        present = mask.any(-1)
        yield arch.alphas[t][present], mask[present]


class ZeroOneLoss(Term):
    """FairDARTS' zero-one loss (xiaomi-automl/FairDARTS ``separate_loss.py``):
    ``−mean_i (σ(α_i) − ½)²`` (``form="l2"``, the code's default ``ConvSeparateLoss``)
    or ``−mean_i |σ(α_i) − ½|`` (``form="l1"``, ``TriSeparateLoss``), the mean over
    every available entry of every cell type's α together; constant weight, in
    α's loss and the weights' (as the code adds it to both)."""

    joins = ("alpha", "weights")
    relaxations = ("sigmoid",)
    why = "it pushes each σ(α) towards 0 or 1, which softmax's tied weights of an edge cannot all reach"

    def __init__(self, weight: float = 10.0, form: str = "l2"):
        if form not in ("l2", "l1"):
            raise ValueError(f"ZeroOneLoss: `form` must be 'l2' or 'l1', got {form!r}")
        self.name = "zero-one" if form == "l2" else "zero-one-l1"
        self._weight, self.form = check_weight(weight, self.name), form

    def weight(self, epoch):
        return self._weight

    def value(self, model):
        entries = torch.cat([alpha[mask] for alpha, mask in _available_alpha(model.arch)])
        gap = torch.sigmoid(entries) - 0.5
        return -(gap.square() if self.form == "l2" else gap.abs()).mean()


class BetaDecay(Term):
    """β-DARTS' regularisation (Sunshine-Ye/Beta-DARTS ``optimizers/darts/architect.py``
    ``mlc_loss``): the mean over edges of ``logsumexp_k α_{e,k}`` on raw α, whose
    gradient ``softmax(α_e)/n_edges`` decays the activated α; weight ``slope·e``
    per epoch e (the code's λ = 50·e/100, not normalised by the number of epochs);
    α's loss only. The mean runs over every (unremoved) edge of every cell type
    together: the code runs NAS-Bench-201's one cell type only, so how the DARTS
    space's two combine is pynas' choice (docs/fidelity.md)."""

    name = "beta-decay"
    joins = ("alpha",)
    relaxations = ("softmax",)
    why = "it decays the logits of softmax(α)"

    def __init__(self, slope: float = 0.5):
        self.slope = check_weight(slope, self.name)

    def weight(self, epoch):
        return self.slope * epoch

    def value(self, model):
        rows = [alpha.masked_fill(~mask, float("-inf")).logsumexp(-1) for alpha, mask in _available_alpha(model.arch)]
        return torch.cat(rows).mean()


class ResourceCost(Term):
    """SNAS' resource constraint (:mod:`pynas.search.cost`), λ inside the constraint:
    differentiated through the forward's own samples, as SNAS' code does."""

    name = "resource"
    joins = ("alpha", "weights")

    def __init__(self, constraint, model, image_size: int):
        self.constraint = constraint
        self.tables = constraint.tables(model, image_size)
        model.record_edge_weights = True

    def weight(self, epoch):
        return 1.0

    def value(self, model):
        return self.constraint.penalty(model.arch, self.tables, model.last_edge_weights or None)


class DirichletKL(Term):
    """DrNAS' KL regulariser (xiangning-chen/DrNAS @ f2caa4d DARTS-space/model_search.py:193-209,
    201-space/search_model.py:57-72, ``--reg_type kl``): ``Σ_edges KL(Dir(β_e) ‖ Dir(1))``
    with β = ELU(α) + 1, summed over the edges of every cell type, in closed form

        KL = lgamma(Σβ) − Σ_k lgamma(β_k) − lgamma(K) + Σ_k (β_k − 1)(ψ(β_k) − ψ(Σβ)).

    α's loss only: the code adds it in ``_loss``, which only the architect's α step
    calls; the weight step is plain cross-entropy (DARTS-space/train_search.py:187-192).
    The code sets α's Adam weight decay to 0 under ``kl`` (architect.py:17-22).

    Masks (``over``): ``"kept"`` (default) takes each edge's distribution over the
    operations its mask keeps, Dir(β_kept) ‖ Dir(1_kept) (what the relaxation
    samples: a renormalised Dirichlet over the kept entries is Dirichlet(β_kept)),
    and leaves removed edges out; ``"all"`` runs over every operation of every
    edge whatever the masks, as the code does after pruning (its masks never
    enter ``_get_kl_reg``). The two agree while nothing is masked; pynas' choice
    of ``"kept"`` also keeps a space's unavailable operations out of the term."""

    name = "dirichlet-kl"
    joins = ("alpha",)
    relaxations = ("dirichlet",)
    why = "it is the KL of the Dirichlet(ELU(α) + 1) the relaxation samples from"

    def __init__(self, weight: float = 1e-3, over: str = "kept"):
        if over not in ("kept", "all"):
            raise ValueError(f"DirichletKL: `over` must be 'kept' or 'all', got {over!r}")
        self._weight, self.over = check_weight(weight, self.name), over

    def weight(self, epoch):
        return self._weight

    def value(self, model):
        arch = model.arch
        if self.over == "all":
            rows = [(arch.alphas[t], torch.ones_like(arch.mask(t))) for t in arch.cell_types]
        else:
            rows = _available_alpha(arch)
        return sum(_dirichlet_kl_from_uniform(dirichlet_concentration(alpha), mask).sum() for alpha, mask in rows)


def _dirichlet_kl_from_uniform(beta, mask):
    """Per row, KL(Dir(β over the entries ``mask`` keeps) ‖ Dir(1)) in closed form."""
    zero = torch.zeros_like(beta)
    total = torch.where(mask, beta, zero).sum(-1, keepdim=True)
    k = mask.sum(-1).to(beta.dtype)
    entries = torch.where(mask, (beta - 1) * (torch.digamma(beta) - torch.digamma(total)) - torch.lgamma(beta), zero)
    return torch.lgamma(total.squeeze(-1)) - torch.lgamma(k) + entries.sum(-1)


# --regularizer NAME[=WEIGHT]: the term and its default weight.
REGULARIZERS = {
    "zero-one": (lambda w: ZeroOneLoss(w, "l2"), 10.0),
    "zero-one-l1": (lambda w: ZeroOneLoss(w, "l1"), 10.0),
    "beta-decay": (BetaDecay, 0.5),
    "dirichlet-kl": (DirichletKL, 1e-3),
}


def check_weight(weight, name: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"--regularizer {name}: the weight must be a finite number >= 0, got {weight!r}")
    return float(weight)


def parse_regularizer(text: str) -> Tuple[str, float]:
    """``NAME`` or ``NAME=WEIGHT`` → (name, weight); ValueError naming ``--regularizer``."""
    if not isinstance(text, str):
        raise ValueError(f"--regularizer must be NAME or NAME=WEIGHT, got {text!r}")
    name, _, weight = text.partition("=")
    name = name.strip()
    if name not in REGULARIZERS:
        raise ValueError(f"--regularizer must name one of {tuple(REGULARIZERS)} (NAME or NAME=WEIGHT), got {name!r}")
    if not weight:
        return name, REGULARIZERS[name][1]
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"--regularizer {name}: the weight must be a number, got {weight!r}") from None
    return name, check_weight(value, name)


def build_terms(regularizers: Sequence[str]):
    """The terms of ``--regularizer`` values (each ``NAME`` or ``NAME=WEIGHT``)."""
    terms = []
    for text in regularizers:
        name, weight = parse_regularizer(text)
        if any(t.name == name for t in terms):
            raise ValueError(f"--regularizer {name} is given twice")
        terms.append(REGULARIZERS[name][0](weight))
    return terms


# -- perturbations of the weight step -----------------------------------------------


class Perturbation:
    """What the weight step's forward sees in place of the relaxed edge weights.
    :meth:`prepare` runs on the host before a step's device work (where random
    draws happen, so a captured step reads them as inputs); :meth:`weight_step`
    is the context the weight step runs in."""

    name = "none"

    def prepare(self, strategy) -> None:
        pass

    def weight_step(self, strategy, batch) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def step_inputs(self) -> Dict[str, torch.Tensor]:
        return {}

    def use_step_inputs(self, inputs: Dict[str, torch.Tensor]) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def check_epsilon(epsilon, epsilon_start: float = 0.03) -> float:
    """SDARTS' final noise radius ε_max: in [ε_start, 1] (weights live in [0, 1])."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) \
            or not epsilon_start <= epsilon <= 1:
        raise ValueError(f"--epsilon-alpha must be in [{epsilon_start}, 1] (the ramp starts at {epsilon_start}), "
                         f"got {epsilon!r}")
    return float(epsilon)


class UniformNoise(Perturbation):
    """What SDARTS' two perturbations share: per weight step, uniform noise in
    [−ε, ε] of α's shape, ε ramping per epoch from ``epsilon_start`` to ``epsilon``
    as ε(e) = ε_start + (ε − ε_start)·e/E (SmoothDARTS train_search.py:169-171; e:
    epochs done, since an epoch's step count may change, e.g. SGAS' growing batch).
    The noise is drawn on the host (:meth:`prepare`), in float64 on the CPU from the
    part's own generator: the same on every device and rank, and resumable (its
    state under :attr:`generator_key`)."""

    generator_key = "noise_generator"

    def __init__(self, epsilon: float = 0.3, epsilon_start: float = 0.03, seed: int = 0):
        if isinstance(epsilon_start, bool) or not isinstance(epsilon_start, (int, float)) \
                or not math.isfinite(epsilon_start) or not 0 <= epsilon_start <= 1:
            raise ValueError(f"{type(self).__name__}: `epsilon_start` must be in [0, 1], got {epsilon_start!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{type(self).__name__}: `seed` must be an integer, got {seed!r}")
        self.epsilon, self.epsilon_start = check_epsilon(epsilon, epsilon_start), float(epsilon_start)
        self.generator = torch.Generator().manual_seed(seed)
        self.noise: Dict[str, torch.Tensor] = {}  # this step's U(−ε, ε) per cell type
        self.last_epsilon: Optional[float] = None

    def current_epsilon(self, strategy) -> float:
        return self.epsilon_start + (self.epsilon - self.epsilon_start) * strategy.epochs_done / strategy.config.epochs

    def prepare(self, strategy):
        eps = self.last_epsilon = self.current_epsilon(strategy)
        arch = strategy.model.arch
        self.noise = {t: (2 * torch.rand(arch.alphas[t].shape, generator=self.generator, dtype=torch.float64)
                          - 1).mul_(eps).to(arch.alphas[t]) for t in arch.cell_types}

    def step_inputs(self):
        return dict(self.noise)

    def use_step_inputs(self, inputs):
        self.noise = dict(inputs)

    def state_dict(self):
        return {self.generator_key: self.generator.get_state()}

    def load_state_dict(self, state):
        if self.generator_key not in state:
            raise ValueError(f"{type(self).__name__}: the checkpoint has no `{self.generator_key}` (it was not "
                             f"saved by a search with --perturbation {self.name})")
        self.generator.set_state(state[self.generator_key])


class RandomSmoothing(UniformNoise):
    """SDARTS-RS (Chen & Hsieh 2020; xiangning-chen/SmoothDARTS ``Random_alpha``):
    the weight step sees softmax(α) plus this step's noise, clipped to [0, 1] and
    renormalised per edge (:meth:`pynas.arch.Architecture.noisy`)."""

    name = "random"

    def weight_step(self, strategy, batch):
        return strategy.model.arch.noisy(self.noise)


# -- DARTS-' auxiliary skip -------------------------------------------------------------

AUX_DECAYS = ("none", "linear", "cosine", "slow-cosine")


class AuxSkipDecay:
    """β(e) of DARTS-' auxiliary skip (Meituan-AutoML/DARTS- ``src/utils.py``
    ``DecayScheduler``, stepped once per epoch): with T = T_max − T_start,
    ``linear`` β₀·(T_max − e)/T, ``cosine`` β₀·(1 + cos(π·e/T))/2, ``slow-cosine``
    β₀·cos(π/2·e/T) for T_start ≤ e ≤ T_stop (before: β₀; after T_stop it keeps
    its value at T_stop); ``none``: β₀ throughout. T_max is its own option, not
    the number of epochs, as in the code (50: β runs 1, 0.98, …, 0.02 in a
    50-epoch search and never reaches 0)."""

    def __init__(self, beta0: float = 1.0, decay: str = "linear", t_max: int = 50, t_start: int = 0,
                 t_stop: Optional[int] = None):
        if decay not in AUX_DECAYS:
            raise ValueError(f"--aux-decay must be one of {AUX_DECAYS}, got {decay!r}")
        if isinstance(beta0, bool) or not isinstance(beta0, (int, float)) or not math.isfinite(beta0) or beta0 < 0:
            raise ValueError(f"--aux-beta must be a finite number >= 0, got {beta0!r}")
        t_stop = t_max if t_stop is None else t_stop
        if not 0 <= t_start < t_max or t_stop < t_start:
            raise ValueError(f"--aux-t-max must exceed the decay's start ({t_start}) and its stop must not come "
                             f"before it; got T_max {t_max}, T_start {t_start}, T_stop {t_stop}")
        self.beta0, self.decay, self.t_max, self.t_start, self.t_stop = float(beta0), decay, t_max, t_start, t_stop

    def at(self, epoch: int) -> float:
        if self.decay == "none" or epoch < self.t_start:
            return self.beta0
        e, span = min(epoch, self.t_stop), self.t_max - self.t_start
        if self.decay == "linear":
            return self.beta0 * (self.t_max - e) / span
        if self.decay == "cosine":
            return self.beta0 * (1 + math.cos(math.pi * e / span)) / 2
        return self.beta0 * math.cos(math.pi / 2 * e / span)
