"""A search run: model, data, strategy, a run directory with the config, per-
epoch metrics (JSON lines), the genotype, and an atomic checkpoint each epoch
from which ``--resume`` continues exactly."""
import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..analysis.grad_correlation import gradient_correlation, probability_gradients
from ..data import load_dataset, load_image_dataset, loader, split
from ..genotype import Genotype, NB201Genotype, derive_genotype, derive_nb201
from ..errors import InputError, NonFiniteError
from ..io import (append_jsonl, checkpoint_header, load_checkpoint, load_state, parameter_shapes, read_config,
                  remove_stale_temporaries, save_checkpoint, truncate_jsonl, write_json, write_text)
from ..nn import DARTS, NB201Network, SearchNetwork, minimal_cell_network, s1_from_alphas
from ..nn.layout import MIN_CHANNELS_LAST_CHANNELS
from ..nn.partial import check_partial_channels
from ..tensorboard import TensorBoardLogger
from .cost import ESTIMATORS, PRESETS, ResourceConstraint
from .cuda_graphs import GraphedStep, check_cuda_graphs
from ..arch import DEFAULT_SCHEDULES, RELAXATIONS, SAMPLE_PER, SCHEDULE_KINDS, TemperatureSchedule, parse_init
from .strategies import A_OPTIMIZERS, METHODS, SearchConfig, Sgas

DIGITS_A_LR = 0.15
PROGRESS_SECONDS = 1.0  # the terminal's progress line (a host synchronisation) at most this often
SPACES = ("darts", "nb201", "s1", "s2", "s3", "s4", "s1-from-run", "minimal")


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
    device: str = "cpu"
    s1_from: Optional[str] = None  # s1-from-run: the run directory of a DARTS search whose top-2 ops per edge form it
    relaxation: Optional[str] = None  # overrides the method's relaxation (e.g. sigmoid for single-level)
    amp: str = "none"  # "bf16": autocast
    channels_last: bool = False
    compile: bool = False
    checkpoint_cells: bool = False  # per-cell activation checkpointing (SearchNetwork.checkpoint_cells)
    cuda_graphs: bool = False  # the soft step replayed from a CUDA graph (pynas.search.cuda_graphs)
    overlap_reduction: Optional[bool] = None  # data parallel: weights' gradients averaged during backward (None: on CUDA)
    constraint: str = "none"  # SNAS resource constraint: none, mild, moderate, aggressive, snas-code
    constraint_weight: Optional[float] = None  # λ; None: the constraint level's
    cost_estimator: str = "reparameterised"
    epsilon_alpha: float = 0.3  # SDARTS-RS: the final noise range (ramped from 0.03)
    warmup_epochs: int = 0  # weights-only epochs before α trains (SGAS' code: none; PC-DARTS' code: 15)
    first_decision: int = 10  # SGAS: the first decision after this many epochs
    decision_freq: int = 5  # SGAS: epochs between decisions
    batch_increase: int = 0  # SGAS: the batch grows by this after each decision
    sgas_pt: bool = False  # SGAS+PT: perturbation-based operation choice on each decided edge
    pt_val_batches: Optional[int] = None  # SGAS+PT: validation batches per measurement (all)
    log_grad_correlation: bool = False  # Single-DARTS Eq. 8 on each epoch's first batches
    log_prob_grad: Optional[str] = None  # Single-DARTS Fig. 3: ∂L/∂p per edge of these cells ("all" or "0,3")
    tensorboard: Optional[str] = None  # a TensorBoard log directory beside metrics.jsonl (rank 0)
    keep_every: int = 0  # also keep checkpoint-epoch<N>.pt every N epochs (0: only the latest)
    # PC-DARTS: each edge's operations see 1/K of the channels, and β normalises each node's edges (K > 1).
    partial_channels: int = 1

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
        strategy, relaxation, arch_kwargs = METHODS[self.method]
        relaxation = self.relaxation or relaxation
        out = dataclasses.replace(self, relaxation=relaxation, a_betas=tuple(self.a_betas))
        if out.a_lr is None:
            out.a_lr = DIGITS_A_LR if self.dataset == "digits" else 3e-4
        if out.train_fraction is None:
            out.train_fraction = 0.5 if strategy.bilevel else 1.0
        if out.w_lr_min is None:
            out.w_lr_min = 0.0 if self.method in ("snas", "dsnas") else 0.001  # SNAS App. G.1: annealed to 0
        if out.a_weight_decay is None:
            out.a_weight_decay = 0.0 if relaxation == "sigmoid" else 1e-3
        if out.a_init is None:
            out.a_init = str(arch_kwargs.get("init", -math.log(7) if relaxation == "sigmoid" else "normal"))
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
        if self.train_fraction == 1 and METHODS[self.method][0].bilevel:
            raise ValueError(f"--method {self.method} is bi-level: α needs a validation split, so "
                             f"--train-fraction must be below 1")
        for name in ("w_lr", "w_lr_min", "w_momentum", "w_weight_decay", "grad_clip", "a_lr", "a_weight_decay",
                     "a_momentum", "a_grad_clip", "tau_start", "tau_end", "constraint_weight", "epsilon_alpha"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value!r}")
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
        if self.method in ("sdarts-rs", "sgas") and (self.relaxation or "softmax") != "softmax":
            raise ValueError(f"--method {self.method} works on softmax(α); drop --relaxation {self.relaxation}")
        if self.epsilon_alpha < 0.03:
            raise ValueError(f"--epsilon-alpha must be at least 0.03 (the ramp's start), got {self.epsilon_alpha}")
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
        if self.cuda_graphs:
            check_cuda_graphs(self.method, self.device, relaxation=self.relaxation, compile=self.compile,
                              checkpoint_cells=self.checkpoint_cells, tau_schedule=self.tau_schedule)
        if self.max_memory is not None:
            from ..memory import budget_bytes

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


    def _validate_partial_channels(self):
        K = self.partial_channels
        if K == 1:
            return
        check_partial_channels(K, self.C)
        relaxation = self.relaxation or METHODS[self.method][1]
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


