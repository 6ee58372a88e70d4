"""SNAS' locally decomposable resource constraint (Sec. 2.4, App. F).

Each candidate operation of each edge gets three costs computed from shapes
alone, never by running it: parameter size (Eq. 35), FLOPs (Eq. 36, 38, 39)
and memory access cost (Eq. 37, 40), summed over the operation's convolutions.
A network's cost of an architecture Z is C(Z) = Σ_edges Z_e · C(O_e) (Eq. 10),
summed over the cells (each cell has its own table: channels and resolution
differ); :class:`ResourceConstraint` adds λ·E_Z[C(Z)] to the loss, in that
linear form or in the log form of SNAS' public code, with one of three
estimators of its gradient.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..functional import gumbel_softmax

Conv = Tuple[int, int, int, int, int, int]  # (f, k, I, O, groups, stride)


def _conv_costs(layers: List[Conv], H: int, W: int) -> Tuple[float, float, float]:
    """(params, FLOPs, MAC) of a chain of convolutions on an H x W input.

    Eq. 37 prices the input and output maps at one size, H·W·(I + O); a strided
    convolution reads its whole input, which SNAS' code prices (SNAS/operations.py,
    each op's ``forward``: 4·y²·C_in at stride 2 for a y x y output), so each
    convolution's input is read at its own size."""
    params = flops = mac = 0.0
    for f, k, I, O, g, stride in layers:
        Ho, Wo = math.ceil(H / stride), math.ceil(W / stride)
        p = f * k * I * O / g                      # Eq. 35
        params += p
        flops += Ho * Wo * p                       # Eq. 36
        mac += H * W * I + Ho * Wo * O + p         # Eq. 37, the input at its own size
        H, W = Ho, Wo
    return params, flops, mac


