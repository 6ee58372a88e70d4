"""A search run: model, data, strategy, a run directory with the config, per-
epoch metrics (JSON lines), the genotype, and an atomic checkpoint each epoch
from which ``--resume`` continues exactly."""
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..analysis.grad_correlation import gradient_correlation
from ..data import load_dataset, loader, split
from ..genotype import derive_genotype, derive_nb201
from ..io import append_jsonl, save, truncate_jsonl, write_json, write_text
from ..nn import DARTS, NB201Network, SearchNetwork, minimal_cell_network, s1_from_alphas
from .cost import ESTIMATORS, PRESETS, ResourceConstraint
from .strategies import METHODS, SearchConfig, Sgas

SPACES = ("darts", "nb201", "s1", "s2", "s3", "s4", "minimal")


@dataclass
class RunConfig:
    space: str = "darts"
    method: str = "darts"
    dataset: str = "digits"
    epochs: int = 6
    batch_size: int = 64
    C: int = 8
    layers: int = 5
    steps: int = 4
    seed: int = 0
    train_fraction: float = 0.5
    out: Optional[str] = None
    w_lr: float = 0.025
    a_lr: float = 3e-4
    data: Optional[str] = None
    download: bool = False
    cutout: int = 0
    device: str = "cpu"
    s1_from: Optional[str] = None  # S1: the run directory of a DARTS search whose top-2 ops per edge form it
    relaxation: Optional[str] = None  # overrides the method's relaxation (e.g. sigmoid for single-level)
    amp: str = "none"  # "bf16": autocast
    channels_last: bool = False
    compile: bool = False
    constraint: str = "none"  # SNAS resource constraint: none, mild, moderate, aggressive
    cost_estimator: str = "reparameterised"
    epsilon_alpha: float = 0.3  # SDARTS-RS: the final noise range (ramped from 0.03)
    warmup_epochs: int = 10  # SGAS: weights-only epochs before the first decision
    decision_freq: int = 5  # SGAS: epochs between decisions
    sgas_pt: bool = False  # SGAS+PT: perturbation-based operation choice on each decided edge
    pt_val_batches: Optional[int] = None  # SGAS+PT: validation batches per measurement (all)
    log_grad_correlation: bool = False  # Single-DARTS Eq. 8 on each epoch's first batches

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
        from ..arch import RELAXATIONS

        if self.relaxation is not None and self.relaxation not in RELAXATIONS:
            raise ValueError(f"--relaxation must be one of {RELAXATIONS}, got {self.relaxation!r}")
        if self.space == "s1" and not self.s1_from:
            raise ValueError("--space s1 needs --s1-from RUN_DIR: a finished DARTS search whose top-2 "
                             "operations per edge define the space")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"--amp must be none or bf16, got {self.amp!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
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
        if self.pt_val_batches is not None and self.pt_val_batches < 1:
            raise ValueError(f"--pt-val-batches must be at least 1, got {self.pt_val_batches}")
        for name in ("epochs", "batch_size", "C", "layers", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


def build_model(cfg: RunConfig, info):
    _, relaxation, arch_kwargs = METHODS[cfg.method]
    relaxation = cfg.relaxation or relaxation
    if relaxation == "sigmoid" and "init" not in arch_kwargs:
        arch_kwargs = dict(arch_kwargs, init=-math.log(7))  # Single-DARTS: sigmoid(α) = 1/8 at the start
    # Seeded alike on every rank: data-parallel ranks draw the same samples.
    arch_kwargs = dict(arch_kwargs, generator=torch.Generator(cfg.device).manual_seed(cfg.seed + 1))
    if cfg.space == "nb201":
        return NB201Network(cfg.C, N=max(1, cfg.layers // 3), num_classes=info.num_classes,
                            in_channels=info.in_channels, relaxation=relaxation, **arch_kwargs)
    if cfg.space == "minimal":
        return minimal_cell_network(cfg.C, info.num_classes, cfg.layers, in_channels=info.in_channels,
                                    relaxation=relaxation, **arch_kwargs)
    space = s1_space(cfg.s1_from) if cfg.space == "s1" else cfg.space
    return SearchNetwork(cfg.C, info.num_classes, cfg.layers, steps=cfg.steps, multiplier=cfg.steps,
                         space=space, in_channels=info.in_channels, relaxation=relaxation, **arch_kwargs)


def s1_space(run_dir: str):
    """S1 (DARTS-PT App. A.2): the top-2 operations per edge of a DARTS search's α."""
    path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--s1-from: no checkpoint at {path}")
    state = torch.load(path, weights_only=True, map_location="cpu")["model"]
    alphas = {t: state[f"arch.alphas.{t}"] for t in ("normal", "reduce") if f"arch.alphas.{t}" in state}
    if set(alphas) != {"normal", "reduce"} or alphas["normal"].size(-1) != len(DARTS.ops):
        raise ValueError(f"--s1-from: {run_dir} is not a search over the DARTS space")
    return s1_from_alphas(alphas)


def genotype_of(model):
    if isinstance(model, NB201Network):
        return str(derive_nb201(model.arch.probabilities("cell"), model.arch.ops))
    return str(derive_genotype(model.arch))


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
    return out


def _distributed():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SearchRun:
    def __init__(self, cfg: RunConfig, resume: Optional[str] = None, quiet: bool = False):
        if resume:
            with open(os.path.join(resume, "config.json")) as f:
                cfg = RunConfig(**json.load(f))
            cfg.out = resume
        cfg.validate()
        self.cfg, self.quiet = cfg, quiet
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        dataset, self.info = load_dataset(cfg.dataset, cfg.data, cfg.cutout, cfg.download)
        self.train_data, self.val_data = split(dataset, cfg.train_fraction, cfg.seed)
        self.rank, self.world = _distributed()
        self.model = build_model(cfg, self.info).to(cfg.device)
        strategy_cls = METHODS[cfg.method][0]
        config = SearchConfig(epochs=cfg.epochs, w_lr=cfg.w_lr, a_lr=cfg.a_lr)
        # Steps per epoch on each rank (a DistributedSampler gives each rank 1/world of the data).
        steps = math.ceil(math.ceil(len(self.train_data) / self.world) / cfg.batch_size)
        extra = {}
        if cfg.constraint != "none":
            extra = dict(constraint=ResourceConstraint(PRESETS[cfg.constraint], cfg.cost_estimator),
                         image_size=self.info.image_size)
        if cfg.method == "sdarts-rs":
            extra = dict(epsilon=cfg.epsilon_alpha, seed=cfg.seed + 2)
        if cfg.method == "sgas":
            extra = dict(warmup_epochs=cfg.warmup_epochs, decision_freq=cfg.decision_freq,
                         choose_op=self._op_by_perturbation if cfg.sgas_pt else None)
        self.strategy = strategy_cls(self.model, config, steps, **extra)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.strategy.channels_last = True
        if cfg.amp == "bf16":
            self.strategy.autocast_dtype = torch.bfloat16
        if cfg.compile:
            self.strategy.forward = torch.compile(self.model)
        self.epoch = 0
        self.out = cfg.out or os.path.join("runs", f"{cfg.space}-{cfg.method}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        if self.world > 1:  # one run directory: rank 0's name
            names = [self.out]
            torch.distributed.broadcast_object_list(names, src=0)
            self.out = names[0]
        self.checkpoint_path = os.path.join(self.out, "checkpoint.pt")
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
        if resume:
            self._load()
        elif self.rank == 0:
            write_json(os.path.join(self.out, "config.json"), dataclasses.asdict(cfg))

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
    def _save(self):
        if self.rank != 0:  # every rank holds the same weights' gradients and α; rank 0 writes
            return
        state = {"epoch": self.epoch, "model": self.model.state_dict(), "strategy": self.strategy.state_dict(),
                 "rng": _rng_state(self.model)}
        save(state, self.checkpoint_path)

    def _load(self):
        # Checkpoints hold tensors, numbers and containers only: no pickled code.
        state = torch.load(self.checkpoint_path, weights_only=True, map_location=self.cfg.device)
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        _set_rng_state(self.model, state["rng"])
        self.epoch = state["epoch"]
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
        genotype = genotype_of(self.model)
        if self.rank == 0:
            write_text(os.path.join(self.out, "genotype.txt"), genotype + "\n")
            write_json(os.path.join(self.out, "genotype.json"), {"genotype": genotype})
        return genotype

    def _ranks_agree(self) -> bool:
        """Whether every rank holds bit-identical α (checked, not assumed)."""
        alpha = torch.cat([a.detach().flatten() for a in self.model.arch_parameters()]).cpu()
        gathered = [torch.empty_like(alpha) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, alpha)
        return all(torch.equal(alpha, other) for other in gathered)

    def _loader(self, data, seed):
        if self.world == 1:
            return loader(data, self.cfg.batch_size, seed, self.epoch)
        sampler = torch.utils.data.DistributedSampler(data, self.world, self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(self.epoch)
        return torch.utils.data.DataLoader(data, batch_size=self.cfg.batch_size, sampler=sampler)

    def _epoch(self):
        cfg = self.cfg
        train = self._loader(self.train_data, cfg.seed)
        val = self._loader(self.val_data, cfg.seed + 1)
        val_iter = iter(val)
        sums, n = {"loss": 0.0, "acc": 0.0}, 0
        grad_correlation = None
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
            m = self.strategy.step(train_batch, val_batch)
            for k in sums:
                sums[k] += m[k]
            n += 1
            if not self.quiet and self.rank == 0 and sys.stdout.isatty():
                print(f"\repoch {self.epoch + 1}/{cfg.epochs} step {i + 1}/{len(train)} "
                      f"loss {sums['loss'] / n:.3f} acc {sums['acc'] / n:.3f}", end="", flush=True)
        self.strategy.epoch_end()
        val_loss, val_acc = evaluate(self.model, self.val_data, cfg.batch_size, cfg.device)
        self.epoch += 1
        record = {"epoch": self.epoch, "train_loss": sums["loss"] / max(n, 1), "train_acc": sums["acc"] / max(n, 1),
                  "val_loss": val_loss, "val_acc": val_acc, "temperature": self.model.arch.temperature,
                  "cost": getattr(self.strategy, "last_cost", None),
                  "decisions": getattr(self.strategy, "last_decisions", None),
                  "grad_correlation": grad_correlation,
                  "genotype": genotype_of(self.model), "arch": _arch_summary(self.model)}
        if self.world > 1:
            record["ranks_agree"] = self._ranks_agree()
        if self.rank == 0:
            append_jsonl(os.path.join(self.out, "metrics.jsonl"), record)
        self._save()
        for d in record["decisions"] or []:
            self._log(f"SGAS decision {d['cell_type']} edge {d['edge']} (score {d['score']:.3f}) -> {d['op']}"
                      + (f", pruned {d['pruned']}" if d["pruned"] else ""))
        self._log(f"\repoch {self.epoch}/{cfg.epochs} train loss {record['train_loss']:.3f} "
                  f"acc {record['train_acc']:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f}")


def load_run(run_dir: str):
    """(config, supernet with the checkpoint's weights and α, train split, val split)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no search run at {run_dir} (config.json missing)")
    with open(path) as f:
        cfg = RunConfig(**json.load(f))
    dataset, info = load_dataset(cfg.dataset, cfg.data, 0, False)
    train_data, val_data = split(dataset, cfg.train_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, info).to(cfg.device)
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    model.load_state_dict(torch.load(checkpoint, weights_only=True, map_location=cfg.device)["model"])
    return cfg, model, train_data, val_data
