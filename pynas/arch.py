"""Architecture parameters α and the relaxations that turn them into edge weights.

α is one ``[E, K]`` parameter per cell type (``normal``, ``reduce``), shared by
all cells of that type and kept apart from the network weights. A relaxation,
chosen by name, maps α to the weights every :class:`~pynas.nn.MixedOp` feeds to
``mixed_sum``:

- ``softmax``      DARTS: softmax(α) over each edge's operations.
- ``sigmoid``      Single-DARTS (Sec. 5.1.2): sigmoid(α), not normalised.
- ``gumbel``       SNAS (Eq. 5): soft Gumbel-softmax samples at temperature τ.
- ``gumbel_hard``  GDAS: one-hot samples, straight-through gradient (τ anneals).
- ``categorical``  DSNAS (Sec. 4, App. B): a one-hot sample Z_s from p =
                   softmax(α) whose weight has value 1 and gradient ∇α log p_s,
                   so α's gradient is C·(δ_s − p) with C = Σ ∂L/∂O_s ⊙ O_s.
- ``dirichlet``    DrNAS (Chen et al. 2021): a reparameterised sample of
                   Dirichlet(ELU(α) + 1) per edge (:func:`dirichlet_weights`).

A boolean mask per cell type fixes an edge to one operation, removes an
operation or removes an edge (perturbation-based selection); masked entries get
weight 0 and are never run.

With ``edge_normalisation`` (PC-DARTS Sec. 3.3) each cell type also has β, one
parameter per edge: each node's incoming edges are weighted by softmax(β) over
them (:meth:`Architecture.edge_weights`), in the forward and in derivation.
"""
import contextlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functional import gumbel_softmax
from .nn.spaces import SearchSpace, get_space

RELAXATIONS = ("softmax", "sigmoid", "gumbel", "gumbel_hard", "categorical", "dirichlet")
SAMPLE_PER = ("forward", "cell", "sample")


SCHEDULE_KINDS = ("linear", "exponential", "linear-epoch", "snas")


def parse_init(init) -> Tuple[float, float]:
    """(mean, std) of α's initial values from ``init``: ``"normal"`` (DARTS:
    1e-3·N(0, 1)), ``"normal(MEAN,STD)"`` (SNAS' code: N(1, 0.01)), ``"zeros"``,
    or a number (e.g. -ln 7 for Single-DARTS' sigmoid)."""
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return float(init), 0.0
    if init == "normal":
        return 0.0, 1e-3
    if init == "zeros":
        return 0.0, 0.0
    if isinstance(init, str):
        text = init.replace(" ", "")
        try:
            if text.startswith("normal(") and text.endswith(")"):
                mean, std = (float(v) for v in text[7:-1].split(","))
                if std >= 0 and math.isfinite(mean) and math.isfinite(std):
                    return mean, std
            else:
                value = float(text)
                if math.isfinite(value):
                    return value, 0.0
        except ValueError:
            pass
    raise ValueError(f"α init must be 'normal', 'normal(MEAN,STD)', 'zeros' or a finite number, got {init!r}")


