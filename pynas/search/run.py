"""A search run: model, data, strategy, a run directory with the config, per-
epoch metrics (JSON lines), the genotype, and an atomic checkpoint each epoch
from which ``--resume`` continues exactly.

The run uses only the search layer. What other layers add is handed to it
(:class:`SearchRun`'s ``choose_batch``, ``choose_op`` and ``reporters``), so
that nothing here depends on selection, training, analysis or the benchmarks."""
import dataclasses
import functools
import math
import os
import random
import sys
import time
from typing import Callable, Optional, Sequence, Tuple

import torch

from ..data import loader
from ..errors import InputError, NonFiniteError
from ..io import (append_jsonl, check_parameter_shapes, checkpoint_header, load_checkpoint, load_state, parameter_shapes,
                  remove_stale_temporaries, save_checkpoint, truncate_jsonl, write_json, write_text)
from ..nb201_benchmark import canonical, numbers_line, open_benchmark
from ..nn import NB201Network
from ..nn.widen import partial_channels_of
from ..progress import Progress
from ..tensorboard import TensorBoardLogger
from .build import build_search, evaluate, genotype_of, kept_checkpoint, restore_structure, search_data
from .config import RunConfig, read_run_config
from .cuda_graphs import GraphedStep, check_cuda_graphs
from .grad_correlation import gradient_correlation, probability_gradients
from .strategies import Sgas

def _rng_state(model):
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "arch_generator": model.arch.generator.get_state() if model.arch.generator is not None else None}


