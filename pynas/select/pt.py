"""Perturbation-based architecture selection (DARTS-PT, Algorithm 2, App. A.3).

Operation phase: the undecided edges of both cell types in a seeded random
order; on each, every operation is masked in turn (weight 0, the others *not*
renormalised) and the supernet's validation accuracy measured with BatchNorm
on batch statistics; the edge is fixed to the operation whose removal hurts
most, then the supernet is fine-tuned (weights lr restarted at 0.025/10 and
annealed to 0.001; α still trained on undecided edges unless α is fixed).
Topology phase: for each node with more than two inputs, in random order, each
input edge is masked in turn and the two whose removal hurts most are kept.

``pt-mag`` (Sec. 6.2) chooses each edge's operation by α instead, with the
same progressive fine-tuning. Every decision is checkpointed atomically with
the decision trail, and a killed selection resumes at the next undecided edge.
"""
import json
import os
import random
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data import loader
from ..genotype import Genotype, derive_cell, derive_nb201
from ..io import save, write_json
from ..search.strategies import DartsFirstOrder, FixedAlpha, SearchConfig

PHASES = ("operation", "topology")


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


def op_by_perturbation(model, cell_type: str, edge: int, batches: Sequence, crit: str = "acc", device="cpu"):
    """(column, scores): the non-``none`` operation of ``edge`` whose masking lowers
    the score most, and the score without each (DARTS-PT Algorithm 2, op choice)."""
    arch = model.arch
    mask = arch.mask(cell_type)[edge]
    candidates = [k for k, name in enumerate(arch.ops) if mask[k] and name != "none"]
    if not candidates:
        raise ValueError(f"{cell_type} edge {edge} has no operation left to choose")
    scores = {}
    for k in candidates:
        with arch.perturbed(cell_type, edge, k):
            scores[arch.ops[k]] = measure(model, batches, crit, device)
    return min(candidates, key=lambda k: scores[arch.ops[k]]), scores