class TemperatureSchedule:
    """τ from ``start`` to ``end`` over a search.

    - ``linear`` / ``exponential``: per step, as search progress goes from 0 to 1;
    - ``linear-epoch`` (GDAS' public code): per epoch e of E, τ = start − (start −
      end)·e/(E − 1), so the last epoch runs at ``end``;
    - ``snas`` (SNAS' public code): per epoch, τ = end + (start − end)·(1 − (e + 1)/E),
      already below ``start`` in the first epoch and ``end`` in the last.
    """

    def __init__(self, start: float, end: float, kind: str = "linear"):
        if not (math.isfinite(start) and math.isfinite(end)) or start <= 0 or end <= 0:
            raise ValueError(f"TemperatureSchedule: temperatures must be positive, got start={start}, end={end}")
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"TemperatureSchedule: `kind` must be one of {SCHEDULE_KINDS}, got {kind!r}")
        self.start, self.end, self.kind = start, end, kind

    def __call__(self, progress: float) -> float:
        """τ at search progress in [0, 1] (a per-step position for every kind)."""
        p = min(max(progress, 0.0), 1.0)
        if self.kind == "exponential":
            return self.start * (self.end / self.start) ** p
        return self.start + (self.end - self.start) * p

    def at(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        """τ at global ``step`` of a search of ``epochs`` epochs."""
        epoch = step // max(steps_per_epoch, 1)
        if self.kind == "linear-epoch":
            return self(epoch / max(epochs - 1, 1))
        if self.kind == "snas":
            return self.end + (self.start - self.end) * max(0.0, 1 - (epoch + 1) / epochs)
        return self(step / max(epochs * steps_per_epoch, 1))

    def __repr__(self):
        return f"TemperatureSchedule({self.start}, {self.end}, {self.kind!r})"


# As the authors' public code anneals them: SNAS per epoch from 1 to 0.03, GDAS
# per epoch from 10 to 0.1 (docs/fidelity.md).
DEFAULT_SCHEDULES = {
    "gumbel": TemperatureSchedule(1.0, 0.03, "snas"),
    "gumbel_hard": TemperatureSchedule(10.0, 0.1, "linear-epoch"),
}


@dataclass
class EdgeWeights:
    """Relaxed weights of one cell type: ``weights`` ``[E, K]`` (or ``[B, E, K]``)
    and, per edge, the columns to run (None: every available one); ``edge``: the
    ``[E]`` edge-normalisation weights (PC-DARTS), None without β."""

    weights: torch.Tensor
    active: Optional[List[Optional[List[int]]]] = None
    edge: Optional[torch.Tensor] = None


class Architecture(nn.Module):
    """α for each cell type, its relaxation and its masks.

    Args:
        space: a :class:`SearchSpace` or its name.
        num_edges: edges per cell.
        cell_types: e.g. ``("normal", "reduce")``.
        relaxation: one of :data:`RELAXATIONS`.
        init: see :func:`parse_init` (``"normal"``: 1e-3·N(0, 1), DARTS; a float,
            e.g. ``-math.log(7)`` so that sigmoid(α) = 1/8, Single-DARTS).
        sample_per: ``"forward"`` (one sample per forward for all cells of a
            type), ``"cell"`` (a fresh sample per cell) or ``"sample"`` (one per
            input sample: ``[B, E, K]`` weights).
        schedule: the temperature schedule of the Gumbel relaxations.
        generator: the ``torch.Generator`` samples are drawn from.
        edge_normalisation: PC-DARTS' β per edge (``betas``, 1e-3·N(0, 1) as its
            code initialises them), normalised over each node's incoming edges.
        inputs: the cells' input nodes (1 or 2): which edges share a node, for β.
    """

    def __init__(self, space, num_edges: int, cell_types: Sequence[str] = ("normal", "reduce"),
                 relaxation: str = "softmax", init="normal", sample_per: str = "forward",
                 schedule: Optional[TemperatureSchedule] = None, generator: Optional[torch.Generator] = None,
                 edge_normalisation: bool = False, inputs: int = 2):
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ValueError(f"Architecture: `relaxation` must be one of {RELAXATIONS}, got {relaxation!r}")
        if sample_per not in SAMPLE_PER:
            raise ValueError(f"Architecture: `sample_per` must be one of {SAMPLE_PER}, got {sample_per!r}")
        self.space: SearchSpace = get_space(space)
        self.num_edges, self.cell_types = num_edges, tuple(cell_types)
        self.relaxation, self.sample_per, self.generator = relaxation, sample_per, generator
        self.schedule = schedule or DEFAULT_SCHEDULES.get(relaxation)
        self.temperature = self.schedule(0.0) if self.schedule else 1.0
        K = len(self.space.ops)
        self.alphas = nn.ParameterDict({t: nn.Parameter(self._initial(init, num_edges, K)) for t in self.cell_types})
        # Drawn after α: a supernet with β starts from the α of one without.
        self.betas = (nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(num_edges)) for t in self.cell_types})
                      if edge_normalisation else None)
        self.node_edges = _node_edges(num_edges, inputs) if edge_normalisation else None
        for t in self.cell_types:
            self.register_buffer(f"mask_{t}", self.space.available(t, num_edges))
        self._dropped: Dict[str, torch.Tensor] = {}
        self._noise: Dict[str, torch.Tensor] = {}
        self._replaced: Dict[str, torch.Tensor] = {}
        # Per cell type, the operations each edge can run under its mask, read to the host
        # once per mask change (see `active`): a step with unchanged masks does no transfer.
        self.mask_versions: Dict[str, int] = {t: 0 for t in self.cell_types}
        self._mask_seen: Dict[str, tuple] = {}
        self._active_cache: Dict[str, tuple] = {}
        for t in self.cell_types:  # the masks start on the CPU: free to read now
            self.active(t)
        self._ahead = False  # see `sampling_ahead`
        self._drawn_ahead: Optional[dict] = None

    @staticmethod
    def _initial(init, E, K):
        mean, std = parse_init(init)
        return mean + std * torch.randn(E, K) if std else torch.full((E, K), mean)

    @property
    def ops(self):
        return self.space.ops

    def mask(self, cell_type: str) -> torch.Tensor:
        self._check_type(cell_type)
        return getattr(self, f"mask_{cell_type}")

    def _check_type(self, cell_type):
        if cell_type not in self.cell_types:
            raise ValueError(f"unknown cell type {cell_type!r}; this architecture has {self.cell_types}")

    def _op_index(self, op):
        if isinstance(op, int):
            if not 0 <= op < len(self.ops):
                raise ValueError(f"operation index {op} out of range [0, {len(self.ops)})")
            return op
        if op not in self.ops:
            raise ValueError(f"operation {op!r} is not in the space {self.ops}")
        return self.ops.index(op)

    def _check_edge(self, edge):
        if not 0 <= edge < self.num_edges:
            raise ValueError(f"edge {edge} out of range [0, {self.num_edges})")

    # -- masks (used by perturbation-based selection) -------------------------
    def fix_op(self, cell_type: str, edge: int, op) -> None:
        """Keep only ``op`` on ``edge``."""
        self._check_edge(edge)
        k = self._op_index(op)
        mask = self.mask(cell_type)
        if not mask[edge, k]:
            raise ValueError(f"fix_op: {self.ops[k]!r} is not available on edge {edge} of {cell_type!r} cells")
        mask[edge] = False
        mask[edge, k] = True
        self._mask_changed(cell_type)

    def remove_op(self, cell_type: str, edge: int, op) -> None:
        self._check_edge(edge)
        self.mask(cell_type)[edge, self._op_index(op)] = False
        self._mask_changed(cell_type)

    def remove_edge(self, cell_type: str, edge: int) -> None:
        self._check_edge(edge)
        self.mask(cell_type)[edge] = False
        self._mask_changed(cell_type)

    def _mask_changed(self, cell_type: str) -> None:
        # A Python counter: what a torch.compile'd forward guards on (it cannot read a tensor's version).
        self.mask_versions[cell_type] += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        for t in self.cell_types:
            self._mask_changed(t)
        self.discard_sample_ahead()

    def active(self, cell_type: str) -> Optional[List[Optional[List[int]]]]:
        """Per edge, the operations its mask leaves to run (None: every one, on
        every edge). Cached: computed again (one device-to-host transfer) only
        after the mask changed, by :meth:`fix_op` and its kin, by loading a state
        dict, or, outside torch.compile, by any in-place edit or move of the
        mask tensor."""
        mask = self.mask(cell_type)
        if not torch.compiler.is_compiling():
            seen = (mask.data_ptr(), mask._version, mask.device)
            if self._mask_seen.get(cell_type) != seen:
                self._mask_seen[cell_type] = seen
                self._mask_changed(cell_type)
        cached = self._active_cache.get(cell_type)
        if cached is None or cached[0] != self.mask_versions[cell_type]:
            cached = (self.mask_versions[cell_type], _active_from_mask(mask))
            self._active_cache[cell_type] = cached
        return cached[1]

    def set_progress(self, progress: float) -> None:
        """Search progress in [0, 1]; sets τ from the schedule."""
        if self.schedule is not None:
            self.temperature = self.schedule(progress)

    def set_position(self, step: int, steps_per_epoch: int, epochs: int) -> None:
        """Sets τ from the schedule at global ``step`` of the search."""
        if self.schedule is not None:
            self.temperature = self.schedule.at(step, steps_per_epoch, epochs)

    # -- relaxed weights -------------------------------------------------------
    def probabilities(self, cell_type: str) -> torch.Tensor:
        """The deterministic relaxation of α (softmax, or sigmoid for
        ``sigmoid``), masked: what derivation rules read. Softmax(α) under
        ``dirichlet`` too, as DrNAS derives (not the Dirichlet mean)."""
        deterministic = "sigmoid" if self.relaxation == "sigmoid" else "softmax"
        return relax(self.alphas[cell_type], self.mask(cell_type), deterministic).weights

    def edge_weights(self, cell_type: str) -> Optional[torch.Tensor]:
        """PC-DARTS' edge normalisation (Sec. 3.3): ``[E]``, softmax(β) over each
        node's incoming edges that the mask leaves (a removed edge gets 0); None
        without β."""
        if self.betas is None:
            return None
        self._check_type(cell_type)
        beta, present = self.betas[cell_type], self.mask(cell_type).any(-1)
        nodes = [slice(rows[0], rows[-1] + 1) for rows in self.node_edges]  # a node's edges are consecutive rows
        # A node whose every edge is removed keeps finite logits (as _masked_logits): no NaN reaches β's gradient.
        node_alive = torch.cat([present[n].any().expand(n.stop - n.start) for n in nodes])
        logits = beta.masked_fill(~present & node_alive, float("-inf"))
        weights = torch.cat([logits[n].softmax(-1) for n in nodes])
        return torch.where(present, weights, torch.zeros_like(weights))

    def derivation_weights(self, cell_type: str) -> torch.Tensor:
        """What derivation rules rank: :meth:`probabilities`, times each edge's
        :meth:`edge_weights` with β (PC-DARTS' ``genotype()``: softmax(α)·softmax(β))."""
        p = self.probabilities(cell_type)
        edge = self.edge_weights(cell_type)
        return p if edge is None else p * edge.unsqueeze(-1)

    def weights(self, cell_type: str, batch_size: Optional[int] = None) -> EdgeWeights:
        """Fresh relaxed weights of one cell type (a new sample for the stochastic
        relaxations); ``[B, E, K]`` when ``sample_per == "sample"``."""
        return self.weights_of([cell_type], batch_size)[cell_type]

    def weights_of(self, cell_types: Sequence[str], batch_size: Optional[int] = None) -> Dict[str, EdgeWeights]:
        """:meth:`weights` of several cell types, drawn in the order given. Under
        a hard sample (``gumbel_hard``, ``categorical``) the operations to run of
        all of them (and of the samples drawn ahead, :meth:`sampling_ahead`) come
        to the host in one device-to-host transfer; the soft relaxations need none.
        Within :meth:`replaced`, a replaced cell type's weights are the given ones."""
        for t in cell_types:
            self._check_type(t)
        if self.sample_per == "sample" and batch_size is None:
            raise ValueError("Architecture.weights: sample_per='sample' needs `batch_size`")
        B = batch_size if self.sample_per == "sample" else None
        relaxed = self._relaxed_of([t for t in cell_types if t not in self._replaced], B)
        out = {}
        for t in cell_types:
            if t in relaxed:
                w, active = relaxed[t]
                noise = self._noise.get(t)
                if noise is not None:
                    w = _clip_renormalise(w + noise.to(w), self.mask(t))
            else:
                w, active = self.replacement(t), self.active(t)
                if B is not None:
                    w = w.expand(B, *w.shape)
            out[t] = self._drop(t, EdgeWeights(w, active, self.edge_weights(t)))
        return out

    def _relaxed_of(self, cell_types, B) -> Dict[str, tuple]:
        """Per cell type, ``(weights, active)`` of a fresh relaxation (see :meth:`weights_of`)."""
        if not cell_types:
            return {}
        hard = self.relaxation in ("gumbel_hard", "categorical")
        ahead = self._use_drawn_ahead(cell_types, B) if hard else None
        drawn = {t: self._draw(t, B) for t in cell_types}
        if hard:
            chosen = {t: c for t, (_, c) in drawn.items()}
            if ahead is None:
                next_chosen = self._draw_ahead(cell_types, B) if self._ahead and self.generator is not None else {}
                actives = _active_lists_of({**{("now", t): c for t, c in chosen.items()},
                                            **{("next", t): c for t, c in next_chosen.items()}})
                if next_chosen:
                    self._drawn_ahead["active"] = {t: actives["next", t] for t in next_chosen}
                active = {t: actives["now", t] for t in cell_types}
            else:
                active = ahead
        else:
            active = {t: self.active(t) for t in cell_types}
        return {t: (drawn[t][0], active[t]) for t in cell_types}

    def _draw(self, cell_type, batch_size):
        return _relax(self.alphas[cell_type], self.mask(cell_type), self.relaxation, self.temperature,
                      self.generator, batch_size)

    def _drop(self, cell_type: str, w: EdgeWeights) -> EdgeWeights:
        dropped = self._dropped.get(cell_type)
        if dropped is None:
            return w
        keep = self.mask(cell_type) & ~dropped
        active = w.active if w.active is not None else [list(range(len(self.ops)))] * self.num_edges
        active = [[k for k in row if keep[e, k]] for e, row in enumerate(active)]
        return EdgeWeights(w.weights.masked_fill(dropped.to(w.weights.device), 0.0), active, w.edge)

    # -- hard samples drawn one forward ahead ----------------------------------
    @contextlib.contextmanager
    def sampling_ahead(self, enabled: bool = True):
        """Within the block, a forward under a hard sample also draws the *next*
        forward's sample from the same α and brings both samples' operations to
        run to the host in one transfer. The next forward uses that sample if α,
        the masks, τ, the batch size and the generator are as they were; it then
        draws the same noise again from the same generator state (so its weights
        are exactly those of a fresh draw), else the generator is rewound and it
        draws afresh. Either way the samples are those of a search without it:
        it only saves the transfer. For DARTS-order steps (GDAS), where the
        weight step's α is also the next α step's."""
        before, self._ahead = self._ahead, bool(enabled)
        try:
            yield
        finally:
            self._ahead = before

    def discard_sample_ahead(self) -> None:
        """Forgets a sample drawn ahead and rewinds the generator to before it
        (e.g. at the end of an epoch, before a checkpoint records the generator)."""
        pending, self._drawn_ahead = self._drawn_ahead, None
        if pending is not None and self.generator is not None:
            self.generator.set_state(pending["before"])

    def _ahead_key(self, cell_types, batch_size):
        return (tuple(cell_types), batch_size, self.relaxation, self.temperature,
                tuple((a._version, a.data_ptr()) for a in (self.alphas[t] for t in cell_types)),
                tuple(self.mask_versions[t] for t in cell_types))

    def _draw_ahead(self, cell_types, batch_size) -> Dict[str, torch.Tensor]:
        before = self.generator.get_state()
        with torch.no_grad():
            chosen = {t: self._draw(t, batch_size)[1] for t in cell_types}
        self._drawn_ahead = dict(key=self._ahead_key(cell_types, batch_size), before=before,
                                 after=self.generator.get_state())
        return chosen

    def _use_drawn_ahead(self, cell_types, batch_size):
        """The operations to run of the sample drawn ahead, with the generator
        set to draw that sample again; None (generator rewound) if it does not apply."""
        pending = self._drawn_ahead
        if pending is None:
            return None
        if not torch.equal(self.generator.get_state(), pending["after"]):
            self._drawn_ahead = None  # someone drew or set the generator since: the sample is void
            return None
        if pending["key"] != self._ahead_key(cell_types, batch_size) or "active" not in pending:
            self.discard_sample_ahead()
            return None
        self._drawn_ahead = None
        self.generator.set_state(pending["before"])
        return pending["active"]

    @contextlib.contextmanager
    def perturbed(self, cell_type: str, edge: int, op=None):
        """Within the block, operation ``op`` of ``edge`` (or the whole edge when
        ``op`` is None) has weight 0 and is not run; the other weights are *not*
        renormalised (DARTS-PT's perturbation). Nothing persists afterwards."""
        self._check_edge(edge)
        dropped = torch.zeros_like(self.mask(cell_type))
        if op is None:
            dropped[edge] = True
        else:
            dropped[edge, self._op_index(op)] = True
        self._dropped[cell_type] = dropped
        try:
            yield
        finally:
            del self._dropped[cell_type]

    @contextlib.contextmanager
    def noisy(self, noise: Dict[str, torch.Tensor]):
        """Within the block, ``noise[cell_type]`` (``[E, K]``) is added to that cell
        type's relaxed weights, which are then clipped to [0, 1] and renormalised
        per edge (SDARTS-RS' random smoothing, applied to softmax(α) as in its
        public code); α itself is untouched."""
        for cell_type, n in noise.items():
            self._check_type(cell_type)
            if n.shape != self.alphas[cell_type].shape:
                raise ValueError(f"noisy: noise for {cell_type!r} has shape {tuple(n.shape)}, "
                                 f"α {tuple(self.alphas[cell_type].shape)}")
        self._noise = dict(noise)
        try:
            yield
        finally:
            self._noise = {}

    def noise(self, cell_type: str) -> Optional[torch.Tensor]:
        """The noise :meth:`noisy` adds to ``cell_type``'s relaxed weights (None outside it)."""
        self._check_type(cell_type)
        return self._noise.get(cell_type)

    @contextlib.contextmanager
    def replaced(self, weights: Dict[str, torch.Tensor]):
        """Within the block, the relaxed weights of each cell type in ``weights``
        are exactly ``weights[cell_type]`` (``[E, K]``, broadcast to ``[B, E, K]``
        under ``sample_per="sample"``), its masked entries 0: no relaxation, no
        clip or renormalisation, no :meth:`noisy` noise; the operations to run are
        those the mask leaves and PC-DARTS' edge weights are as usual. SDARTS-ADV's
        weight step on the attacked Ā (xiangning-chen/SmoothDARTS
        sota/cnn/model_search.py ``softmax_arch_parameters`` writes Ā over α for
        the forward's ``updateType='weight'``); here α itself is untouched. A
        gradient flows to ``weights[cell_type]`` where it requires one."""
        for cell_type, w in weights.items():
            self._check_type(cell_type)
            if not isinstance(w, torch.Tensor) or w.shape != self.alphas[cell_type].shape:
                shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
                raise ValueError(f"replaced: weights for {cell_type!r} must have α's shape "
                                 f"{tuple(self.alphas[cell_type].shape)}, got {shape}")
        before, self._replaced = self._replaced, dict(weights)
        try:
            yield
        finally:
            self._replaced = before

    def replacement(self, cell_type: str) -> Optional[torch.Tensor]:
        """The ``[E, K]`` weights :meth:`replaced` gives ``cell_type``, masked entries
        0 (None outside it)."""
        self._check_type(cell_type)
        w = self._replaced.get(cell_type)
        if w is None:
            return None
        mask = self.mask(cell_type).to(w.device)
        return torch.where(mask, w, torch.zeros_like(w))

    def extra_repr(self):
        return (f"space={self.space.name}, ops={len(self.ops)}, edges={self.num_edges}, "
                f"relaxation={self.relaxation}, sample_per={self.sample_per}")


