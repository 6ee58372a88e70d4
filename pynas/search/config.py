"""A search run's configuration: :class:`RunConfig` (what config.json holds), its
checks and method defaults, and `pynas search`'s options that fill it."""
import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..arch import DEFAULT_SCHEDULES, RELAXATIONS, SAMPLE_PER, SCHEDULE_KINDS, parse_init
from ..data import DATASETS
from ..errors import InputError
from ..io import read_config
from ..nn.layout import MIN_CHANNELS_LAST_CHANNELS
from ..nn.partial import check_partial_channels
from ..progress import add_log_every_argument
from .budget import budget_bytes
from .cost import ESTIMATORS, PRESETS
from .cuda_graphs import check_cuda_graphs
from .methods import DERIVATIONS, METHODS, PERTURBATIONS, check_composition
from .oles import check_options as check_oles_options
from .parts import AUX_DECAYS, AuxSkipDecay, build_terms, check_epsilon
from .presets import PRESETS as SEARCH_PRESETS
from .strategies import A_OPTIMIZERS

DIGITS_A_LR = 0.15
SPACES = ("darts", "darts-no-none", "nb201", "s1", "s2", "s3", "s4", "s1-from-run", "minimal")


@dataclass
class RunConfig:
    """Everything a search run depends on. ``None`` means "the method's default"
    (see :meth:`resolved`); ``config.json`` holds the resolved values, so passing
    it back (``pynas search --config``) repeats a run exactly."""

    space: str = "darts"
    method: str = "darts"
    dataset: str = "digits"
    epochs: int = 8
    batch_size: int = 64
    # A memory budget ("10GB", "512MiB", or a fraction of the GPU's memory such as "0.8"): the run measures
    # its step (pynas.memory) and takes the largest batch that fits, recorded as batch_size (None: batch_size).
    max_memory: Optional[str] = None
    C: int = 8
    layers: int = 5
    steps: int = 4
    seed: int = 0
    # Fraction of the training set the weights train on; the rest is α's validation
    # split. None: 0.5 for bi-level methods; 1.0 for single-level ones (SNAS Sec. 3.1:
    # the whole training set), which then report accuracy on the held-out test set.
    train_fraction: Optional[float] = None
    out: Optional[str] = None
    # Weights: SGD with cosine annealing from w_lr to w_lr_min (None: 0.001; 0 for snas/dsnas).
    w_lr: float = 0.025
    w_lr_min: Optional[float] = None
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    w_nesterov: bool = False
    grad_clip: float = 5.0
    # α: Adam (or SGD); weight decay None: 1e-3, but 0 under sigmoid (Single-DARTS Sec. 5.1.2).
    # None: DARTS' 3e-4, or 0.15 on the embedded digits, whose default search takes ~100 α steps against
    # DARTS' 19,550 (at 0.05 the mean largest probability stalled at 0.245 after 8 epochs: docs/fidelity.md).
    a_lr: Optional[float] = None
    a_betas: Tuple[float, float] = (0.5, 0.999)
    a_weight_decay: Optional[float] = None
    a_optimizer: str = "adam"
    a_momentum: float = 0.0
    a_grad_clip: Optional[float] = None
    a_init: Optional[str] = None  # "normal" (1e-3·N(0,1)), "zeros" or a number; None: the method's
    # Gumbel temperature (None: the relaxation's default schedule).
    tau_start: Optional[float] = None
    tau_end: Optional[float] = None
    tau_schedule: Optional[str] = None
    sample_per: str = "forward"  # one sample per forward, per cell, or per input sample
    data: Optional[str] = None
    download: bool = False
    cutout: int = 0
    workers: int = 0  # processes making the batches (0: this one); any number gives the same batches
    device: str = "cpu"
    s1_from: Optional[str] = None  # s1-from-run: the run directory of a DARTS search whose top-2 ops per edge form it
    relaxation: Optional[str] = None  # overrides the method's relaxation (e.g. sigmoid for single-level)
    amp: str = "none"  # "bf16": autocast
    channels_last: bool = False
    compile: bool = False
    checkpoint_cells: bool = False  # per-cell activation checkpointing (SearchNetwork.checkpoint_cells)
    # Every lean form of the operations on (pynas.nn.ops.save_memory: on CPU slower, fewer activations);
    # None: on where memory is asked for, with checkpoint_cells or max_memory.
    memory_saving: Optional[bool] = None
    cuda_graphs: bool = False  # the soft step replayed from a CUDA graph (pynas.search.cuda_graphs)
    overlap_reduction: Optional[bool] = None  # data parallel: weights' gradients averaged during backward (None: on CUDA)
    constraint: str = "none"  # SNAS resource constraint: none, mild, moderate, aggressive, snas-code
    constraint_weight: Optional[float] = None  # λ; None: the constraint level's
    cost_estimator: str = "reparameterised"
    # The parts of the method's composition (pynas.search.methods); None: the method's own.
    regularizers: Optional[list] = None  # terms of the objective, each "NAME" or "NAME=WEIGHT"
    perturbation: Optional[str] = None  # of the weight step's edge weights: none, random, adversarial
    aux_skip: Optional[bool] = None  # DARTS-' auxiliary skip beside every edge
    derivation: Optional[str] = None  # darts, snas, nb201 (--space nb201's only rule), threshold
    threshold: float = 0.85  # --derivation threshold: FairDARTS' σ an edge's operation must reach
    epsilon_alpha: float = 0.3  # SDARTS (random, adversarial): the final noise range (ramped from 0.03)
    attack_steps: int = 7  # SDARTS-ADV: steps of the attack
    aux_beta: float = 1.0  # DARTS-: β₀, the auxiliary skip's coefficient at the start
    aux_decay: str = "linear"  # DARTS-: β's decay (none, linear, cosine, slow-cosine)
    aux_t_max: int = 50  # DARTS-: the epoch where a linear β reaches 0 (not --epochs, as the code)
    lambda_reg: float = 0.125  # lambda-darts: λ, reached in the last epoch (λ·e/(E − 1))
    lambda_epsilon: float = 1e-4  # lambda-darts: ε₀ of the finite difference
    # DrNAS' stages: partial channels K and operations kept per edge in each, and the share of each stage
    # (from its start) in which α is frozen; None: the method's (DARTS space 6 → 4, 7 → 4, 0.4; nb201: one
    # stage, K 1, 5 operations, 0).
    drnas_channels: Optional[list] = None
    drnas_keep: Optional[list] = None
    drnas_frozen: Optional[float] = None
    oles_window: int = 20  # oles: α steps per window (the code judges window + 1 similarities over window)
    oles_threshold: float = 0.4  # oles: an operation whose window similarity falls below this is frozen
    warmup_epochs: int = 0  # weights-only epochs before α trains (SGAS' code: none; PC-DARTS' code: 15)
    first_decision: int = 10  # SGAS: the first decision after this many epochs
    decision_freq: int = 5  # SGAS: epochs between decisions
    batch_increase: int = 0  # SGAS: the batch grows by this after each decision
    sgas_pt: bool = False  # SGAS+PT: perturbation-based operation choice on each decided edge
    pt_val_batches: Optional[int] = None  # SGAS+PT: validation batches per measurement (all)
    log_grad_correlation: bool = False  # Single-DARTS Eq. 8 on each epoch's first batches
    log_prob_grad: Optional[str] = None  # Single-DARTS Fig. 3: ∂L/∂p per edge of these cells ("all" or "0,3")
    tensorboard: Optional[str] = None  # a TensorBoard log directory beside metrics.jsonl (rank 0)
    # NAS-Bench-201's recorded accuracies of each epoch's cell (pynas.nb201_benchmark: a .pth, NATS-Bench's
    # .pickle.pbz2 or its -simple directory); --space nb201 only.
    benchmark: Optional[str] = None
    keep_every: int = 0  # also keep checkpoint-epoch<N>.pt every N epochs (0: only the latest)
    # PC-DARTS: each edge's operations see 1/K of the channels, and β normalises each node's edges (K > 1).
    partial_channels: int = 1

    @classmethod
    def for_method(cls, method: str, **options) -> "RunConfig":
        """``method``'s configuration with its own options (its authors' space, α's betas) beneath
        ``options``: what ``pynas search --method METHOD`` starts from."""
        if method not in METHODS:
            raise ValueError(f"--method must be one of {tuple(METHODS)}, got {method!r}")
        return cls(method=method, **{**METHODS[method].options, **options})

    def prob_grad_cells(self) -> Optional[list]:
        """The cells ``--log-prob-grad`` names (None: every cell)."""
        if self.log_prob_grad in (None, "all"):
            return None
        try:
            cells = [int(c) for c in self.log_prob_grad.split(",")]
        except ValueError:
            raise ValueError(f"--log-prob-grad must be 'all' or cell indices like 0,3; got {self.log_prob_grad!r}") from None
        if any(not 0 <= c < self.layers for c in cells):
            raise ValueError(f"--log-prob-grad: cells must be in [0, {self.layers}), got {self.log_prob_grad!r}")
        return cells

    def resolved(self) -> "RunConfig":
        """A copy with every method-dependent default (``None``) filled in."""
        method = METHODS[self.method]
        relaxation = self.relaxation or method.relaxation
        out = dataclasses.replace(self, relaxation=relaxation, a_betas=tuple(self.a_betas))
        if out.a_lr is None:
            out.a_lr = DIGITS_A_LR if self.dataset == "digits" else method.a_lr or 3e-4
        if out.train_fraction is None:
            out.train_fraction = 0.5 if method.bilevel else 1.0
        if out.w_lr_min is None:
            out.w_lr_min = 0.0 if self.method in ("snas", "dsnas") else 0.001  # SNAS App. G.1: annealed to 0
        if out.a_weight_decay is None:
            out.a_weight_decay = (method.a_weight_decay if method.a_weight_decay is not None
                                  else 0.0 if relaxation == "sigmoid" else 1e-3)
        if out.a_init is None:
            out.a_init = str(method.init if method.init is not None
                             else -math.log(7) if relaxation == "sigmoid" else "normal")
        if out.regularizers is None:
            out.regularizers = list(method.regularizers)
        if out.perturbation is None:
            out.perturbation = method.perturbation
        if out.aux_skip is None:
            out.aux_skip = method.aux_skip
        if out.derivation is None:
            out.derivation = "nb201" if self.space == "nb201" else method.derivation
        if self.method == "drnas":
            nb201 = self.space == "nb201"
            out.drnas_channels = list(self.drnas_channels or ([1] if nb201 else [6, 4]))
            out.drnas_keep = list(self.drnas_keep or ([5] if nb201 else [7, 4]))
            out.drnas_frozen = self.drnas_frozen if self.drnas_frozen is not None else 0.0 if nb201 else 0.4
        if self.a_weight_decay is None and "dirichlet-kl" in (r.partition("=")[0] for r in out.regularizers):
            # DrNAS' architect.py: the KL regulariser replaces L2 (Adam's weight decay) on α.
            out.a_weight_decay = 0.0
        if out.memory_saving is None:
            out.memory_saving = self.checkpoint_cells or self.max_memory is not None
        schedule = DEFAULT_SCHEDULES.get(relaxation)
        if schedule is not None:
            out.tau_start = schedule.start if out.tau_start is None else out.tau_start
            out.tau_end = schedule.end if out.tau_end is None else out.tau_end
            out.tau_schedule = schedule.kind if out.tau_schedule is None else out.tau_schedule
        return out

    def validate(self):
        if self.space not in SPACES:
            raise ValueError(f"--space must be one of {SPACES}, got {self.space!r}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {tuple(METHODS)}, got {self.method!r}")
        if self.constraint != "none" and self.method != "snas":
            raise ValueError(f"--constraint applies to --method snas, not {self.method}")
        if self.constraint != "none" and self.space == "nb201":
            raise ValueError("--constraint needs a DARTS-style space, not nb201")
        if self.constraint not in ("none", *PRESETS):
            raise ValueError(f"--constraint must be one of none, {', '.join(PRESETS)}; got {self.constraint!r}")
        if self.cost_estimator not in ESTIMATORS:
            raise ValueError(f"--cost-estimator must be one of {ESTIMATORS}, got {self.cost_estimator!r}")
        if self.relaxation is not None and self.relaxation not in RELAXATIONS:
            raise ValueError(f"--relaxation must be one of {RELAXATIONS}, got {self.relaxation!r}")
        if self.space == "s1-from-run" and not self.s1_from:
            raise ValueError("--space s1-from-run needs --s1-from RUN_DIR: a finished DARTS search whose top-2 "
                             "operations per edge define the space")
        if self.s1_from and self.space != "s1-from-run":
            raise ValueError(f"--s1-from applies to --space s1-from-run, not {self.space}")
        if self.a_optimizer not in A_OPTIMIZERS:
            raise ValueError(f"--a-optimizer must be one of {A_OPTIMIZERS}, got {self.a_optimizer!r}")
        if self.sample_per not in SAMPLE_PER:
            raise ValueError(f"--sample-per must be one of {SAMPLE_PER}, got {self.sample_per!r}")
        if self.tau_schedule is not None and self.tau_schedule not in SCHEDULE_KINDS:
            raise ValueError(f"--tau-schedule must be one of {SCHEDULE_KINDS}, got {self.tau_schedule!r}")
        if self.a_init is not None:
            try:
                parse_init(self.a_init)
            except ValueError as e:
                raise ValueError(f"--a-init: {e}") from None
        if len(tuple(self.a_betas)) != 2 or not all(0 <= b < 1 for b in self.a_betas):
            raise ValueError(f"--a-betas must be two numbers in [0, 1), got {self.a_betas}")
        if self.train_fraction is not None and not 0 < self.train_fraction <= 1:
            raise ValueError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        if self.train_fraction == 1 and METHODS[self.method].bilevel:
            raise ValueError(f"--method {self.method} is bi-level: α needs a validation split, so "
                             f"--train-fraction must be below 1")
        for name in ("w_lr", "w_lr_min", "w_momentum", "w_weight_decay", "grad_clip", "a_lr", "a_weight_decay",
                     "a_momentum", "a_grad_clip", "tau_start", "tau_end", "constraint_weight", "epsilon_alpha",
                     "lambda_epsilon"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value!r}")
        if isinstance(self.lambda_reg, bool) or not isinstance(self.lambda_reg, (int, float)) \
                or not math.isfinite(self.lambda_reg) or self.lambda_reg < 0:
            raise ValueError(f"--lambda must be a finite number >= 0, got {self.lambda_reg!r}")
        if self.lambda_epsilon == 0:
            raise ValueError("--lambda-epsilon must be positive")
        for name in ("tau_start", "tau_end"):
            if getattr(self, name) == 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.log_prob_grad is not None:
            self.prob_grad_cells()
            if self.space == "nb201":
                raise ValueError("--log-prob-grad needs a DARTS-style space, not nb201")
        if self.cutout and self.dataset == "digits":
            raise ValueError("--cutout applies to the image datasets (cifar10, cifar100, svhn); the embedded digits "
                             "are 8x8 and take no augmentation")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"--workers must be a non-negative integer, got {self.workers!r}")
        if self.benchmark is not None and self.space != "nb201":
            raise ValueError(f"--benchmark looks up NAS-Bench-201 cells: it needs --space nb201, not {self.space}")
        if self.keep_every < 0:
            raise ValueError(f"--keep-every must be >= 0 (0: keep only the latest checkpoint), got {self.keep_every}")
        if self.batch_increase < 0 or self.first_decision < 0:
            raise ValueError("--batch-increase and --first-decision must be >= 0")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"--amp must be none or bf16, got {self.amp!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.channels_last and self.device == "cpu" and self.C < MIN_CHANNELS_LAST_CHANNELS:
            raise ValueError(f"--channels-last on CPU needs --C >= {MIN_CHANNELS_LAST_CHANNELS} (oneDNN's channels-last "
                             f"1x1 convolutions fail below), got --C {self.C}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but no GPU is visible")
        if self.sgas_pt and self.method != "sgas":
            raise ValueError(f"--pt applies to --method sgas, not {self.method}")
        if self.method == "sgas" and self.space in ("nb201", "minimal"):
            raise ValueError(f"--method sgas needs a cell with two inputs per node, not --space {self.space}")
        if self.method == "sgas" and (self.relaxation or "softmax") != "softmax":
            raise ValueError(f"--method {self.method} works on softmax(α); drop --relaxation {self.relaxation}")
        if self.warmup_epochs < 0 or self.decision_freq < 1:
            raise ValueError("--warmup-epochs must be >= 0 and --decision-freq >= 1")
        if self.method == "sgas" and self.first_decision < self.warmup_epochs:
            raise ValueError(f"--first-decision ({self.first_decision}) must not come before the end of "
                             f"--warmup-epochs ({self.warmup_epochs})")
        if self.checkpoint_cells and (self.space == "nb201" or self.compile or self.log_grad_correlation
                                      or self.log_prob_grad):
            raise ValueError("--checkpoint-cells needs a DARTS-style space (not nb201) and runs without --compile, "
                             "--log-grad-correlation and --log-prob-grad (they observe a cell's forward, which "
                             "checkpointing runs twice)")
        if self.memory_saving is not None and not isinstance(self.memory_saving, bool):
            raise ValueError(f"--memory-saving must be true or false, got {self.memory_saving!r}")
        if self.cuda_graphs:
            check_cuda_graphs(self.method, self.device, relaxation=self.relaxation, compile=self.compile,
                              checkpoint_cells=self.checkpoint_cells, tau_schedule=self.tau_schedule)
        if self.max_memory is not None:
            budget_bytes(self.max_memory, "--max-memory", self.device)
        if self.pt_val_batches is not None and self.pt_val_batches < 1:
            raise ValueError(f"--pt-val-batches must be at least 1, got {self.pt_val_batches}")
        for name in ("epochs", "batch_size", "C", "layers", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        self._validate_partial_channels()
        if self.space != "nb201" and self.layers < 3:
            # Cells layers//3 and 2·layers//3 reduce from 3 cells on: below that there is no reduction cell.
            raise ValueError(f"--layers must be at least 3 for --space {self.space} (fewer cells have no reduction "
                             f"cell, so the reduce cells' α could never be searched), got {self.layers}")
        self._validate_composition()


    def _validate_composition(self):
        """The composition's parts, each checked by itself and against the others (pynas.search.methods)."""
        if self.regularizers is not None and (isinstance(self.regularizers, str)
                                              or not isinstance(self.regularizers, (list, tuple))):
            raise ValueError(f"--regularizer: expected a list of NAME or NAME=WEIGHT, got {self.regularizers!r}")
        if self.perturbation is not None and self.perturbation not in PERTURBATIONS:
            raise ValueError(f"--perturbation must be one of {PERTURBATIONS}, got {self.perturbation!r}")
        if self.derivation is not None and self.derivation not in DERIVATIONS:
            raise ValueError(f"--derivation must be one of {DERIVATIONS}, got {self.derivation!r}")
        if self.aux_skip is not None and not isinstance(self.aux_skip, bool):
            raise ValueError(f"--aux-skip must be true or false, got {self.aux_skip!r}")
        r = self.resolved()
        build_terms(r.regularizers)
        check_epsilon(self.epsilon_alpha)
        if isinstance(self.attack_steps, bool) or not isinstance(self.attack_steps, int) or self.attack_steps < 1:
            raise ValueError(f"--attack-steps must be an integer >= 1, got {self.attack_steps!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 < self.threshold < 1:
            raise ValueError(f"--threshold must be in (0, 1), got {self.threshold!r}")
        AuxSkipDecay(self.aux_beta, self.aux_decay, self.aux_t_max)
        check_oles_options(self.oles_window, self.oles_threshold)
        self._validate_drnas(r)
        if self.cuda_graphs and (r.regularizers or r.aux_skip or r.perturbation == "adversarial"):
            raise ValueError("--cuda-graphs captures compositions without regularizers, auxiliary skip and "
                             "adversarial perturbation (those have not run captured on a GPU yet): drop it")
        check_composition(METHODS[self.method].order, r.relaxation, r.regularizers, r.perturbation, r.aux_skip,
                          r.derivation, self.space, self.method)
        self._refuse_unused_options(r)

    def _refuse_unused_options(self, r):
        """A part's option given without its part would be silently ignored: refused, naming both."""
        d = RunConfig()
        unused = {
            "threshold": (r.derivation != "threshold", "--derivation threshold"),
            "attack_steps": (r.perturbation != "adversarial", "--perturbation adversarial"),
            "epsilon_alpha": (r.perturbation == "none", "--perturbation random or adversarial"),
            "aux_beta": (not r.aux_skip, "--aux-skip"), "aux_decay": (not r.aux_skip, "--aux-skip"),
            "aux_t_max": (not r.aux_skip, "--aux-skip"),
            "oles_window": (self.method != "oles", "--method oles"),
            "oles_threshold": (self.method != "oles", "--method oles"),
            "lambda_reg": (self.method != "lambda-darts", "--method lambda-darts"),
            "lambda_epsilon": (self.method != "lambda-darts", "--method lambda-darts"),
        }
        for name, (absent, part) in unused.items():
            if absent and getattr(self, name) != getattr(d, name):
                option = "--lambda" if name == "lambda_reg" else f"--{name.replace('_', '-')}"
                raise ValueError(f"{option} applies to {part}, which this run does not use (--method {self.method})")

    def _validate_drnas(self, r):
        """DrNAS' stages: their options belong to it, and each stage's K must divide C."""
        given = [f"--{n.replace('_', '-')}" for n in ("drnas_channels", "drnas_keep", "drnas_frozen")
                 if getattr(self, n) is not None]
        if self.method != "drnas":
            if given:
                raise ValueError(f"{given[0]} applies to --method drnas, not {self.method}")
            return
        if self.partial_channels != 1:
            raise ValueError("--method drnas sets its partial channels per stage (--drnas-channels), not "
                             "--partial-channels")
        for name in ("drnas_channels", "drnas_keep"):
            values = getattr(r, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"--{name.replace('_', '-')} must be integers >= 1, one per stage, got {values!r}")
        if len(r.drnas_channels) != len(r.drnas_keep):
            raise ValueError(f"--drnas-channels {r.drnas_channels} and --drnas-keep {r.drnas_keep} must name "
                             f"the same number of stages")
        if len(r.drnas_channels) > self.epochs:
            raise ValueError(f"--method drnas: {len(r.drnas_channels)} stages need --epochs >= "
                             f"{len(r.drnas_channels)}, got {self.epochs}")
        if any(self.C % K for K in r.drnas_channels):
            lcm = math.lcm(*r.drnas_channels)
            raise ValueError(f"--method drnas: its stages' partial channels {r.drnas_channels} must each divide "
                             f"--C, got {self.C} (e.g. --C {lcm * max(1, round(self.C / lcm))})")
        frozen = r.drnas_frozen
        if isinstance(frozen, bool) or not isinstance(frozen, (int, float)) or not 0 <= frozen < 1:
            raise ValueError(f"--drnas-frozen must be in [0, 1), got {frozen!r}")

    def _validate_partial_channels(self):
        K = self.partial_channels
        if K == 1:
            return
        check_partial_channels(K, self.C)
        relaxation = self.relaxation or METHODS[self.method].relaxation
        if relaxation in ("gumbel_hard", "categorical"):
            raise ValueError(f"--partial-channels applies to the soft methods (every operation of an edge mixed); "
                             f"--method {self.method} samples one operation per edge ({relaxation}): use 1")
        if self.space == "nb201":
            raise ValueError("--partial-channels needs a DARTS-style space (PC-DARTS' cells), not nb201")
        if self.constraint != "none":
            raise ValueError("--partial-channels with --constraint: SNAS' costs price full-width operations; use one")
        if self.channels_last and self.device == "cpu" and self.C // K < MIN_CHANNELS_LAST_CHANNELS:
            raise ValueError(f"--channels-last on CPU needs --C / --partial-channels >= {MIN_CHANNELS_LAST_CHANNELS} "
                             f"(the operations' channels), got {self.C} / {K}")


def read_run_config(run_dir: str, option: str) -> RunConfig:
    """The validated configuration of the search run in ``run_dir``; ``option`` names where it came from."""
    if not os.path.exists(run_dir):
        raise InputError(f"{option} {run_dir}: no such directory")
    if not os.path.isdir(run_dir):
        raise InputError(f"{option} {run_dir} is a file; it must name a search run's directory")
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise InputError(f"{option} {run_dir}: no search run there (config.json missing)")
    _refuse_training_run(path, run_dir, option)
    cfg = read_config(path, RunConfig, option)
    try:
        cfg.validate()
    except (ValueError, TypeError) as e:
        raise InputError(f"{option}: {path}: {e}") from None
    return cfg




def _refuse_training_run(path: str, run_dir: str, option: str) -> None:
    """A `pynas train` run's directory also holds a config.json: say so instead of listing its unknown keys."""
    try:
        with open(path) as f:
            keys = set(json.load(f))
    except (OSError, ValueError, TypeError, RecursionError):
        return  # read_config reports it
    if {"genotype", "auxiliary_weight"} <= keys and "method" not in keys:
        raise InputError(f"{option} {run_dir} is a training run (pynas train), not a search run: give the "
                         f"directory of a `pynas search` run")


# -- `pynas search`'s options ---------------------------------------------------------


def add_search_arguments(parser):
    """`pynas search`'s options (also what `pynas bench memory` takes of them)."""
    d = RunConfig()
    g = parser.add_argument_group("what to search")
    g.add_argument("--preset", choices=tuple(SEARCH_PRESETS), default=None,
                   help="a paper's published search settings (docs/presets.md); --config and explicit options win")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="a run's config.json: repeats that run; explicit options win")
    g.add_argument("--space", choices=SPACES, default=d.space)
    g.add_argument("--method", choices=tuple(METHODS), default=d.method,
                   help="a composition with its authors' defaults (pynas.search.methods); the parts below change it")
    g.add_argument("--relaxation", choices=RELAXATIONS, default=None,
                   help="override the method's relaxation (e.g. sigmoid for single-level)")
    g.add_argument("--s1-from", default=None, metavar="RUN_DIR",
                   help="for --space s1-from-run: a DARTS search whose top-2 operations per edge form the space")
    g = parser.add_argument_group("the method's parts (default: the method's own)")
    g.add_argument("--regularizer", dest="regularizers", action="append", default=None, metavar="NAME[=WEIGHT]",
                   help="a term of the objective, repeatable, replacing the method's: zero-one (FairDARTS' "
                        "−mean(σ(α)−½)², weight 10, α's and the weights' loss), zero-one-l1, beta-decay (β-DARTS' "
                        "mean logsumexp(α), α's loss, weight λ's slope per epoch, 0.5), dirichlet-kl (DrNAS' "
                        "Σ KL(Dir(ELU(α)+1) ‖ Dir(1)), α's loss, weight 1e-3); none: no term")
    g.add_argument("--perturbation", choices=PERTURBATIONS, default=None,
                   help="of softmax(α) in the weight step: random (SDARTS-RS), adversarial (SDARTS-ADV's attack)")
    g.add_argument("--aux-skip", action=argparse.BooleanOptionalAction, default=None,
                   help="DARTS-' auxiliary skip β(e)·aux(x) beside every edge")
    g.add_argument("--derivation", choices=DERIVATIONS, default=None,
                   help="the genotype's rule: darts (top-2 inputs per node, `none` left out), darts-with-none (the "
                        "same with `none` ranked and kept: OLES' code), snas (child graph), nb201 (argmax per edge; "
                        "--space nb201), threshold (FairDARTS: top-2 inputs, kept if σ >= --threshold; sigmoid)")
    g.add_argument("--threshold", type=float, default=d.threshold, help="--derivation threshold's σ")
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    g.add_argument("--data", default=None, metavar="DIR", help="dataset folder (cifar10, cifar100, svhn)")
    g.add_argument("--download", action="store_true", help="download the dataset into --data")
    g.add_argument("--cutout", type=int, default=d.cutout, help="cutout length (0: off)")
    g.add_argument("--workers", type=int, default=d.workers, metavar="N",
                   help="processes making the batches (0: the main one; a whole augmented batch is made at once, "
                        "~1.5 ms per 64 CIFAR images: pynas.data.loader); the batches are the same for any N")
    g.add_argument("--train-fraction", type=float, default=None,
                   help="share of the training set the weights train on, the rest is α's validation split "
                        "(default: 0.5 for bi-level methods, 1 for single-level ones)")
    g = parser.add_argument_group("supernet")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--max-memory", default=d.max_memory, metavar="SIZE",
                   help="choose the batch: the largest whose measured search step fits SIZE (10GB, 512MiB; or a "
                        "fraction of the GPU's memory, e.g. 0.8, with --device cuda); recorded as the run's "
                        "batch size (default: %(default)s: --batch-size)")
    g.add_argument("--C", type=int, default=d.C, help="initial channels")
    g.add_argument("--layers", type=int, default=d.layers, help="cells (NAS-Bench-201: 3 stages of layers/3 cells)")
    g.add_argument("--steps", type=int, default=d.steps, help="intermediate nodes per cell")
    g.add_argument("--seed", type=int, default=d.seed)
    g = parser.add_argument_group("weight optimiser (SGD, cosine annealing)")
    g.add_argument("--w-lr", type=float, default=d.w_lr)
    g.add_argument("--w-lr-min", type=float, default=None, help="default: 0.001; 0 for snas and dsnas")
    g.add_argument("--w-momentum", type=float, default=d.w_momentum)
    g.add_argument("--w-weight-decay", type=float, default=d.w_weight_decay)
    g.add_argument("--w-nesterov", action=argparse.BooleanOptionalAction, default=d.w_nesterov)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="weights' gradient norm clip")
    g = parser.add_argument_group("architecture optimiser")
    g.add_argument("--a-optimizer", choices=A_OPTIMIZERS, default=d.a_optimizer)
    g.add_argument("--a-lr", type=float, default=None,
                   help="default: 3e-4 (DARTS); 0.15 on the embedded digits (a short search: docs/fidelity.md)")
    g.add_argument("--a-betas", type=float, nargs=2, default=d.a_betas, metavar=("BETA1", "BETA2"), help="Adam")
    g.add_argument("--a-momentum", type=float, default=d.a_momentum, help="SGD")
    g.add_argument("--a-weight-decay", type=float, default=None, help="default: 1e-3; 0 under sigmoid")
    g.add_argument("--a-grad-clip", type=float, default=None, help="α's gradient norm clip (default: none)")
    g.add_argument("--a-init", default=None,
                   help="normal (1e-3 N(0,1)), zeros or a number (default: the method's; -ln 7 under sigmoid)")
    g = parser.add_argument_group("Gumbel sampling (snas, gdas, dsnas)")
    g.add_argument("--tau-start", type=float, default=None, help="default: the relaxation's (gumbel 1, gumbel_hard 10)")
    g.add_argument("--tau-end", type=float, default=None, help="default: the relaxation's (gumbel 0.03, gumbel_hard 0.1)")
    g.add_argument("--tau-schedule", choices=SCHEDULE_KINDS, default=None, help="default: the relaxation's")
    g.add_argument("--sample-per", choices=SAMPLE_PER, default=d.sample_per,
                   help="one sample per forward for all cells of a type, per cell, or per input sample")
    g = parser.add_argument_group("method options")
    g.add_argument("--constraint", choices=("none", *PRESETS), default=d.constraint,
                   help="snas: resource constraint (docs/fidelity.md)")
    g.add_argument("--constraint-weight", type=float, default=None, help="snas: λ (default: the constraint's)")
    g.add_argument("--cost-estimator", choices=ESTIMATORS, default=d.cost_estimator)
    g.add_argument("--epsilon-alpha", type=float, default=d.epsilon_alpha,
                   help="random and adversarial perturbations: the range ε reached at the end (ramped linearly "
                        "from 0.03 per epoch)")
    g.add_argument("--attack-steps", type=int, default=d.attack_steps,
                   help="adversarial perturbation: sign-gradient steps of 2ε/steps each")
    g.add_argument("--aux-beta", type=float, default=d.aux_beta, help="--aux-skip: β at the start")
    g.add_argument("--aux-decay", choices=AUX_DECAYS, default=d.aux_decay, help="--aux-skip: β's decay per epoch")
    g.add_argument("--lambda", dest="lambda_reg", type=float, default=d.lambda_reg,
                   help="lambda-darts: λ, reached in the last epoch (λ·e/(E − 1))")
    g.add_argument("--lambda-epsilon", type=float, default=d.lambda_epsilon,
                   help="lambda-darts: ε₀ of the finite difference (ε = ε₀/‖p‖)")
    g.add_argument("--drnas-channels", type=int, nargs="+", default=None, metavar="K",
                   help="drnas: partial channels K per stage (default: 6 4; nb201: 1)")
    g.add_argument("--drnas-keep", type=int, nargs="+", default=None, metavar="N",
                   help="drnas: operations each edge keeps per stage, the top by α (default: 7 4; nb201: 5)")
    g.add_argument("--drnas-frozen", type=float, default=None,
                   help="drnas: the share of each stage in which α is frozen (default: 0.4, the code's 10 of 25 "
                        "epochs; nb201: 0)")
    g.add_argument("--oles-window", type=int, default=d.oles_window,
                   help="oles: α steps per window (the code judges window + 1 similarities over window)")
    g.add_argument("--oles-threshold", type=float, default=d.oles_threshold,
                   help="oles: freeze an operation whose window's gradient similarity is below this")
    g.add_argument("--aux-t-max", type=int, default=d.aux_t_max,
                   help="--aux-skip: the epoch a linear β reaches 0 (DARTS-' code: 50, whatever --epochs)")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help="weights-only epochs before α trains (sgas; pc-darts-cifar10: 15) (default: %(default)s)")
    g.add_argument("--first-decision", type=int, default=d.first_decision, help="sgas: epochs before the first decision")
    g.add_argument("--decision-freq", type=int, default=d.decision_freq, help="sgas: epochs between decisions")
    g.add_argument("--batch-increase", type=int, default=d.batch_increase, help="sgas: batch growth per decision")
    g.add_argument("--pt", dest="sgas_pt", action="store_true",
                   help="sgas: choose each decided edge's operation by perturbation (SGAS+PT)")
    g.add_argument("--pt-val-batches", type=int, default=None,
                   help="sgas --pt: validation batches per measurement (default: all)")
    g.add_argument("--partial-channels", type=int, default=d.partial_channels, metavar="K",
                   help="PC-DARTS: each edge's operations see 1/K of the channels (the rest bypass them) and β "
                        "normalises each node's edges; soft methods only, K divides --C (default: %(default)s)")
    g.add_argument("--log-grad-correlation", action="store_true",
                   help="log Single-DARTS' gradient correlation (Eq. 8) per node every epoch")
    g.add_argument("--log-prob-grad", default=None, metavar="CELLS",
                   help="log ∂L/∂p per edge and op of these cells every epoch (Single-DARTS Fig. 3): all, or 0,3")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default: runs/<space>-<method>-<dataset>-<time>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    g.add_argument("--keep-every", type=int, default=d.keep_every, metavar="N",
                   help="also keep the checkpoint of every N-th epoch (a search trajectory; 0: the latest only)")
    g.add_argument("--quiet", action="store_true", help="no progress display, only the epochs' summary lines")
    add_log_every_argument(g)
    g.add_argument("--benchmark", default=None, metavar="PATH",
                   help="--space nb201: NAS-Bench-201's accuracies of each epoch's cell, logged (the benchmark's .pth, "
                        "NATS-Bench's NATS-tss-v1_0-3ffb9.pickle.pbz2 or its -simple directory)")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help='also write each epoch\'s metrics and α as TensorBoard scalars into DIR '
                        '(pip install "pynas[tensorboard]")')
    g.add_argument("--device", choices=("cpu", "cuda"), default=d.device)
    g.add_argument("--amp", choices=("none", "bf16"), default=d.amp, help="bf16 autocast")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the supernet")
    g.add_argument("--checkpoint-cells", action="store_true",
                   help="per-cell activation checkpointing: each cell is computed again in backward (about one "
                        "cell's activations kept instead of all; time reported by pynas bench search) "
                        "(default: %(default)s)")
    g.add_argument("--memory-saving", action=argparse.BooleanOptionalAction, default=None,
                   help="every memory-for-time form of the operations on (pynas.nn.ops.save_memory): on CPU "
                        "fewer activations kept for backward at a slower step (CUDA runs them all anyway) "
                        "(default: on with --checkpoint-cells or --max-memory, off otherwise)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay the soft methods' whole step (α and weight steps, both optimisers) from a CUDA "
                        "graph, captured again each epoch (--device cuda; darts, darts-2nd, single-level, sdarts-rs, "
                        "fixed) (default: %(default)s)")
    g.add_argument("--overlap-reduction", action=argparse.BooleanOptionalAction, default=d.overlap_reduction,
                   help="data parallel: average the weights' gradients while backward runs (default: with "
                        "--device cuda; on CPU after backward, measured faster with gloo on shared cores)")
    g.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (or launch with torchrun)")
    for action in parser._actions:  # `--help` shows every default, also of options without a help text
        if action.help is None and action.option_strings:
            action.help = "(default: %(default)s)"