def build_model(cfg: RunConfig, info):
    """The supernet of a (resolved or not) run configuration."""
    cfg = cfg.resolved()
    init = cfg.a_init
    schedule = (TemperatureSchedule(cfg.tau_start, cfg.tau_end, cfg.tau_schedule)
                if cfg.tau_schedule is not None else None)
    # Seeded alike on every rank: data-parallel ranks draw the same samples.
    arch_kwargs = dict(init=init, schedule=schedule, sample_per=cfg.sample_per,
                       generator=torch.Generator(cfg.device).manual_seed(cfg.seed + 1))
    relaxation = cfg.relaxation
    if cfg.space == "nb201":
        return NB201Network(cfg.C, N=max(1, cfg.layers // 3), num_classes=info.num_classes,
                            in_channels=info.in_channels, relaxation=relaxation, **arch_kwargs)
    if cfg.space == "minimal":
        return minimal_cell_network(cfg.C, info.num_classes, cfg.layers, in_channels=info.in_channels,
                                    relaxation=relaxation, partial_channels=cfg.partial_channels, **arch_kwargs)
    space = s1_space(cfg.s1_from) if cfg.space == "s1-from-run" else cfg.space
    return SearchNetwork(cfg.C, info.num_classes, cfg.layers, steps=cfg.steps, multiplier=cfg.steps,
                         space=space, in_channels=info.in_channels, relaxation=relaxation,
                         partial_channels=cfg.partial_channels, **arch_kwargs)


def build_search(cfg: RunConfig, info, steps_per_epoch: int, choose_op=None):
    """(supernet, strategy) of a resolved run configuration, on its device, as a
    search runs them (also what :mod:`pynas.memory` measures)."""
    model = build_model(cfg, info).to(cfg.device)
    extra = {}
    if cfg.constraint != "none":
        extra = dict(constraint=ResourceConstraint.named(cfg.constraint, cfg.cost_estimator, cfg.constraint_weight),
                     image_size=info.image_size)
    if cfg.method == "sdarts-rs":
        extra = dict(epsilon=cfg.epsilon_alpha, seed=cfg.seed + 2)
    if cfg.method == "sgas":
        extra = dict(warmup_epochs=cfg.warmup_epochs, first_decision=cfg.first_decision,
                     decision_freq=cfg.decision_freq, choose_op=choose_op)
    strategy = METHODS[cfg.method][0](model, search_config(cfg), steps_per_epoch, **extra)
    if cfg.channels_last:  # the network's layout too (evaluation's inputs): C was checked on CPU
        model.to(memory_format=torch.channels_last)
        model.channels_last = strategy.channels_last = True
    if cfg.amp == "bf16":
        strategy.autocast_dtype = torch.bfloat16
    strategy.overlap_reduction = cfg.overlap_reduction
    if cfg.compile:
        strategy.forward = torch.compile(model)
    model.checkpoint_cells = cfg.checkpoint_cells  # SearchNetwork's per-cell activation checkpointing
    return model, strategy


def s1_space(run_dir: str):
    """``s1-from-run``: the top-2 operations per edge of a DARTS search's α (how Zela
    et al. built S1; the published S1 itself is ``--space s1``)."""
    path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--s1-from: no checkpoint at {path}")
    state = load_checkpoint(path, "search", {})["model"]
    alphas = {t: state[f"arch.alphas.{t}"] for t in ("normal", "reduce") if f"arch.alphas.{t}" in state}
    if set(alphas) != {"normal", "reduce"} or alphas["normal"].size(-1) != len(DARTS.ops):
        raise ValueError(f"--s1-from: {run_dir} is not a search over the DARTS space")
    return s1_from_alphas(alphas)


# The derivation rule each method's paper uses (SNAS Sec. 3.1: the child graph keeps
# every edge whose argmax is not `none`; the DARTS family keeps the top-2 per node).
METHOD_RULES = {"snas": "snas", "dsnas": "snas"}


def method_rule(method: str) -> str:
    return METHOD_RULES.get(method, "darts")


def genotype_of(model, rule: str = "darts") -> str:
    """The genotype of ``model`` by ``rule`` (NAS-Bench-201 supernets: argmax per edge)."""
    if isinstance(model, NB201Network):
        return str(derive_nb201(model.arch.probabilities("cell"), model.arch.ops))
    return str(derive_genotype(model.arch, rule))


def search_data(cfg: RunConfig):
    """(weights' training data, α's validation data or the held-out test set, DatasetInfo).

    Bi-level methods split the training set (``train_fraction``); single-level ones
    train on all of it and report accuracy on the dataset's test set (for the
    embedded digits, the fixed held-out split that ``pynas train`` tests on)."""
    from ..train import DIGITS_TEST_FRACTION

    cfg = cfg.resolved()
    if cfg.dataset == "digits":  # the search never sees the digits' fixed test split
        digits, info = load_dataset("digits")
        dataset, test = split(digits, 1 - DIGITS_TEST_FRACTION, seed=0)
    else:
        dataset, info = load_dataset(cfg.dataset, cfg.data, cfg.cutout, cfg.download)
        test = None
    if cfg.train_fraction < 1:
        train, val = split(dataset, cfg.train_fraction, cfg.seed)
    else:
        train, val = dataset, test if test is not None else load_image_dataset(cfg.dataset, cfg.data, train=False)[0]
    return train, val, info


def search_config(cfg: RunConfig) -> SearchConfig:
    """The optimisers' settings of a resolved run configuration."""
    return SearchConfig(epochs=cfg.epochs, w_lr=cfg.w_lr, w_lr_min=cfg.w_lr_min, w_momentum=cfg.w_momentum,
                        w_weight_decay=cfg.w_weight_decay, w_nesterov=cfg.w_nesterov, grad_clip=cfg.grad_clip,
                        a_lr=cfg.a_lr, a_betas=tuple(cfg.a_betas), a_weight_decay=cfg.a_weight_decay,
                        a_optimizer=cfg.a_optimizer, a_momentum=cfg.a_momentum, a_grad_clip=cfg.a_grad_clip,
                        warmup_epochs=cfg.warmup_epochs)


def _rng_state(model):
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "arch_generator": model.arch.generator.get_state() if model.arch.generator is not None else None}