def _node_edges(num_edges: int, inputs: int) -> List[List[int]]:
    """Per intermediate node, the rows of its incoming edges (node k has ``inputs + k``)."""
    groups, row, n = [], 0, inputs
    while row < num_edges:
        groups.append(list(range(row, row + n)))
        row, n = row + n, n + 1
    if row != num_edges:
        raise ValueError(f"Architecture: {num_edges} edges do not form a cell with {inputs} input nodes "
                         f"(edge normalisation needs each node's incoming edges)")
    return groups


def relax(alpha: torch.Tensor, mask: torch.Tensor, relaxation: str, temperature: float = 1.0,
          generator: Optional[torch.Generator] = None, batch_size: Optional[int] = None) -> EdgeWeights:
    """Relaxed weights of ``alpha`` (``[..., K]``) under ``mask`` (see the module
    docstring); with ``batch_size``, one sample per input sample (``[B, ..., K]``)."""
    w, chosen = _relax(alpha, mask, relaxation, temperature, generator, batch_size)
    return EdgeWeights(w, _active_from_mask(mask) if chosen is None else _active_from_hard(chosen))


def _relax(alpha, mask, relaxation, temperature=1.0, generator=None, batch_size=None):
    """``(weights, chosen)``: the relaxed weights and, under a hard sample, the
    device's ``[E, K]`` boolean of the operations to run (None: as the mask says)."""
    if relaxation not in RELAXATIONS:
        raise ValueError(f"`relaxation` must be one of {RELAXATIONS}, got {relaxation!r}")
    if relaxation in ("softmax", "sigmoid"):
        w = torch.sigmoid(alpha) * mask if relaxation == "sigmoid" else _masked_softmax(alpha, mask)
        if batch_size is not None:
            w = w.expand(batch_size, *w.shape)
        return w, None
    if relaxation == "dirichlet":
        return dirichlet_weights(alpha, mask, generator, batch_size), None
    logits = _masked_logits(alpha, mask)
    if batch_size is not None:
        logits = logits.expand(batch_size, *logits.shape)
    if relaxation == "gumbel":
        w = gumbel_softmax(logits, tau=temperature, generator=generator)
        return torch.where(mask, w, torch.zeros_like(w)), None
    if relaxation == "gumbel_hard":
        w = gumbel_softmax(logits, tau=temperature, hard=True, generator=generator)
    else:  # categorical (DSNAS): one-hot Z_s from softmax(α), weight 1 with gradient ∇α log p_s
        hard = gumbel_softmax(logits, tau=1.0, hard=True, generator=generator).detach() * mask
        log_p = torch.log_softmax(logits, -1).masked_fill(~mask, 0.0)
        log_p_s = (hard * log_p).sum(-1, keepdim=True)
        # Value exactly `hard`; ∂L/∂α = (∂L/∂w_s)·(δ_s − p) = C(Z_s)·∇α log p(Z_s), not p_s·C·(δ_s − p)
        # as the straight-through `hard − p.detach() + p` would give.
        w = hard * (1 + (log_p_s - log_p_s.detach()))
    # Run only the selected operation(s): per sample, the union over the batch.
    chosen = (w.detach() > 0.5) & mask
    if chosen.dim() > mask.dim():
        chosen = chosen.any(0)
    return w, chosen