class PTSelection:
    def __init__(self, model, train_data, val_data, out: str, seed: int = 0, crit: str = "acc",
                 tune_epochs: int = 5, val_batches: Optional[int] = None, batch_size: int = 64,
                 phases: Sequence[str] = PHASES, magnitude: bool = False, fixed_alpha: bool = False,
                 device: str = "cpu", log=print):
        if crit not in ("acc", "loss"):
            raise ValueError(f"--crit must be acc or loss, got {crit!r}")
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            raise ValueError(f"unknown PT phases {unknown}; choose from {PHASES}")
        self.model, self.train_data, self.val_data, self.out = model, train_data, val_data, out
        self.seed, self.crit, self.tune_epochs, self.val_batches = seed, crit, tune_epochs, val_batches
        self.batch_size, self.phases, self.magnitude, self.fixed_alpha = batch_size, tuple(phases), magnitude, fixed_alpha
        self.device, self.log = device, log
        self.arch = model.arch
        # NAS-Bench-201 cells keep every edge: only the operation phase applies.
        self.nb201 = self.arch.cell_types == ("cell",)
        if self.nb201 and "topology" in self.phases:
            if "operation" not in self.phases:
                raise ValueError("--phases topology: NAS-Bench-201 cells keep all their edges; use --phases operation")
            self.phases = ("operation",)
        self.trail: List[Dict] = []
        self.tune_round = 0
        os.makedirs(out, exist_ok=True)
        self.checkpoint_path = os.path.join(out, "select_checkpoint.pt")

    # -- measurement ----------------------------------------------------------
    def _val_batches(self):
        batches = list(loader(self.val_data, self.batch_size, self.seed, 0, shuffle=False))
        return batches if self.val_batches is None else batches[: self.val_batches]

    def score_without(self, cell_type: str, edge: int, op=None) -> float:
        with self.arch.perturbed(cell_type, edge, op):
            return measure(self.model, self._val_batches(), self.crit, self.device)

    # -- fine-tuning ----------------------------------------------------------
    def fine_tune(self):
        if self.tune_epochs <= 0:
            return
        config = SearchConfig(epochs=self.tune_epochs, w_lr=0.025 / 10, w_lr_min=0.001)
        steps = -(-len(self.train_data) // self.batch_size)
        cls = FixedAlpha if self.fixed_alpha else DartsFirstOrder
        strategy = cls(self.model, config, steps)
        for epoch in range(self.tune_epochs):
            seed = self.seed + 7919 * (self.tune_round + 1)
            val_iter = iter(loader(self.val_data, self.batch_size, seed + 1, epoch))
            for train_batch in loader(self.train_data, self.batch_size, seed, epoch):
                try:
                    val_batch = next(val_iter)
                except StopIteration:
                    val_iter = iter(loader(self.val_data, self.batch_size, seed + 1, epoch))
                    val_batch = next(val_iter)
                strategy.step(train_batch, val_batch)
            strategy.epoch_end()
        self.tune_round += 1

    # -- decisions ------------------------------------------------------------
    def _undecided_edges(self):
        # The order is drawn over all edges, then filtered: a resumed selection
        # continues in the same order as an uninterrupted one.
        edges = [(t, e) for t in self.arch.cell_types for e in range(self.arch.num_edges)]
        random.Random(self.seed).shuffle(edges)
        return [(t, e) for t, e in edges if int(self.arch.mask(t)[e].sum()) > 1]

    def decide_operation(self, cell_type: str, edge: int) -> Dict:
        scores = {}
        if self.magnitude:
            mask = self.arch.mask(cell_type)[edge]
            candidates = [k for k, name in enumerate(self.arch.ops) if mask[k] and name != "none"]
            alpha = self.arch.alphas[cell_type][edge].detach()
            chosen = max(candidates, key=lambda k: float(alpha[k]))
        else:
            chosen, scores = op_by_perturbation(self.model, cell_type, edge, self._val_batches(), self.crit,
                                                self.device)
        self.arch.fix_op(cell_type, edge, chosen)
        return {"phase": "operation", "cell_type": cell_type, "edge": edge, "scores_without": scores,
                "chosen": self.arch.ops[chosen]}

    def _nodes_to_prune(self):
        nodes = [(t, rows) for t in self.arch.cell_types for rows in self._node_rows()]
        random.Random(self.seed + 1).shuffle(nodes)
        return [(t, rows) for t, rows in nodes if sum(bool(self.arch.mask(t)[e].any()) for e in rows) > 2]

    def _node_rows(self):
        rows, start = [], 0
        for i in range(self.model.cells[0].steps):
            n = self.model.cells[0].inputs + i
            rows.append(list(range(start, start + n)))
            start += n
        return rows

    def decide_topology(self, cell_type: str, rows: List[int]) -> Dict:
        live = [e for e in rows if bool(self.arch.mask(cell_type)[e].any())]
        scores = {e: self.score_without(cell_type, e) for e in live}
        keep = sorted(live, key=lambda e: scores[e])[:2]
        for e in live:
            if e not in keep:
                self.arch.remove_edge(cell_type, e)
        return {"phase": "topology", "cell_type": cell_type, "edges": live,
                "scores_without": {str(e): s for e, s in scores.items()}, "kept": sorted(keep)}

    # -- state ----------------------------------------------------------------
    def _save(self):
        state = {"model": self.model.state_dict(), "trail": json.dumps(self.trail), "tune_round": self.tune_round,
                 "torch_rng": torch.get_rng_state()}
        save(state, self.checkpoint_path)
        write_json(os.path.join(self.out, "pt_trail.json"), self.trail)

    def resume(self) -> bool:
        if not os.path.exists(self.checkpoint_path):
            return False
        state = torch.load(self.checkpoint_path, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.trail = json.loads(state["trail"])
        self.tune_round = state["tune_round"]
        torch.set_rng_state(state["torch_rng"])
        return True

    def run(self) -> Genotype:
        if "operation" in self.phases:
            edges = self._undecided_edges()
            for i, (t, e) in enumerate(edges):
                record = self.decide_operation(t, e)
                self._commit(record, f"edge {i + 1}/{len(edges)} ({t} {e}): {record['scores_without']} -> {record['chosen']}")
        if "topology" in self.phases:
            nodes = self._nodes_to_prune()
            for i, (t, rows) in enumerate(nodes):
                record = self.decide_topology(t, rows)
                self._commit(record, f"node {i + 1}/{len(nodes)} ({t}): keep edges {record['kept']}")
        return self.genotype()

    def _commit(self, record: Dict, message: str) -> None:
        """Reports a decision, fine-tunes after it, then checkpoints both."""
        self.log(message)
        self.trail.append(record)
        self.fine_tune()
        self._save()

    def genotype(self):
        if self.nb201:  # each edge's remaining operation (`none` if PT left only that)
            alpha = self.arch.alphas["cell"].detach().masked_fill(~self.arch.mask("cell"), float("-inf"))
            return derive_nb201(alpha, self.arch.ops)
        cells = {}
        for t in ("normal", "reduce"):
            # Per edge the α of its remaining operation; removed edges at -inf.
            alpha = self.arch.alphas[t].detach().masked_fill(~self.arch.mask(t), float("-inf"))
            cells[t] = derive_cell(alpha, self.arch.ops, "darts", mask=self.arch.mask(t))
        return Genotype(cells["normal"][0], cells["normal"][1], cells["reduce"][0], cells["reduce"][1])
