"""Perturbation-based architecture selection (DARTS-PT, Algorithm 2, App. A.3,
A.7), as DARTS-PT's public code runs it.

Operation phase, in rounds: each round decides one random undecided edge of each
cell type in turn (normal, then reduce); on an edge, every candidate operation is
masked in turn (weight 0, the others *not* renormalised) and the supernet's score
measured on the whole validation set with BatchNorm on batch statistics; the edge
keeps the operation whose removal hurts most. Topology phase, in rounds: one
random node with more than two inputs per cell type; each input edge is masked in
turn and the two whose removal hurts most are kept. Between rounds the supernet is
fine-tuned for ``tune_epochs`` (5), after the last round for ``last_tune_epochs``
(1), the way it was searched (its strategy: SDARTS-RS' noise, second order, α fixed
or trained with the search's Adam state), the weight optimiser reset once to a
constant lr (0.0025).

Candidates of one decision are measured under the same random draws (the `noise`
operation's samples, Gumbel samples), so no decision is made by fresh noise; a tie
goes to the candidate α prefers (then to the lower column). `none` is a candidate
wherever the space has it except the DARTS space (whose supernet in DARTS-PT's code
has no `none`). ``pt-mag`` (Sec. 6.2) chooses by α instead, with the same rounds.
Every round is checkpointed atomically with the decision trail and the supernet's
validation accuracy after its fine-tuning; a killed selection resumes at the next
round. Differences from the code: docs/fidelity.md.
"""
import contextlib
import dataclasses
import json
import os
import random
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data import loader
from ..genotype import Genotype, derive_cell, derive_nb201
from ..errors import InputError
from ..io import (checkpoint_header, load_checkpoint, load_state, parameter_shapes, remove_stale_temporaries,
                  save_checkpoint, write_json)
from ..nb201_benchmark import canonical, numbers_line
from ..progress import Progress
from ..search.strategies import DartsFirstOrder, FixedAlpha, SearchConfig, Sgas, Strategy

PHASES = ("operation", "topology")
TUNE_LR = 0.025 / 10  # DARTS-PT's code: the search's lr / 10, held constant while tuning


def measure(model, batches: Sequence, crit: str = "acc", device="cpu") -> float:
    """Accuracy (``acc``) or minus the loss (``loss``) of ``model`` over
    ``batches`` with BatchNorm on batch statistics: higher is better. Buffers
    (BatchNorm statistics) are restored, so a measurement leaves no trace."""
    saved = [b.detach().clone() for b in model.buffers()]
    training = model.training
    model.train()
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
    for b, s in zip(model.buffers(), saved):
        b.copy_(s)
    model.train(training)
    return correct / max(total, 1) if crit == "acc" else -loss / max(total, 1)


@contextlib.contextmanager
def same_draws(model, seed: int, device="cpu"):
    """Within the block, torch's generators and the architecture's sampler start
    from ``seed``; afterwards all are as before. Measurements compared with each
    other run under the same draws."""
    arch_generator = model.arch.generator
    saved = arch_generator.get_state() if arch_generator is not None else None
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if arch_generator is not None:
            arch_generator.manual_seed(seed)
        try:
            yield
        finally:
            if arch_generator is not None:
                arch_generator.set_state(saved)


def candidate_ops(arch, cell_type: str, edge: int) -> List[int]:
    """The columns PT may choose on ``edge``: its available operations, ``none``
    among them except in the DARTS space (DARTS-PT's code drops `none` there)."""
    mask = arch.mask(cell_type)[edge]
    with_none = arch.space.name != "darts"
    return [k for k, name in enumerate(arch.ops) if mask[k] and (name != "none" or with_none)]


def op_by_perturbation(model, cell_type: str, edge: int, batches: Sequence, crit: str = "acc", device="cpu",
                       seed: int = 0):
    """(column, scores): the candidate operation of ``edge`` whose masking lowers
    the score most, and the score without each (DARTS-PT Algorithm 2, op choice),
    every candidate measured under the same draws; ties to the larger α."""
    arch = model.arch
    candidates = candidate_ops(arch, cell_type, edge)
    if not candidates:
        raise ValueError(f"{cell_type} edge {edge} has no operation left to choose")
    scores = {}
    for k in candidates:
        with arch.perturbed(cell_type, edge, k), same_draws(model, seed, device):
            scores[arch.ops[k]] = measure(model, batches, crit, device)
    alpha = arch.alphas[cell_type][edge].detach()
    return min(candidates, key=lambda k: (scores[arch.ops[k]], -float(alpha[k]), k)), scores