def _clip_renormalise(w, mask):
    """Each edge's weights clipped to [0, 1] and divided by their sum; an edge
    clipped to all zeros keeps its largest entry (before the clip, the first of
    ties) as 1. Unavailable entries and removed edges stay 0. SmoothDARTS' ``clip``
    (xiangning-chen/SmoothDARTS sota/cnn/model_search.py:170-177: argmax, clamp,
    the argmax set to 1 where the row sums to 0, divide by the row sum)."""
    clipped = w.clamp(0, 1) * mask
    # (Not F.one_hot: outside CUDA it checks its indices with two host reads.)
    largest = torch.zeros_like(w).scatter_(-1, w.masked_fill(~mask, float("-inf")).argmax(-1, keepdim=True), 1.0)
    total = clipped.sum(-1, keepdim=True)
    positive = total > 0
    clipped = torch.where(positive, clipped, largest * mask)
    # The actual sum however small; 1 where the row is now one-hot or, an edge the mask removed, all 0.
    return clipped / torch.where(positive, total, torch.ones_like(total))


def _active_from_mask(mask):
    """Per edge, the columns ``mask`` leaves (None: all); one transfer (``tolist``)."""
    rows = mask.reshape(-1, mask.size(-1)).tolist()
    return None if all(all(row) for row in rows) else _columns(rows)