def explicit_options(argv) -> set:
    """The destinations of the options given on the command line (not defaults)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_search_arguments(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def config_from_arguments(args, argv) -> RunConfig:
    """The run configuration of parsed `pynas search` options: defaults < --preset < --config FILE < explicit
    options (those in ``argv``)."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    values = {}
    explicit = explicit_options(argv)
    # The method's own options (its authors' space, α's betas) lie beneath everything else.
    values.update(METHODS[_chosen_method(args, explicit)].options)
    if args.preset is not None:
        values.update(SEARCH_PRESETS[args.preset])
    if args.config is not None:
        try:
            with open(args.config) as f:
                loaded = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"--config {args.config}: {e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: not a run configuration (a JSON object)")
        unknown = sorted(set(loaded) - fields)
        if unknown:
            raise ValueError(f"--config {args.config}: unknown keys {unknown}")
        loaded.pop("out", None)  # a repeated run gets its own directory
        values.update(loaded)
    if {"max_memory", "batch_size"} <= explicit:
        raise ValueError("--max-memory chooses the batch size: give it or --batch-size, not both")
    if "max_memory" not in explicit:
        # A config file's batch was already chosen within its max_memory: it is repeated, not chosen again.
        values.pop("max_memory", None)
    values.update({k: getattr(args, k) for k in explicit if k in fields})
    if "a_betas" in values:
        values["a_betas"] = tuple(values["a_betas"])
    if values.get("regularizers") is not None:  # `--regularizer none`: no term at all
        values["regularizers"] = [r for r in values["regularizers"] if r != "none"]
    return RunConfig(**values)


def _chosen_method(args, explicit) -> str:
    """The method a run ends up with: explicit > --config FILE > --preset > the default."""
    if "method" in explicit:
        return args.method
    if args.config is not None:
        try:
            with open(args.config) as f:
                loaded = json.load(f)
            if isinstance(loaded, dict) and loaded.get("method") in METHODS:
                return loaded["method"]
        except (OSError, ValueError):
            pass  # reported where the file is read
    if args.preset is not None and "method" in SEARCH_PRESETS[args.preset]:
        return SEARCH_PRESETS[args.preset]["method"]
    return RunConfig.method