def tuning_strategy(cfg, image_size: Optional[int] = None) -> Callable[..., Strategy]:
    """How a supernet searched with the run configuration ``cfg`` is fine-tuned
    between decisions: by its own composition (order, terms, perturbation,
    auxiliary skip), with its schedules held where the search ended: SDARTS'
    perturbations at their full ε (as DARTS-PT's code tunes SDARTS-RS), β-DARTS'
    λ and DARTS-' β at their last epoch's values. SGAS' and DrNAS' supernets are
    tuned by DARTS first order under their relaxation (their shrinking and widening
    are done); SNAS' constraint needs ``image_size``."""
    from ..search.build import strategy_options
    from ..search.drnas import ProgressiveDrnas
    from ..search.methods import METHODS

    cfg = cfg.resolved()
    order = METHODS[cfg.method].order
    if order in (Sgas, ProgressiveDrnas):
        order, cfg = DartsFirstOrder, dataclasses.replace(cfg, method="darts")  # the relaxation stays resolved
    options = strategy_options(cfg, SimpleNamespace(image_size=image_size), epsilon_start=cfg.epsilon_alpha)
    if cfg.constraint != "none" and image_size is None:
        raise ValueError("tuning_strategy: SNAS' resource constraint needs `image_size`")

    if cfg.method == "lambda-darts":  # λ·e/(E − 1) over the search's epochs
        options["schedule_epochs"] = cfg.epochs

    def build(model, config, steps):
        strategy = order(model, config, steps, **options)
        strategy.epochs_done = cfg.epochs - 1  # the schedules' last epoch (tuning never ends an epoch)
        return strategy

    return build