def _active_from_hard(chosen):
    """Per edge, the columns ``chosen`` (``[E, K]`` boolean) selects; one transfer."""
    return _columns(chosen.reshape(-1, chosen.size(-1)).tolist())


def _active_lists_of(chosen: Dict) -> Dict:
    """:func:`_active_from_hard` of several ``[E, K]`` booleans in one transfer."""
    if not chosen:
        return {}
    flat = {k: c.reshape(-1, c.size(-1)) for k, c in chosen.items()}
    rows = torch.cat(list(flat.values())).tolist()
    out, start = {}, 0
    for k, c in flat.items():
        out[k] = _columns(rows[start:start + c.size(0)])
        start += c.size(0)
    return out


def _columns(rows) -> List[List[int]]:
    return [[k for k, on in enumerate(row) if on] for row in rows]


def _masked_logits(alpha, mask):
    """α with unavailable operations at -inf; a fully removed edge keeps finite
    logits (its weights are zeroed and it is never run), so no NaN can reach α's
    gradient."""
    dead = ~mask.any(-1, keepdim=True)
    return alpha.masked_fill(~mask & ~dead, float("-inf"))


def _masked_softmax(alpha, mask):
    w = _masked_logits(alpha, mask).softmax(-1)
    return torch.where(mask, w, torch.zeros_like(w))


