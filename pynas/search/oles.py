"""OLES: DARTS with operation-level early stopping (Jiang et al., "Operation-Level
Early Stopping for Robustifying Differentiable NAS", NeurIPS 2023).

As the authors' code runs it (PasaLab/oles @ d90455c, train_search.py):

- After each weight step, every checked operation's (clipped) training gradient
  is stored (``preserve_grads``, 172-188).
- After the next α step, per operation, the cosine similarity along dim 0 between
  each parameter's current gradient and its stored one, averaged over the
  operation's parameter tensors (``check_grads_cosine``, 191-232). The code never
  zeroes the weights' gradients between the weight step and the α step's
  backward (``Architect.step`` zeroes α's only), so "current" is the stored
  training gradient *plus* the validation gradient of α's loss; here the α step
  computes the checked weights' validation gradient with α's and adds it.
- The similarities accumulate per operation; when its counter is at ``window``
  (20, hard-coded: ``--patience``/``--count`` are unused, 49-50), the sum over
  ``window`` is compared with ``threshold`` (0.4) and the operation is frozen if
  below, for the rest of the search; counter and sum restart.

**The 21-over-20 quirk.** The counter is compared before it is incremented, so
the decision is taken at the 21st similarity, on the sum of 21 similarities
divided by 20; the next window again holds 21. pynas follows the code
(:class:`SimilarityWindows`): decisions every ``window + 1`` similarities, on
their sum over ``window`` (a mean of 21 below 0.4·20/21 ≈ 0.381 freezes).

**Which operations.** The code checks ``Zero``, the pools, ``Identity`` and the
separable/dilated convs (``operation_list``, 164); the parameter-free ones store
nothing, so only convolutions can freeze; the stride-2 ``skip_connect``
(``FactorizedReduce``) is not in the list. Here: every candidate operation with
parameters except ``skip_connect``.

**Freezing.** The code sets ``requires_grad=False``. Under the PyTorch it was
written for (``zero_grad`` zeroing, not dropping, gradients) SGD still applied
weight decay and momentum to the frozen weights; under current PyTorch
(``set_to_none``) they get no update at all, which is what pynas does: a frozen
operation's parameters leave :attr:`Strategy.weights`, so the weight step gives
them no gradient and SGD skips them. The operation still runs in the forward.

**Not here.** The code's genotype is DARTS' top-2 *including* ``none`` and the
result is the genotype of the epoch with the best validation accuracy (150-153);
both are the run's derivation, not this order's.
"""
import json
import math
import numbers
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .strategies import DartsFirstOrder

# The authors' operation_list names Identity but not FactorizedReduce, the stride-2 skip_connect.
UNCHECKED = ("skip_connect",)


def operation_similarity(current: Sequence[torch.Tensor], stored: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean over an operation's parameter tensors of ``cosine_similarity(g, g_stored,
    dim=0).mean()`` (``check_grads_cosine``, train_search.py:210-221), a 0-d tensor."""
    terms = [F.cosine_similarity(g, s, dim=0).mean() for g, s in zip(current, stored) if len(g) != 0]
    return torch.stack(terms).mean()


class SimilarityWindows:
    """Per operation, the running sum of its similarities and the counter of the
    authors' ``check_grads_cosine`` (train_search.py:224-232), quirk included: a
    similarity is added, then, if the counter is at ``window``, the operation is
    judged on ``sum / window`` (of ``window + 1`` terms) and both restart at 0;
    otherwise the counter is incremented. The sums stay on the device between
    decisions (one host read per decision), in float64 (the code's are float32
    tensors: a sum within rounding of ``threshold · window`` may be judged otherwise)."""

    def __init__(self, n: int, window: int, threshold: float, device=None):
        self.window, self.threshold = window, threshold
        self.sums = torch.zeros(n, dtype=torch.float64, device=device)
        self.counts = [0] * n

    def add(self, indices: Sequence[int], similarities: torch.Tensor) -> List[Tuple[int, float]]:
        """Adds ``similarities[j]`` to operation ``indices[j]``'s window; returns
        ``(index, sum / window)`` of each operation judged now whose value is below the threshold."""
        if not indices:
            return []
        index = torch.tensor(list(indices), device=self.sums.device)
        self.sums.index_add_(0, index, similarities.detach().to(self.sums))
        due = [i for i in indices if self.counts[i] == self.window]
        for i in indices:
            self.counts[i] = 0 if self.counts[i] == self.window else self.counts[i] + 1
        if not due:
            return []
        means = (self.sums[due] / self.window).tolist()
        self.sums[due] = 0
        return [(i, m) for i, m in zip(due, means) if m < self.threshold]

    def state_dict(self):
        return {"sums": self.sums.clone(), "counts": list(self.counts)}

    def load_state_dict(self, state):
        self.sums.copy_(state["sums"])
        self.counts = [int(c) for c in state["counts"]]


def checked_operations(model: nn.Module) -> List[Dict]:
    """Every candidate operation with parameters on a cell's edges (but ``UNCHECKED``):
    ``{"cell", "cell_type", "edge", "op", "params"}``, in the model's order."""
    types = model.arch.cell_types
    found = []
    for c, cell in enumerate(getattr(model, "cells", ())):
        edges = getattr(cell, "edges", None)
        if edges is None:  # e.g. NAS-Bench-201's residual reductions between stages
            continue
        cell_type = types[0] if len(types) == 1 else ("reduce" if cell.reduction else "normal")
        for e, edge in enumerate(edges):
            for k in edge.materialised:
                params = list(edge.ops[edge._slot[k]].parameters())
                if params and edge.names[k] not in UNCHECKED:
                    found.append({"cell": c, "cell_type": cell_type, "edge": e, "op": edge.names[k], "params": params})
    return found


