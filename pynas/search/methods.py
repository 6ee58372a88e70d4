"""Search methods by name, each a composition of parts (``pynas search --method NAME``).

A method is its optimisation order (a :class:`~pynas.search.strategies.Strategy`
class: bi-level first or second order, single level, α fixed, SGAS' decisions),
the relaxation that makes edge weights of α (:mod:`pynas.arch`), terms of the
objective, a perturbation of the weight step, DARTS-' auxiliary skip
(:mod:`pynas.search.parts`) and the rule that derives its genotype
(:mod:`pynas.genotype`). The parts are also options of their own
(``--regularizer``, ``--perturbation``, ``--aux-skip``, ``--derivation``), and
Python objects that work on one's own supernet::

    DartsFirstOrder(model, SearchConfig(), steps, terms=[BetaDecay(0.5)],
                    perturbation=AdversarialAttack(0.3), aux_skip=AuxSkipDecay())

:func:`check_composition` asks each part whether it combines with the others.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

from .attack import AdversarialAttack
from .drnas import ProgressiveDrnas
from .lambda_darts import LambdaDarts
from .oles import Oles
from .parts import AuxSkipDecay, Perturbation, RandomSmoothing, build_terms
from .strategies import DartsFirstOrder, DartsSecondOrder, FixedAlpha, SingleLevel, Snas, Sgas

PERTURBATIONS = ("none", "random", "adversarial")
DERIVATIONS = ("darts", "darts-with-none", "snas", "nb201", "threshold")


@dataclass(frozen=True)
class Method:
    """One composition and its authors' defaults.

    ``init``: α's initial values (None: the relaxation's default); ``a_lr``,
    ``a_weight_decay``: α's optimiser where the run does not say (the embedded
    digits keep their own α lr); ``options``: what ``pynas search --method NAME``
    sets beneath a preset, a config file and explicit options (the space its
    authors searched, α's Adam betas)."""

    name: str
    order: type
    relaxation: str = "softmax"
    regularizers: Tuple[str, ...] = ()
    perturbation: str = "none"
    aux_skip: bool = False
    derivation: str = "darts"
    init: Optional[str] = None
    a_lr: Optional[float] = None
    a_weight_decay: Optional[float] = None
    options: Dict = field(default_factory=dict)

    @property
    def bilevel(self) -> bool:
        return self.order.bilevel

    def architecture_options(self) -> dict:
        """The :class:`~pynas.arch.Architecture` keywords this method fixes."""
        return {} if self.init is None else {"init": self.init}

    def strategy(self, model, config, steps_per_epoch: int, **options):
        """The method's strategy on ``model`` with its default parts (SDARTS'
        perturbations at their default ε); ``options`` go to the order's class and
        override the parts (``terms=``, ``perturbation=``, ``aux_skip=``)."""
        parts = dict(terms=build_terms(self.regularizers), perturbation=default_perturbation(self.perturbation),
                     aux_skip=AuxSkipDecay() if self.aux_skip else None)
        return self.order(model, config, steps_per_epoch, **{**parts, **options})


def default_perturbation(name: str, epsilon: float = 0.3, seed: int = 0, steps: int = 7,
                         epsilon_start: float = 0.03) -> Optional[Perturbation]:
    """The perturbation ``--perturbation name`` builds (None for ``none``)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"--perturbation must be one of {PERTURBATIONS}, got {name!r}")
    if name == "random":
        return RandomSmoothing(epsilon, epsilon_start, seed)
    if name == "adversarial":
        return AdversarialAttack(epsilon, epsilon_start, steps, seed)
    return None


NO_NONE = {"space": "darts-no-none"}

METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("darts", DartsFirstOrder),
    Method("darts-2nd", DartsSecondOrder),
    Method("single-level", SingleLevel),
    Method("snas", Snas, "gumbel", derivation="snas"),
    Method("gdas", DartsFirstOrder, "gumbel_hard"),
    Method("dsnas", SingleLevel, "categorical", derivation="snas"),
    Method("fixed", FixedAlpha, init="zeros"),
    # The wiring paper's Fig. 4b: θ trained with α fixed under uniform sampling (one op per edge, `none` included).
    Method("uniform", FixedAlpha, "categorical", init="zeros"),
    Method("sgas", Sgas),
    # SmoothDARTS' code searches s5, DARTS' seven operations without `none` (sota/cnn/spaces.py).
    Method("sdarts-rs", DartsFirstOrder, perturbation="random", options=NO_NONE),
    Method("sdarts-adv", DartsFirstOrder, perturbation="adversarial", options=NO_NONE),
    # FairDARTS' code: σ(α) from 0, the zero-one loss ×10, threshold derivation, no `none`, α Adam 3e-3 (0.9, 0.999).
    Method("fairdarts", DartsFirstOrder, "sigmoid", regularizers=("zero-one=10",), derivation="threshold",
           init="zeros", a_lr=3e-3, a_weight_decay=1e-3, options=dict(NO_NONE, a_betas=(0.9, 0.999))),
    # β-DARTS' code: DARTS plus λ(e)·mean_e logsumexp(α_e) in α's loss, λ = 0.5·e (its DARTS-space script: s5).
    Method("beta-darts", DartsFirstOrder, regularizers=("beta-decay=0.5",), options=NO_NONE),
    # DARTS-: DARTS plus β(e)·aux(x) beside every edge; its space keeps `none`.
    Method("darts-minus", DartsFirstOrder, aux_skip=True),
    # Λ-DARTS' code: DARTS plus λ(e)·(g⁺ − g⁻)/2ε in the weight step (its space depends on the script).
    Method("lambda-darts", LambdaDarts),
    # DrNAS' code: Dirichlet(ELU(α) + 1) samples, L2 on α as Adam's weight decay, two stages of partial channels
    # 6 → 4 and operations 7 → 4 (its DARTS space has no `none`), α Adam 6e-4.
    Method("drnas", ProgressiveDrnas, "dirichlet", a_lr=6e-4, a_weight_decay=1e-3, options=NO_NONE),
    # OLES' code: DARTS first order, an operation frozen when its gradients' cosine stays below 0.4; `none` kept
    # in the space and in the derivation.
    Method("oles", Oles, derivation="darts-with-none"),
)}


def check_composition(order: type, relaxation: str, regularizers: Sequence[str], perturbation: str,
                      aux_skip: bool, derivation: str, space: str, method: str = "") -> None:
    """Each part's word on whether it combines with the others: a ValueError that
    says why, naming the option, where they do not."""
    for term in build_terms(regularizers):
        term.check_with(relaxation)
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"--perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    named = f"--method {method}" if method else "this method"
    if perturbation != "none":
        if relaxation != "softmax":
            kind = {"gumbel": "mixes by Gumbel-softmax samples", "sigmoid": "weighs each operation by σ(α)",
                    "dirichlet": "mixes by Dirichlet samples"}.get(
                relaxation, "draws a hard sample, one operation per edge")
            raise ValueError(f"--perturbation {perturbation} perturbs softmax(α) within the simplex of each edge; "
                             f"{named} {kind} ({relaxation}), not softmax(α)")
        if issubclass(order, SingleLevel):
            raise ValueError(f"--perturbation {perturbation} perturbs the weight step apart from α's step; {named} is "
                             f"single-level (one step for both)")
    if aux_skip and space == "nb201":
        raise ValueError("--aux-skip adds DARTS-' skip beside the edges of DARTS-style cells, not nb201's")
    if aux_skip and issubclass(order, ProgressiveDrnas):
        raise ValueError(f"--aux-skip: {named} widens its operations between stages, which DARTS-' skip beside "
                         f"them does not follow")
    if issubclass(order, FixedAlpha):
        alpha_only = [t.name for t in build_terms(regularizers) if tuple(t.joins) == ("alpha",)]
        if alpha_only:
            raise ValueError(f"--regularizer {alpha_only[0]} joins α's loss only; {named} keeps α fixed (no α step)")
    if derivation == "threshold" and relaxation != "sigmoid":
        raise ValueError(f"--derivation threshold keeps an edge whose σ(α) reaches --threshold (FairDARTS); "
                         f"{named} weighs by {relaxation}: it needs --relaxation sigmoid")
    if derivation not in DERIVATIONS:
        raise ValueError(f"--derivation must be one of {DERIVATIONS}, got {derivation!r}")
    if (derivation == "nb201") != (space == "nb201"):
        raise ValueError(f"--derivation {derivation} does not derive --space {space} cells: "
                         + ("nb201's argmax per edge is for --space nb201" if derivation == "nb201"
                            else "a NAS-Bench-201 cell is the argmax per edge (--derivation nb201)"))