# -- DrNAS' Dirichlet relaxation ---------------------------------------------------


def dirichlet_concentration(alpha: torch.Tensor) -> torch.Tensor:
    """DrNAS' concentration β = ELU(α) + 1 > 0 (xiangning-chen/DrNAS utils.py:170-172,
    DARTS-space/model_search.py:201-202)."""
    return F.elu(alpha) + 1


def dirichlet_weights(alpha: torch.Tensor, mask: torch.Tensor, generator: Optional[torch.Generator] = None,
                      batch_size: Optional[int] = None) -> torch.Tensor:
    """DrNAS' relaxed weights (xiangning-chen/DrNAS @ f2caa4d utils.py:167-183): per
    edge row a reparameterised sample of Dirichlet(ELU(α) + 1), drawn and
    differentiated by ``torch.distributions.Dirichlet.rsample``, the call the
    authors' code makes (``torch._sample_dirichlet`` and its implicit gradient).

    The sample is drawn over all operations; entries the mask removes are then
    zeroed and each row renormalised over the kept ones, so the kept weights are
    distributed Dirichlet(β_kept). Removed operations and removed edges (all
    False: weights 0, where the code would divide by 0) pass no gradient to α.
    With ``batch_size``, one sample per input sample (``[B, ..., K]``).

    Every call samples, in eval mode too, as the code's ``infer`` does
    (DARTS-space/train_search.py:209-234): a validation accuracy under this
    relaxation is that of one random sample per forward. What derivation reads
    is softmax(α) (:meth:`Architecture.probabilities`), as DrNAS derives.

    ``generator`` (CPU or CUDA) is the stream drawn from: torch's gamma sampler
    takes none, so the device's global RNG draws from the generator's state,
    which then advances by the draw; the global RNG is left as it was
    (:func:`_global_rng_from`). With None the global RNG draws."""
    with _global_rng_from(generator, alpha.device):
        beta = dirichlet_concentration(alpha)
        # The detached copy gives the same sample; only α's kept entries get a gradient.
        beta = torch.where(mask, beta, beta.detach())
        if batch_size is not None:
            beta = beta.expand(batch_size, *beta.shape)
        sample = torch.distributions.Dirichlet(beta, validate_args=False).rsample()
    kept = torch.where(mask, sample, torch.zeros_like(sample))
    total = kept.sum(-1, keepdim=True)
    return kept / torch.where(total > 0, total, torch.ones_like(total))


@contextlib.contextmanager
def _global_rng_from(generator: Optional[torch.Generator], device: torch.device):
    """Within the block the global RNG of ``device`` continues ``generator``'s
    stream; afterwards ``generator`` holds the advanced state and the global RNG
    its state from before (as ``torch.random.fork_rng``, for samplers such as
    ``torch._sample_dirichlet`` that take no generator). A CUDA generator and the
    device's default one are the same class (Philox seed and offset), so the
    state carries over as it does on the CPU."""
    if generator is None:
        yield
        return
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"dirichlet relaxation: a seeded `generator` draws on CPU or CUDA only, "
                         f"α is on {device}")
    if _device_index(generator.device) != _device_index(device):
        raise ValueError(f"dirichlet relaxation: the `generator` is on {generator.device}, α on {device}")
    default = (torch.default_generator if device.type == "cpu"
               else torch.cuda.default_generators[_device_index(device)[1]])
    saved = default.get_state()
    default.set_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(default.get_state())
        default.set_state(saved)


def _device_index(device: torch.device) -> tuple:
    """``(type, index)``, a CUDA device without an index read as the current one."""
    if device.type == "cuda" and device.index is None:
        return device.type, torch.cuda.current_device()
    return device.type, device.index