def op_costs(name: str, C: int, stride: int, H: int, W: int) -> Tuple[float, float, float]:
    """(parameter size, FLOPs, MAC) of operation ``name`` with C channels on an
    H x W input (App. F)."""
    Ho, Wo = math.ceil(H / stride), math.ceil(W / stride)
    if name == "none":
        return 0.0, 0.0, 0.0
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        # Eq. 38 as printed (H·W·f·k·I·O) would price a 3x3 pool above sep_conv_5x5; a pool computes
        # k² operations per output element and channel, as SNAS' public code counts it. Its MAC reads
        # the full-size input and writes the output (Eq. 40 with the input's own size, as the code).
        return 0.0, Ho * Wo * 3 * 3 * C, H * W * C + Ho * Wo * C
    if name == "skip_connect" and stride == 1:
        return 0.0, 0.0, Ho * Wo * (C + C)                            # Eq. 39, 40
    if name == "noise":  # writes its output, reads nothing
        return 0.0, 0.0, Ho * Wo * C
    if name == "skip_connect":  # factorized reduce: two 1x1 stride-2 convs to C/2
        p1 = _conv_costs([(1, 1, C, C // 2, 1, 2)], H, W)
        return tuple(2 * v for v in p1)
    kernels = {"sep_conv_3x3": (3, 1), "sep_conv_5x5": (5, 1), "sep_conv_7x7": (7, 1),
               "dil_conv_3x3": (3, 2), "dil_conv_5x5": (5, 2)}
    if name in kernels:
        k, dilation = kernels[name]
        once = [(k, k, C, C, C, stride), (1, 1, C, C, 1, 1)]          # depthwise, pointwise
        layers = once + [(k, k, C, C, C, 1), (1, 1, C, C, 1, 1)] if name.startswith("sep") else once
        return _conv_costs(layers, H, W)
    if name == "nor_conv_1x1":
        return _conv_costs([(1, 1, C, C, 1, stride)], H, W)
    if name == "nor_conv_3x3":
        return _conv_costs([(3, 3, C, C, 1, stride)], H, W)
    if name == "conv_7x1_1x7":
        return _conv_costs([(1, 7, C, C, 1, 1), (7, 1, C, C, 1, stride)], H, W)
    raise ValueError(f"no resource cost formula for operation {name!r}")


def cell_costs(model, image_size: int) -> List[Tuple[str, torch.Tensor]]:
    """Per cell of a :class:`~pynas.nn.SearchNetwork` on ``image_size`` inputs, in
    order: (cell type, ``[3, E, K]`` float64 params, FLOPs and MAC of every op)."""
    ops = model.arch.ops
    out = []
    H = image_size
    for cell in model.cells:
        cell_type = "reduce" if cell.reduction else "normal"
        C = cell.preprocess1.body[0].out_channels
        table = torch.zeros(3, cell.num_edges, len(ops), dtype=torch.float64)
        for e, (j, _) in enumerate(cell.edge_list):
            stride = 2 if cell.reduction and j < cell.inputs else 1
            H_in = H if j < cell.inputs else (math.ceil(H / 2) if cell.reduction else H)
            for k, name in enumerate(ops):
                if k in cell.edges[e].materialised or name == "none":
                    table[:, e, k] = torch.tensor(op_costs(name, C, stride, H_in, H_in), dtype=torch.float64)
        out.append((cell_type, table))
        if cell.reduction:
            H = math.ceil(H / 2)
    return out


def network_costs(model, image_size: int) -> Dict[str, torch.Tensor]:
    """Per cell type, ``[3, E, K]`` (params, FLOPs, MAC) summed over the cells of
    that type of a :class:`~pynas.nn.SearchNetwork` on ``image_size`` inputs."""
    tables: Dict[str, torch.Tensor] = {}
    for cell_type, table in cell_costs(model, image_size):
        tables[cell_type] = tables.get(cell_type, 0) + table
    return tables


# λ of each level. SNAS names three levels but publishes no λ for them (nor does its
# code): these are pynas' choices for the linear form. "log" is the public code's
# penalty with the λ of its README.
PRESETS = {"mild": 0.01, "moderate": 0.03, "aggressive": 0.1, "log": 1.5e-3}
FORMS = ("linear", "log")
ESTIMATORS = ("reparameterised", "analytic", "policy")


@dataclass
class ResourceConstraint:
    """λ·E_Z[C(Z)] over the cells of a supernet, in one of two forms:

    - ``linear`` (Eq. 10 with App. F's criteria): C(Z) = Σ_cells Σ_edges Z·C(O),
      each criterion divided by the network's largest possible value of it (the
      most expensive op on every edge), mixed by ``mix``;
    - ``log`` (SNAS' public code): per cell and edge, the mean over the three
      criteria of log(max(Σ_k Z_k·C_k, 1)); summed over a cell's edges, averaged
      over the cells of each type, summed over the types.

    Gradient estimators of E_Z[C(Z)] w.r.t. α:

    - ``reparameterised``: C(Z) through the network's own soft Gumbel sample Z of
      the step (as SNAS' code), or a fresh one when none is given;
    - ``analytic``: C(softmax(α)), exact in the linear form;
    - ``policy``: the score function of Eq. 11, C(Z)·∇ log p(Z) with Z one-hot
      drawn once per cell type.
    """

    weight: float = PRESETS["mild"]
    estimator: str = "reparameterised"
    mix: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    form: str = "linear"

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"cost estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.form not in FORMS:
            raise ValueError(f"cost form must be one of {FORMS}, got {self.form!r}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"resource constraint weight must be a finite number >= 0, got {self.weight}")

    @classmethod
    def named(cls, level: str, estimator: str = "reparameterised", weight: float = None) -> "ResourceConstraint":
        """A constraint level of :data:`PRESETS` (``weight`` overrides its λ)."""
        if level not in PRESETS:
            raise ValueError(f"--constraint must be one of none, {', '.join(PRESETS)}; got {level!r}")
        return cls(PRESETS[level] if weight is None else weight, estimator,
                   form="log" if level == "log" else "linear")

    def tables(self, model, image_size: int) -> List[Tuple[str, torch.Tensor]]:
        """Per cell: (cell type, its cost table), ``[E, K]`` mixed and normalised
        (linear) or ``[3, E, K]`` raw (log)."""
        cells = cell_costs(model, image_size)
        if self.form == "log":
            return [(t, c.float()) for t, c in cells]
        raw = network_costs(model, image_size)
        scale = sum(t.max(-1).values.sum(-1) for t in raw.values()).clamp_min(1e-12)  # [3]
        mix = torch.tensor(self.mix, dtype=torch.float64)
        return [(t, ((c / scale[:, None, None]) * mix[:, None, None]).sum(0).float()) for t, c in cells]

    def edge_costs(self, z: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``[E]``: each edge's cost in one cell under edge weights ``z`` ``[E, K]``."""
        if self.form == "linear":
            return (z * table).sum(-1)
        per_criterion = (z.unsqueeze(0) * table).sum(-1)  # [3, E]
        # Below 1 the code's floor applies (no gradient there): log 1 = 0 for `none`.
        return per_criterion.clamp_min(1.0).log().mean(0)

    def per_type(self, weights: Sequence[torch.Tensor], tables: List[Tuple[str, torch.Tensor]]
                 ) -> Dict[str, torch.Tensor]:
        """Per cell type, ``[E]`` costs over its cells: summed (linear), averaged (log)."""
        costs: Dict[str, List[torch.Tensor]] = {}
        for z, (cell_type, table) in zip(weights, tables):
            costs.setdefault(cell_type, []).append(self.edge_costs(z, table.to(z.device)))
        reduce = torch.mean if self.form == "log" else torch.sum
        return {t: reduce(torch.stack(v), 0) for t, v in costs.items()}

    @staticmethod
    def _fresh_samples(arch, types: Sequence[str]) -> List[torch.Tensor]:
        """A soft Gumbel sample per cell type, one per entry of ``types``. Drawn in
        the architecture's cell-type order: a set's order changes with
        PYTHONHASHSEED, and with it which type would get which draw of the generator."""
        fresh = {}
        for t in arch.cell_types:
            if t in types:
                logits = arch.alphas[t].masked_fill(~arch.mask(t), float("-inf"))
                z = gumbel_softmax(logits, tau=arch.temperature, generator=arch.generator)
                fresh[t] = torch.where(arch.mask(t), z, torch.zeros_like(z))
        return [fresh[t] for t in types]

    def penalty(self, arch, tables: List[Tuple[str, torch.Tensor]],
                samples: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """λ·C for the step; ``samples``: the network's own edge weights per cell
        (``[E, K]`` or per input sample ``[B, E, K]``), used by ``reparameterised``."""
        types = [t for t, _ in tables]
        if self.estimator == "analytic":
            probs = {t: arch.probabilities(t) for t in set(types)}
            return self.weight * sum(c.sum() for c in self.per_type([probs[t] for t in types], tables).values())
        if self.estimator == "reparameterised":
            if samples is None:
                samples = self._fresh_samples(arch, types)
            samples = [z.mean(0) if z.dim() == 3 else z for z in samples]
            return self.weight * sum(c.sum() for c in self.per_type(samples, tables).values())
        # policy: value C(Z), gradient C(Z)·∇α log p(Z) per edge (Eq. 11: the cost decomposes
        # over edges), Z one-hot drawn once per cell type
        z, log_p = {}, {}
        for t in sorted(set(types)):
            mask = arch.mask(t)
            logits = arch.alphas[t].masked_fill(~mask, float("-inf"))
            z[t] = gumbel_softmax(logits, tau=1.0, hard=True, generator=arch.generator).detach()
            log_p[t] = (z[t] * torch.log_softmax(logits, -1).masked_fill(~mask, 0.0)).sum(-1)  # [E]
        costs = self.per_type([z[t] for t in types], tables)
        return self.weight * sum((c.detach() * (1 + log_p[t] - log_p[t].detach())).sum() for t, c in costs.items())