class PTSelection:
    """DARTS-PT's selection on ``model`` (a supernet after its search).

    ``strategy``: ``strategy(model, config, steps_per_epoch) -> Strategy``, how the
    supernet is fine-tuned (default: DARTS first order, or α fixed); it is built
    once, with ``config`` holding the constant tuning lr, and ``arch_state`` (the
    search's α optimiser state) loaded into it."""

    def __init__(self, model, train_data, val_data, out: str, seed: int = 0, crit: str = "acc",
                 tune_epochs: int = 5, val_batches: Optional[int] = None, batch_size: int = 64,
                 phases: Sequence[str] = PHASES, magnitude: bool = False, fixed_alpha: bool = False,
                 device: str = "cpu", log=print, last_tune_epochs: int = 1, tune_lr: float = TUNE_LR,
                 strategy: Optional[Callable[..., Strategy]] = None, arch_state: Optional[dict] = None,
                 progress: Optional[Progress] = None, benchmark=None):
        if crit not in ("acc", "loss"):
            raise ValueError(f"--crit must be acc or loss, got {crit!r}")
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            raise ValueError(f"unknown PT phases {unknown}; choose from {PHASES}")
        if tune_epochs < 0 or last_tune_epochs < 0:
            raise ValueError(f"--tune-epochs must be >= 0, got {tune_epochs}")
        if val_batches is not None and val_batches < 1:
            raise ValueError(f"--val-batches must be at least 1, got {val_batches}")
        self.model, self.train_data, self.val_data, self.out = model, train_data, val_data, out
        self.seed, self.crit, self.tune_epochs, self.val_batches = seed, crit, tune_epochs, val_batches
        self.last_tune_epochs = last_tune_epochs
        self.batch_size, self.phases, self.magnitude, self.fixed_alpha = batch_size, tuple(phases), magnitude, fixed_alpha
        self.device, self.log = device, log
        self.progress = progress or Progress(quiet=True)  # a bar per round's fine-tuning
        # NAS-Bench-201 runs: the benchmark's numbers of the cell after each round (pynas.nb201_benchmark)
        self.benchmark = benchmark
        self.arch = model.arch
        # NAS-Bench-201 cells keep every edge: only the operation phase applies.
        self.nb201 = self.arch.cell_types == ("cell",)
        if self.nb201 and "topology" in self.phases:
            if "operation" not in self.phases:
                raise ValueError("--phases topology: NAS-Bench-201 cells keep all their edges; use --phases operation")
            self.phases = ("operation",)
        self.trail: List[Dict] = []
        self.rounds = 0
        steps = -(-len(train_data) // batch_size)
        config = SearchConfig(epochs=max(tune_epochs, 1), w_lr=tune_lr, w_lr_min=tune_lr)  # constant lr
        build = strategy or (FixedAlpha if fixed_alpha else DartsFirstOrder)
        self.strategy = build(model, config, steps)
        if arch_state is not None and self.strategy.a_opt is not None:
            self.strategy.a_opt.load_state_dict(arch_state)
        if os.path.exists(out) and not os.path.isdir(out):
            raise InputError(f"--out {out} is a file; it must name a directory")
        os.makedirs(out, exist_ok=True)
        remove_stale_temporaries(out)  # of atomic writes a kill interrupted
        self.checkpoint_path = os.path.join(out, "select_checkpoint.pt")

    # -- measurement ----------------------------------------------------------
    def _val_batches(self):
        batches = list(loader(self.val_data, self.batch_size, self.seed, 0, shuffle=False))
        return batches if self.val_batches is None else batches[: self.val_batches]

    def _draws(self) -> int:
        """The seed of the current decision's draws (the same for all its candidates)."""
        return self.seed * 1_000_003 + len(self.trail)

    def score_without(self, cell_type: str, edge: int, op=None) -> float:
        with self.arch.perturbed(cell_type, edge, op), same_draws(self.model, self._draws(), self.device):
            return measure(self.model, self._val_batches(), self.crit, self.device)

    def val_accuracy(self) -> float:
        """The supernet's accuracy on the whole validation set (BatchNorm in eval mode)."""
        from ..search.build import evaluate

        return evaluate(self.model, self.val_data, self.batch_size, self.device)[1]

    # -- fine-tuning ----------------------------------------------------------
    def fine_tune(self, epochs: int):
        strategy = self.strategy
        steps = len(loader(self.train_data, self.batch_size, 0, 0))
        with self.progress.epoch(f"round {self.rounds}: tuning", epochs * steps) as bar:
            for epoch in range(epochs):
                seed = self.seed + 7919 * (self.rounds + 1) + 104_729 * epoch
                val_iter = iter(loader(self.val_data, self.batch_size, seed + 1, 0))
                for train_batch in loader(self.train_data, self.batch_size, seed, 0):
                    val_batch = None
                    if strategy.bilevel:
                        try:
                            val_batch = next(val_iter)
                        except StopIteration:
                            val_iter = iter(loader(self.val_data, self.batch_size, seed + 1, 1))
                            val_batch = next(val_iter)
                    m = strategy.step(train_batch, val_batch)
                    bar.update(len(train_batch[1]), loss=m["loss"], acc=m["acc"])

    # -- decisions ------------------------------------------------------------
    def _order(self, cell_type: str, items: List) -> List:
        """A seeded random order per cell type, drawn over all items and then
        filtered, so a resumed selection continues as an uninterrupted one."""
        items = list(items)
        random.Random(self.seed * 31 + self.arch.cell_types.index(cell_type)).shuffle(items)
        return items

    def _next_edge(self, cell_type: str) -> Optional[int]:
        for e in self._order(cell_type, range(self.arch.num_edges)):
            if int(self.arch.mask(cell_type)[e].sum()) > 1:
                return e
        return None

    def _next_node(self, cell_type: str) -> Optional[List[int]]:
        for rows in self._order(cell_type, self._node_rows()):
            if sum(bool(self.arch.mask(cell_type)[e].any()) for e in rows) > 2:
                return rows
        return None

    def _round(self) -> List[Dict]:
        """The decisions of the next round: an edge per cell type, or (operations done) a node per cell type."""
        made = []
        if "operation" in self.phases:
            for t in self.arch.cell_types:
                e = self._next_edge(t)
                if e is not None:
                    made.append(self.decide_operation(t, e))
        if not made and "topology" in self.phases:
            for t in self.arch.cell_types:
                rows = self._next_node(t)
                if rows is not None:
                    made.append(self.decide_topology(t, rows))
        return made

    def decide_operation(self, cell_type: str, edge: int) -> Dict:
        scores = {}
        if self.magnitude:
            alpha = self.arch.alphas[cell_type][edge].detach()
            chosen = max(candidate_ops(self.arch, cell_type, edge), key=lambda k: (float(alpha[k]), -k))
        else:
            chosen, scores = op_by_perturbation(self.model, cell_type, edge, self._val_batches(), self.crit,
                                                self.device, seed=self._draws())
        self.arch.fix_op(cell_type, edge, chosen)
        record = {"phase": "operation", "cell_type": cell_type, "edge": edge, "scores_without": scores,
                  "chosen": self.arch.ops[chosen]}
        self.trail.append(record)
        return record

    def _node_rows(self):
        rows, start = [], 0
        for i in range(self.model.cells[0].steps):
            n = self.model.cells[0].inputs + i
            rows.append(list(range(start, start + n)))
            start += n
        return rows

    def decide_topology(self, cell_type: str, rows: List[int]) -> Dict:
        """Keeps the two input edges whose removal hurts most. (DARTS-PT's code
        removes the least harmful edge, re-measures, and repeats down to two; its
        measurements of one node repeat the same configurations, so under the same
        draws the outcome is this ranking.) Ties keep the edge α prefers."""
        live = [e for e in rows if bool(self.arch.mask(cell_type)[e].any())]
        scores = {e: self.score_without(cell_type, e) for e in live}
        strength = self.arch.probabilities(cell_type).detach()
        keep = sorted(live, key=lambda e: (scores[e], -float(strength[e].max()), e))[:2]
        for e in live:
            if e not in keep:
                self.arch.remove_edge(cell_type, e)
        record = {"phase": "topology", "cell_type": cell_type, "edges": live,
                  "scores_without": {str(e): s for e, s in scores.items()}, "kept": sorted(keep)}
        self.trail.append(record)
        return record

    # -- state ----------------------------------------------------------------
    def _save(self):
        state = {"model": self.model.state_dict(), "trail": json.dumps(self.trail), "rounds": self.rounds,
                 "strategy": self.strategy.state_dict(), "torch_rng": torch.get_rng_state(),
                 "arch_generator": self.arch.generator.get_state() if self.arch.generator is not None else None}
        save_checkpoint(self.checkpoint_path, self._header(), state)
        write_json(os.path.join(self.out, "pt_trail.json"), self.trail)

    def _header(self):
        """What the checkpoint is for: PT (or pt-mag) on this supernet, by this criterion and phases."""
        return checkpoint_header("pt", type(self.model).__name__, "pt-mag" if self.magnitude else "pt",
                                 parameter_shapes(self.model), crit=self.crit, phases=list(self.phases))

    def resume(self) -> bool:
        if not os.path.exists(self.checkpoint_path):
            return False
        path, header = self.checkpoint_path, self._header()
        state = load_checkpoint(path, "pt", {k: header[k] for k in ("space", "method", "crit", "phases")},
                                header["shapes"])
        load_state(path, self.model, state.get("model"))
        try:
            trail = json.loads(state["trail"])
            if not isinstance(trail, list):
                raise TypeError("the decision trail is not a list")
            rounds = int(state["rounds"])
            self.strategy.load_state_dict(state["strategy"])
            torch.set_rng_state(state["torch_rng"])
            if state["arch_generator"] is not None:
                self.arch.generator.set_state(state["arch_generator"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise InputError(f"{path}: its decision trail, optimiser or random state is damaged "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        self.trail, self.rounds = trail, rounds
        return True

    def run(self) -> Genotype:
        while True:
            made = self._round()
            if not made:
                break
            self.rounds += 1
            last = not self._work_left()
            self.fine_tune(self.last_tune_epochs if last else self.tune_epochs)
            accuracy = self.val_accuracy()
            looked_up = self._benchmark_numbers()
            for record in made:
                record.update(round=self.rounds, val_acc_after_tuning=accuracy)
                if looked_up is not None:
                    record["benchmark"] = looked_up
                if record["phase"] == "operation":
                    self.log(f"round {self.rounds} ({record['cell_type']} edge {record['edge']}): "
                             f"{record['scores_without']} -> {record['chosen']}")
                else:
                    self.log(f"round {self.rounds} ({record['cell_type']}): keep edges {record['kept']}")
            self.log(f"  supernet validation accuracy after tuning: {accuracy:.4f}")
            if looked_up is not None:
                self.log(f"  NAS-Bench-201 of {looked_up['cell']}: {numbers_line(looked_up)}")
            self._save()
        return self.genotype()

    def _benchmark_numbers(self) -> Optional[Dict]:
        """The benchmark's numbers of the cell as it stands (None without a benchmark or off NAS-Bench-201)."""
        if self.benchmark is None or not self.nb201:
            return None
        cell = canonical(self.genotype())
        numbers = self.benchmark.lookup(cell)
        return dict(numbers or {"missing": True, "file": self.benchmark.file}, cell=cell)

    def _work_left(self) -> bool:
        ops = "operation" in self.phases and any(self._next_edge(t) is not None for t in self.arch.cell_types)
        nodes = "topology" in self.phases and any(self._next_node(t) is not None for t in self.arch.cell_types)
        return ops or nodes

    def genotype(self):
        if self.nb201:  # each edge's remaining operation (`none` if PT kept it)
            alpha = self.arch.alphas["cell"].detach().masked_fill(~self.arch.mask("cell"), float("-inf"))
            return derive_nb201(alpha, self.arch.ops)
        cells = {}
        for t in ("normal", "reduce"):
            # Per edge the α of its remaining operation; removed edges at -inf.
            alpha = self.arch.alphas[t].detach().masked_fill(~self.arch.mask(t), float("-inf"))
            cells[t] = derive_cell(alpha, self.arch.ops, "darts", mask=self.arch.mask(t))
        return Genotype(cells["normal"][0], cells["normal"][1], cells["reduce"][0], cells["reduce"][1])