def _set_rng_state(model, state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["arch_generator"] is not None:
        model.arch.generator.set_state(state["arch_generator"])


def evaluate(model, data, batch_size, device="cpu"):
    model.eval()
    total, correct, loss = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader(data, batch_size, 0, 0, shuffle=False):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return loss / max(total, 1), correct / max(total, 1)


def _arch_summary(model):
    out = {}
    for cell_type in model.arch.cell_types:
        p = model.arch.probabilities(cell_type).detach()
        q = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
        entropy = -(q * q.clamp_min(1e-12).log()).sum(-1)
        out[cell_type] = {"probabilities": p.tolist(), "entropy": entropy.tolist()}
        edge = model.arch.edge_weights(cell_type)
        if edge is not None:  # PC-DARTS' β, normalised per node: what derivation multiplies in
            out[cell_type]["edge_weights"] = edge.detach().tolist()
    return out


def _checksum(t: torch.Tensor) -> torch.Tensor:
    """Σ t ⊙ r with r fixed pseudo-random in [1, 2) (float64): two tensors that differ anywhere (a
    one-hot sample's other column too, which a plain sum would miss) differ in it almost surely."""
    return (t.double() * _checksum_factors(tuple(t.shape), str(t.device))).sum()


@functools.lru_cache(maxsize=16)
def _checksum_factors(shape, device):
    r = torch.rand(shape, generator=torch.Generator().manual_seed(math.prod(shape)), dtype=torch.float64)
    return (1 + r).to(device)


def _distributed():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SearchRun:
    def __init__(self, cfg: RunConfig, resume: Optional[str] = None, quiet: bool = False):
        if resume:
            cfg = _resumed_config(resume)
        else:
            _check_new_out(cfg.out)
        cfg.validate()
        cfg = cfg.resolved()
        self.cfg, self.quiet = cfg, quiet
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.train_data, self.val_data, self.info = search_data(cfg)
        self.rank, self.world = _distributed()
        if cfg.max_memory is not None and not resume:
            cfg = self.cfg = self._batch_within(cfg, cfg.max_memory)
        # Steps per epoch on each rank (a DistributedSampler gives each rank 1/world of the data).
        steps = math.ceil(math.ceil(len(self.train_data) / self.world) / cfg.batch_size)
        self.model, self.strategy = build_search(cfg, self.info, steps,
                                                 choose_op=self._op_by_perturbation if cfg.sgas_pt else None)
        if cfg.cuda_graphs:
            check_cuda_graphs(cfg.method, cfg.device, relaxation=cfg.relaxation, world=self.world)
        self.step = GraphedStep(self.strategy) if cfg.cuda_graphs else self.strategy.step
        # Opened first: a missing tensorboard package stops the run before any work.
        self.tensorboard = (TensorBoardLogger(cfg.tensorboard, op_names=self.model.arch.ops)
                            if cfg.tensorboard and self.rank == 0 else None)
        self.epoch = 0
        self.last_record = None  # the metrics of the last epoch this process ran
        self.out = cfg.out or os.path.join("runs", f"{cfg.space}-{cfg.method}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        if self.world > 1:  # one run directory: rank 0's name
            self._watch_samples()
            names = [self.out]
            torch.distributed.broadcast_object_list(names, src=0)
            self.out = names[0]
        self.checkpoint_path = os.path.join(self.out, "checkpoint.pt")
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            remove_stale_temporaries(self.out)  # of atomic writes a kill interrupted
        if resume:
            self._load()
        elif self.rank == 0:
            write_json(os.path.join(self.out, "config.json"), dataclasses.asdict(cfg))

    def _batch_within(self, cfg: RunConfig, budget_text: str) -> RunConfig:
        """``cfg`` with the largest batch whose search step fits ``budget_text``
        (measured by :mod:`pynas.memory` on rank 0, which all ranks follow), said in the log."""
        from ..memory import budget_bytes, estimate, format_bytes

        chosen = [None, None]  # (batch, error) from rank 0
        if self.rank == 0:
            try:
                budget = budget_bytes(budget_text, "--max-memory", cfg.device)
                est = estimate(cfg, self.info)
                batch = est.largest_batch(budget, "--max-memory")
                chosen[0] = min(batch, len(self.train_data))
                # Printed even with --quiet: it decides the run.
                print(f"--max-memory {budget_text} ({format_bytes(budget)} on {cfg.device}): batch {chosen[0]}"
                      + (f" (the {len(self.train_data)} training images; {batch} would fit)" if chosen[0] < batch
                         else "")
                      + f", predicted peak {format_bytes(est.peak(chosen[0]))} = "
                        f"{format_bytes(sum(est.fixed.values()))} + {format_bytes(sum(est.per_image.values()))}"
                        f" per image (measured at batch {est.probe_batches[0]} and {est.probe_batches[1]}"
                      + (f"; {est.assumption}" if est.assumption else "") + ")"
                      + ("; --batch-increase grows it beyond the budget later" if cfg.batch_increase else ""),
                      flush=True)
            except ValueError as e:
                chosen[1] = str(e)
        if self.world > 1:
            torch.distributed.broadcast_object_list(chosen, src=0)
        if chosen[1] is not None:
            raise ValueError(chosen[1])
        return dataclasses.replace(cfg, batch_size=chosen[0])

    def _op_by_perturbation(self, cell_type, edge):
        """SGAS+PT: the operation of a decided edge by DARTS-PT's rule on the validation split."""
        from ..select.pt import op_by_perturbation

        batches = list(loader(self.val_data, self.cfg.batch_size, self.cfg.seed, 0, shuffle=False))
        if self.cfg.pt_val_batches is not None:
            batches = batches[: self.cfg.pt_val_batches]
        chosen, scores = op_by_perturbation(self.model, cell_type, edge, batches, "acc", self.cfg.device)
        self._log(f"  SGAS+PT {cell_type} edge {edge}: accuracy without each op {scores}")
        return chosen

    # -- checkpoints ----------------------------------------------------------
    def _check_finite(self):
        """Stops the run at a NaN or infinite loss or α, before it is checkpointed or derives a genotype."""
        record = self.last_record or {}
        bad = {k: record[k] for k in ("train_loss", "val_loss")
               if isinstance(record.get(k), float) and not math.isfinite(record[k])}
        if not bad and not all(bool(torch.isfinite(a).all()) for a in self.model.arch_parameters()):
            bad = {"α": "non-finite"}
        if bad:
            what = ", ".join(f"{k} {v}" for k, v in bad.items())
            raise NonFiniteError(f"epoch {self.epoch}: {what}: the run stops without saving this epoch or writing "
                                 f"a genotype (the checkpoint in {self.out} keeps epoch {self.epoch - 1}); "
                                 f"lower --w-lr / --a-lr, or set --grad-clip")

    def _header(self):
        return checkpoint_header("search", self.cfg.space, self.cfg.method, parameter_shapes(self.model))

    def _save(self):
        self._check_finite()  # on every rank: all of them stop
        if self.rank != 0:  # every rank holds the same weights' gradients and α; rank 0 writes
            return
        state = {"epoch": self.epoch, "model": self.model.state_dict(), "strategy": self.strategy.state_dict(),
                 "rng": _rng_state(self.model)}
        save_checkpoint(self.checkpoint_path, self._header(), state)
        if self.cfg.keep_every and self.epoch % self.cfg.keep_every == 0:  # a search trajectory, for the analyses
            save_checkpoint(kept_checkpoint(self.out, self.epoch), self._header(), state)

    def _load(self):
        if not os.path.exists(self.checkpoint_path):
            # Killed before its first checkpoint was written: start again from the beginning, which
            # is the same run (everything is seeded from the configuration).
            self._log(f"{self.checkpoint_path} does not exist (no epoch finished): starting the run again")
            if self.rank == 0:
                truncate_jsonl(os.path.join(self.out, "metrics.jsonl"), 0)
            return
        # Checkpoints hold tensors, numbers and containers only: no pickled code. The header is checked first.
        path = self.checkpoint_path
        state = load_checkpoint(path, "search", {"space": self.cfg.space, "method": self.cfg.method},
                                parameter_shapes(self.model), map_location=self.cfg.device)
        load_state(path, self.model, state.get("model"))
        try:
            self.strategy.load_state_dict(state["strategy"])
            _set_rng_state(self.model, state["rng"])
            self.epoch = int(state["epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise InputError(f"{path}: its optimiser or random state does not fit this run "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if self.rank == 0:  # metrics of epochs after the checkpoint (a run killed in between) are dropped
            truncate_jsonl(os.path.join(self.out, "metrics.jsonl"), self.epoch)

    # -- the loop -------------------------------------------------------------
    def _log(self, msg):
        if not self.quiet and self.rank == 0:
            print(msg, flush=True)

    def run(self):
        cfg = self.cfg
        try:
            while self.epoch < cfg.epochs:
                self._epoch()
        except KeyboardInterrupt:
            print(f"\ninterrupted: the last finished epoch ({self.epoch}) is saved; continue with "
                  f"`pynas search --resume {self.out}`", file=sys.stderr)
            raise SystemExit(130)
        if isinstance(self.strategy, Sgas) and any(self.strategy.undecided_edges(t) for t in self.model.arch.cell_types):
            # The search ended before SGAS decided every edge: the rest greedily, now.
            for d in self.strategy.decide_all():
                self._log(f"SGAS decision {d['cell_type']} edge {d['edge']} -> {d['op']} (after the last epoch)")
            self._save()
        rule = method_rule(cfg.method)
        genotype = genotype_of(self.model, rule)
        if self.rank == 0:
            write_text(os.path.join(self.out, "genotype.txt"), genotype + "\n")
            others = {}
            if not isinstance(self.model, NB201Network):  # the other rules' genotypes beside it
                for other in ("darts", "snas"):
                    others[other] = genotype_of(self.model, other)
                    write_text(os.path.join(self.out, f"genotype-{other}.txt"), others[other] + "\n")
            write_json(os.path.join(self.out, "genotype.json"), {"genotype": genotype, "rule": rule, "by_rule": others})
        if self.tensorboard is not None:
            self.tensorboard.close()
        return genotype

    def print_summary(self, genotype: str) -> None:
        """The end of a search in a few lines: accuracy, how decided α is, the
        genotype, and where its pictures are."""
        record = self.last_record
        held_out = "validation" if self.cfg.train_fraction < 1 else "test"
        if record is not None:
            print(f"{held_out} accuracy (supernet): {record['val_acc']:.4f}")
        for cell_type in self.model.arch.cell_types:
            p = self.model.arch.probabilities(cell_type).detach().double()
            q = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
            entropy = -(q * q.clamp_min(1e-300).log()).sum(-1) / math.log(q.size(-1))
            print(f"{cell_type} cells: mean normalised entropy {float(entropy.mean()):.3f}, "
                  f"mean largest probability {float(q.max(-1).values.mean()):.3f}")
            edge = self.model.arch.edge_weights(cell_type)
            if edge is not None:
                print(f"{cell_type} cells: edge weights softmax(β) per node (ranked with α in derivation): "
                      + " ".join(f"{v:.3f}" for v in edge.tolist()))
        rule = "argmax per edge" if isinstance(self.model, NB201Network) else f"{method_rule(self.cfg.method)} rule"
        print(f"genotype ({rule}): {genotype}")
        pictures = self.draw_cells(genotype)
        if pictures:
            print(f"cells drawn: {', '.join(pictures)}")
        print(f"run directory: {self.out}   (plots: pynas analyze evolution --run {self.out} --out DIR)")

    def draw_cells(self, genotype: str):
        """The final cells as PNG diagrams in the run directory (nothing without matplotlib)."""
        from ..analysis.draw import draw_cell

        try:
            if isinstance(self.model, NB201Network):
                g = NB201Genotype.parse(genotype)
                cells = {"cell": ([(j, i, op) for i, node in enumerate(g.nodes, start=1) for op, j in node
                                   if op != "none"], 1, len(g.nodes) + 1, [len(g.nodes)])}
            else:
                g = Genotype.parse(genotype)
                cells = {t: ([(j, k + 2, op) for k, node in enumerate(g.nodes(t)) for op, j in node], 2,
                             g.steps(t) + 2, getattr(g, f"{t}_concat")) for t in ("normal", "reduce")}
            paths = []
            for cell_type, (edges, inputs, nodes, concat) in cells.items():
                path = os.path.join(self.out, f"cell-{cell_type}.png")
                draw_cell(edges, path, f"{cell_type} cell", inputs=inputs, num_nodes=nodes, concat=concat,
                          ops=self.model.arch.ops)
                paths.append(path)
            return paths
        except ImportError:
            return []

    def _ranks_agree(self) -> Tuple[bool, dict]:
        """Whether every rank holds bit-identical α and weights and drew bit-identical edge weights this
        epoch (checked, not assumed: equal α alone would hide unaveraged weight gradients or different
        Gumbel samples, since α's averaged gradient keeps α equal), and each rank's checksums of the three."""
        alpha = torch.cat([a.detach().double().flatten() for a in self.model.arch_parameters()])
        weights = torch.cat([w.detach().double().flatten() for w in self.model.weight_parameters()])
        mine = torch.cat([alpha, torch.stack([_checksum(weights), _checksum(alpha), self._samples])])
        self._samples = torch.zeros((), dtype=torch.float64, device=alpha.device)
        if torch.distributed.get_backend() != "nccl":  # gloo gathers host tensors; nccl device ones
            mine = mine.cpu()
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, mine)
        checksums = {name: [float(g[len(alpha) + i]) for g in gathered]
                     for i, name in enumerate(("weights", "alpha", "samples"))}
        return all(torch.equal(mine, other) for other in gathered), checksums

    def _watch_samples(self):
        """Adds a checksum of every edge-weight sample the architecture draws (every forward's) to
        ``self._samples``, on the device (no host read per step), for :meth:`_ranks_agree`."""
        arch = self.model.arch
        weights_of = arch.weights_of
        self._samples = torch.zeros((), dtype=torch.float64, device=self.cfg.device)

        def recorded(cell_types, batch_size=None):
            out = weights_of(cell_types, batch_size)
            for t in cell_types:
                self._samples = self._samples + _checksum(out[t].weights.detach().double())
            return out

        arch.weights_of = recorded

    def batch_size(self) -> int:
        """This epoch's batch: SGAS grows it by ``batch_increase`` after each round of decisions."""
        rounds = self.strategy.decision_rounds() if isinstance(self.strategy, Sgas) else 0
        return self.cfg.batch_size + self.cfg.batch_increase * rounds

    def _loader(self, data, seed):
        if self.world == 1:
            return loader(data, self.batch_size(), seed, self.epoch)
        sampler = torch.utils.data.DistributedSampler(data, self.world, self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(self.epoch)
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size(), sampler=sampler)

    def _epoch(self):
        cfg = self.cfg
        batch_size = self.batch_size()
        train = self._loader(self.train_data, cfg.seed)
        val = self._loader(self.val_data, cfg.seed + 1)
        val_iter = iter(val)
        # Sums stay on the device (the steps' metrics are device tensors): read once at the epoch's end,
        # and for the terminal's progress line at most every PROGRESS_SECONDS.
        sums, n = {"loss": 0.0, "acc": 0.0}, 0
        shown = time.monotonic()
        grad_correlation = prob_grad = None
        for i, train_batch in enumerate(train):
            val_batch = None
            if self.strategy.bilevel:
                try:
                    val_batch = next(val_iter)
                except StopIteration:
                    val_iter = iter(val)
                    val_batch = next(val_iter)
            if i == 0 and cfg.log_grad_correlation:
                # Bi-level: α's (validation) batch against the weights' batch; single-level: the batch with itself.
                grad_correlation = gradient_correlation(self.model, val_batch or train_batch,
                                                        train_batch if val_batch is not None else None)
            if i == 0 and cfg.log_prob_grad is not None:  # on the weights' batch, before the step
                prob_grad = probability_gradients(self.model, train_batch, cfg.prob_grad_cells())
            m = self.step(train_batch, val_batch)
            for k in sums:
                sums[k] = sums[k] + m[k]
            n += 1
            if (not self.quiet and self.rank == 0 and sys.stdout.isatty()
                    and (time.monotonic() - shown >= PROGRESS_SECONDS or i + 1 == len(train))):
                shown = time.monotonic()
                print(f"\repoch {self.epoch + 1}/{cfg.epochs} step {i + 1}/{len(train)} "
                      f"loss {float(sums['loss']) / n:.3f} acc {float(sums['acc']) / n:.3f}", end="", flush=True)
        sums = {k: float(v) for k, v in sums.items()}  # the epoch's one read of the step metrics
        self.strategy.epoch_end()
        val_loss, val_acc = evaluate(self.model, self.val_data, cfg.batch_size, cfg.device)
        self.epoch += 1
        record = {"epoch": self.epoch, "train_loss": sums["loss"] / max(n, 1), "train_acc": sums["acc"] / max(n, 1),
                  "val_loss": val_loss, "val_acc": val_acc, "temperature": self.model.arch.temperature,
                  "cost": getattr(self.strategy, "last_cost", None),
                  "decisions": getattr(self.strategy, "last_decisions", None),
                  "grad_correlation": grad_correlation, "prob_grad": prob_grad, "batch_size": batch_size,
                  "genotype": genotype_of(self.model, method_rule(cfg.method)), "arch": _arch_summary(self.model)}
        if self.world > 1:
            record["ranks_agree"], record["rank_checksums"] = self._ranks_agree()
        if self.rank == 0:
            append_jsonl(os.path.join(self.out, "metrics.jsonl"), record)
            if self.tensorboard is not None:
                self.tensorboard.log(record)
        self.last_record = record
        self._save()
        for d in record["decisions"] or []:
            self._log(f"SGAS decision {d['cell_type']} edge {d['edge']} (score {d['score']:.3f}) -> {d['op']}"
                      + (f", pruned {d['pruned']}" if d["pruned"] else ""))
        self._log(f"\repoch {self.epoch}/{cfg.epochs} train loss {record['train_loss']:.3f} "
                  f"acc {record['train_acc']:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f}")


def _run_config(run_dir: str, option: str) -> RunConfig:
    """The validated configuration of the search run in ``run_dir``; ``option`` names where it came from."""
    if not os.path.exists(run_dir):
        raise InputError(f"{option} {run_dir}: no such directory")
    if not os.path.isdir(run_dir):
        raise InputError(f"{option} {run_dir} is a file; it must name a search run's directory")
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise InputError(f"{option} {run_dir}: no search run there (config.json missing)")
    cfg = read_config(path, RunConfig, option)
    try:
        cfg.validate()
    except (ValueError, TypeError) as e:
        raise InputError(f"{option}: {path}: {e}") from None
    return cfg


def _resumed_config(run_dir: str) -> RunConfig:
    cfg = _run_config(run_dir, "--resume")
    cfg.out = run_dir
    return cfg


def _check_new_out(out: Optional[str]) -> None:
    """A new run never writes over another: ``--out`` must be new, or an empty directory."""
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} is a file; it must name a directory for the run")
    if any(os.path.exists(os.path.join(out, name)) for name in ("config.json", "checkpoint.pt", "metrics.jsonl")):
        raise InputError(f"--out {out} already holds a run: continue it with --resume {out}, "
                         f"or choose a new --out directory")


def kept_checkpoint(run_dir: str, epoch: int) -> str:
    """The checkpoint ``--keep-every`` keeps after ``epoch``."""
    return os.path.join(run_dir, f"checkpoint-epoch{epoch:04d}.pt")


def kept_epochs(run_dir: str):
    """The epochs whose checkpoints a run kept (``--keep-every``), ascending."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    return sorted(int(n[len("checkpoint-epoch"):-3]) for n in names
                  if n.startswith("checkpoint-epoch") and n.endswith(".pt") and n[16:-3].isdigit())


def load_run(run_dir: str, epoch: Optional[int] = None):
    """(config, supernet with the checkpoint's weights and α, train data, validation data):
    the latest checkpoint, or the one kept after ``epoch`` (``--keep-every``)."""
    cfg = _run_config(run_dir, "--run").resolved()
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    if epoch is not None:
        checkpoint = kept_checkpoint(run_dir, epoch)
        if not os.path.exists(checkpoint):
            raise InputError(f"--epoch {epoch}: {run_dir} kept no checkpoint after it "
                             f"(kept: {kept_epochs(run_dir) or 'none; search with --keep-every N'})")
    if not os.path.exists(checkpoint):
        raise InputError(f"--run {run_dir}: no checkpoint.pt (the search never finished an epoch)")
    train_data, val_data, info = search_data(dataclasses.replace(cfg, cutout=0, download=False))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, info).to(cfg.device)
    state = load_checkpoint(checkpoint, "search", {"space": cfg.space, "method": cfg.method},
                            parameter_shapes(model), map_location=cfg.device)
    load_state(checkpoint, model, state.get("model"))
    return cfg, model, train_data, val_data