def _set_rng_state(model, state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["arch_generator"] is not None:
        model.arch.generator.set_state(state["arch_generator"])


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


# What other layers hand a run (see SearchRun):
# choose_batch(cfg, info, train_size) -> (batch, message): --max-memory's batch;
# choose_op(model, cell_type, edge, batches, device) -> (op index, scores): SGAS+PT's choice of a decided edge's op;
# a reporter(run, genotype) -> a line for the summary, or None: e.g. drawings of the final cells.
BatchChooser = Callable[[RunConfig, object, int], Tuple[int, str]]
OpChooser = Callable[..., Tuple[int, list]]
Reporter = Callable[["SearchRun", str], Optional[str]]


class SearchRun:
    """A search from ``cfg`` (or continued from the run directory ``resume``).

    ``choose_batch`` is needed with ``--max-memory`` (``pynas.bench.memory.batch_within_budget``),
    ``choose_op`` with SGAS+PT (``pynas.select.pt.op_by_perturbation``); ``reporters`` add lines to
    :meth:`print_summary` (``pynas.analysis.draw.CellDrawings``)."""

    def __init__(self, cfg: RunConfig, resume: Optional[str] = None, quiet: bool = False, *,
                 log_every: Optional[int] = None, choose_batch: Optional[BatchChooser] = None, choose_op: Optional[OpChooser] = None,
                 reporters: Sequence[Reporter] = ()):
        if resume:
            cfg = _resumed_config(resume)
        else:
            _check_new_out(cfg.out)
        cfg.validate()
        if cfg.sgas_pt and choose_op is None:
            raise ValueError("--pt (SGAS+PT) needs an operation chooser: SearchRun(choose_op="
                             "pynas.select.pt.op_by_perturbation)")
        if cfg.max_memory is not None and not resume and choose_batch is None:
            raise ValueError("--max-memory needs a batch chooser: SearchRun(choose_batch="
                             "pynas.bench.memory.batch_within_budget)")
        cfg = cfg.resolved()
        self.cfg, self.quiet = cfg, quiet
        self.choose_op, self.reporters = choose_op, tuple(reporters)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.train_data, self.val_data, self.info = search_data(cfg)
        self.rank, self.world = _distributed()
        self.progress = Progress(quiet=quiet or self.rank != 0, log_every=log_every)  # a bar or a line per N steps
        if cfg.max_memory is not None and not resume:
            cfg = self.cfg = self._batch_within(cfg, choose_batch)
        # Steps per epoch on each rank (a DistributedSampler gives each rank 1/world of the data).
        steps = math.ceil(math.ceil(len(self.train_data) / self.world) / cfg.batch_size)
        self.model, self.strategy = build_search(cfg, self.info, steps,
                                                 choose_op=self._op_by_perturbation if cfg.sgas_pt else None)
        if cfg.cuda_graphs:
            check_cuda_graphs(cfg.method, cfg.device, relaxation=cfg.relaxation, world=self.world)
        self.step = GraphedStep(self.strategy) if cfg.cuda_graphs else self.strategy.step
        # NAS-Bench-201's recorded accuracies of each epoch's cell (rank 0 logs them).
        self.benchmark = open_benchmark(cfg.benchmark) if cfg.benchmark and self.rank == 0 else None
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

    def _batch_within(self, cfg: RunConfig, choose_batch: BatchChooser) -> RunConfig:
        """``cfg`` with the batch ``choose_batch`` finds within ``--max-memory`` (on rank 0, which all
        ranks follow), said in the log."""
        chosen = [None, None]  # (batch, error) from rank 0
        if self.rank == 0:
            try:
                chosen[0], message = choose_batch(cfg, self.info, len(self.train_data))
                print(message, flush=True)  # even with --quiet: it decides the run
            except ValueError as e:
                chosen[1] = str(e)
        if self.world > 1:
            torch.distributed.broadcast_object_list(chosen, src=0)
        if chosen[1] is not None:
            raise ValueError(chosen[1])
        return dataclasses.replace(cfg, batch_size=chosen[0])

    def _op_by_perturbation(self, cell_type, edge):
        """SGAS+PT: the operation of a decided edge by the chooser (DARTS-PT's rule) on the validation split."""
        batches = list(loader(self.val_data, self.cfg.batch_size, self.cfg.seed, 0, shuffle=False))
        if self.cfg.pt_val_batches is not None:
            batches = batches[: self.cfg.pt_val_batches]
        chosen, scores = self.choose_op(self.model, cell_type, edge, batches, device=self.cfg.device)
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
                                map_location=self.cfg.device)
        # A supernet whose shapes change during the search (DrNAS' stages) takes the checkpoint's first.
        restore_structure(self.model, self.cfg, self.info, state.get("epoch"), path, self.strategy)
        check_parameter_shapes(path, state, parameter_shapes(self.model))
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
        rule = cfg.derivation
        genotype = genotype_of(self.model, rule, cfg.threshold)
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
        rule = "argmax per edge" if isinstance(self.model, NB201Network) else f"{self.cfg.derivation} rule"
        print(f"genotype ({rule}): {genotype}")
        if self.benchmark is not None:
            print(f"NAS-Bench-201 ({self.benchmark.file}): {numbers_line(self._benchmark_numbers(genotype))}")
        for report in self.reporters:
            line = report(self, genotype)
            if line:
                print(line)
        print(f"run directory: {self.out}   (plots: pynas analyze evolution --run {self.out} --out DIR)")

    def _benchmark_numbers(self, genotype: str) -> dict:
        """The benchmark's numbers of ``genotype`` for metrics.jsonl; a cell the file lacks says so."""
        numbers = self.benchmark.lookup(genotype)
        if numbers is None:
            return {"file": self.benchmark.file, "cell": canonical(genotype), "missing": True}
        return {"file": numbers.pop("file"), "cell": canonical(genotype), **numbers}

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
        # This rank's share of the epoch (DistributedSampler's order); the same batches for any --workers.
        return loader(data, self.batch_size(), seed, self.epoch, workers=self.cfg.workers,
                      pin_memory=self.cfg.device == "cuda", world=self.world, rank=self.rank)

    def _epoch(self):
        cfg = self.cfg
        batch_size = self.batch_size()
        train = self._loader(self.train_data, cfg.seed)
        val = self._loader(self.val_data, cfg.seed + 1)
        val_iter = iter(val)
        # Sums stay on the device (the steps' metrics are device tensors): read once at the epoch's end;
        # the progress display reads its own at most once a second (a terminal) or every --log-every steps.
        sums, n = {"loss": 0.0, "acc": 0.0}, 0
        grad_correlation = prob_grad = None
        with self.progress.epoch(f"epoch {self.epoch + 1}/{cfg.epochs}", len(train)) as bar:
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
                bar.update(len(train_batch[1]) * self.world, loss=m["loss"], acc=m["acc"])  # the whole job's images
        epoch_seconds, images_per_second = bar.summary()
        sums = {k: float(v) for k, v in sums.items()}  # the epoch's one read of the step metrics
        partial_channels = partial_channels_of(self.model)  # this epoch's (DrNAS widens at its stages' ends)
        self.strategy.epoch_end()
        val_loss, val_acc = evaluate(self.model, self.val_data, cfg.batch_size, cfg.device)
        self.epoch += 1
        record = {"epoch": self.epoch, "train_loss": sums["loss"] / max(n, 1), "train_acc": sums["acc"] / max(n, 1),
                  "val_loss": val_loss, "val_acc": val_acc, "temperature": self.model.arch.temperature,
                  "cost": getattr(self.strategy, "last_cost", None),
                  "decisions": getattr(self.strategy, "last_decisions", None),
                  # OLES: the operations frozen in this epoch
                  "frozen_ops": ([d for d in self.strategy.frozen_ops if d["epoch"] == self.epoch - 1]
                                 if hasattr(self.strategy, "frozen_ops") else None),
                  "grad_correlation": grad_correlation, "prob_grad": prob_grad, "batch_size": batch_size,
                  "epoch_seconds": epoch_seconds, "images_per_second": images_per_second,
                  "partial_channels": partial_channels,
                  # The composition's terms in their last loss, DARTS-' β of the epoch (None where absent).
                  "terms": {k: float(v) for k, v in self.strategy.last_terms.items()} or None,
                  "aux_weight": float(self.model.aux_weight) if self.strategy.aux_skip is not None else None,
                  "genotype": genotype_of(self.model, cfg.derivation, cfg.threshold), "arch": _arch_summary(self.model)}
        if self.benchmark is not None:
            record["benchmark"] = self._benchmark_numbers(record["genotype"])
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
        self._log(f"epoch {self.epoch}/{cfg.epochs} train loss {record['train_loss']:.3f} "
                  f"acc {record['train_acc']:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f}")
        if "benchmark" in record:
            self._log(f"  NAS-Bench-201: {numbers_line(record['benchmark'])}")


def _resumed_config(run_dir: str) -> RunConfig:
    cfg = read_run_config(run_dir, "--resume")
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