def check_options(window, threshold) -> None:
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
        raise ValueError(f"--oles-window must be an integer >= 1, got {window!r}")
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold)
            or not -1 <= threshold <= 1):
        raise ValueError(f"--oles-threshold must be a number in [-1, 1] (a cosine similarity), got {threshold!r}")


class Oles(DartsFirstOrder):
    """DARTS (first order) with OLES' operation-level early stopping (see the
    module's docstring). ``frozen_ops``: one dict per frozen operation, in order
    (``cell``, ``cell_type``, ``edge``, ``op``, ``step`` (the 0-based global
    step), ``epoch``, ``similarity`` (the window's sum / ``window``))."""

    name = "oles"

    def __init__(self, model, config, steps_per_epoch, loss_fn=F.cross_entropy, window: int = 20,
                 threshold: float = 0.4, **parts):
        check_options(window, threshold)
        super().__init__(model, config, steps_per_epoch, loss_fn, **parts)
        self.operations = checked_operations(model)
        if not self.operations:
            raise ValueError("oles: the supernet has no candidate operation with parameters whose gradients "
                             "it could compare")
        self.windows = SimilarityWindows(len(self.operations), window, threshold, self.device)
        self.frozen = [False] * len(self.operations)
        self.frozen_ops: List[Dict] = []
        # Operation index -> [(j, the clipped training gradient of its parameter j in the last weight step)].
        self.stored: Dict[int, List[Tuple[int, torch.Tensor]]] = {}

    def weight_step(self, batch):
        metrics = super().weight_step(batch)
        # The clipped gradients (clip_grad_norm_ works in place), averaged over ranks already.
        self.stored = {}
        for i, op in enumerate(self.operations):
            pairs = [(j, p.grad.detach().clone()) for j, p in enumerate(op["params"]) if p.grad is not None]
            if pairs:  # a frozen operation has none: it is not among the weights differentiated
                self.stored[i] = pairs
        return metrics

    def arch_step(self, train_batch, val_batch):
        checked = sorted(self.stored)
        params = [self.operations[i]["params"][j] for i in checked for j, _ in self.stored[i]]
        self.a_opt.zero_grad(set_to_none=True)
        loss, _ = self.loss(val_batch, "alpha")
        # α's gradient and the checked weights' validation gradient from one backward (the code's
        # loss.backward() computes both); the weights' are averaged over ranks with α's, so ranks agree.
        grads = torch.autograd.grad(loss, self.alphas + params, allow_unused=True)
        for t, g in zip(self.alphas + params, grads):
            t.grad = torch.zeros_like(t) if g is None else g
        self.sync(self.alphas + params)
        self.arch_optimizer_step()
        with torch.no_grad():
            similarities = [self._similarity(i) for i in checked]
        for p in params:  # the weight step computes its own gradients
            p.grad = None
        self.stored = {}  # the code clears pre_grads after each comparison
        if checked:
            for i, mean in self.windows.add(checked, torch.stack(similarities)):
                self.frozen[i] = True
                self._drop_frozen_weights()
                op = self.operations[i]
                self.frozen_ops.append({"cell": op["cell"], "cell_type": op["cell_type"], "edge": op["edge"],
                                        "op": op["op"], "step": self.global_step, "epoch": self.epochs_done,
                                        "similarity": mean})

    def _similarity(self, i: int) -> torch.Tensor:
        """Operation ``i``'s similarity once the α step has put the validation gradients in ``.grad``:
        the code's current gradient is the stored one plus the validation one (never zeroed between)."""
        params = self.operations[i]["params"]
        stored = [g for _, g in self.stored[i]]
        return operation_similarity([g + params[j].grad for j, g in self.stored[i]], stored)

    def _drop_frozen_weights(self) -> None:
        """The frozen operations' parameters leave the weights the weight step differentiates,
        clips and steps: no gradient, so SGD moves them no more (no weight decay, no momentum)."""
        gone = {id(p) for i, op in enumerate(self.operations) if self.frozen[i] for p in op["params"]}
        self.weights = [w for w in self.model.weight_parameters() if id(w) not in gone]
        # Data parallel: the overlapped reduction is rebuilt over the weights left (the old one's
        # hooks stay registered but act only while it collects, which it never does again).
        self._weight_reduction = None

    def state_dict(self):
        stored = {str(i): [(j, g.clone()) for j, g in pairs] for i, pairs in self.stored.items()}
        return dict(super().state_dict(), oles={"windows": self.windows.state_dict(), "frozen": list(self.frozen),
                                                "frozen_ops": json.dumps(self.frozen_ops), "stored": stored})

    def load_state_dict(self, state):
        super().load_state_dict(state)
        oles = state["oles"]
        if len(oles["frozen"]) != len(self.operations):
            raise ValueError(f"oles: the state has {len(oles['frozen'])} checked operations, the supernet "
                             f"{len(self.operations)}")
        self.windows.load_state_dict(oles["windows"])
        self.frozen = [bool(f) for f in oles["frozen"]]
        self._drop_frozen_weights()
        self.frozen_ops = json.loads(oles["frozen_ops"])
        self.stored = {int(i): [(int(j), g.to(self.device)) for j, g in pairs] for i, pairs in oles["stored"].items()}
