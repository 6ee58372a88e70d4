"""SNAS' locally decomposable resource constraint (Sec. 2.4, App. F).

Each candidate operation of each edge gets three costs computed from shapes
alone, never by running it: parameter size (Eq. 35), FLOPs (Eq. 36, 38, 39)
and memory access cost (Eq. 37, 40), summed over the operation's convolutions.
A network's cost of an architecture Z is C(Z) = Σ_edges Z_e · C(O_e) (Eq. 10);
since α is shared by all cells of a type, a cell type's ``[E, K]`` cost table
sums its cells. :class:`ResourceConstraint` adds λ·E_Z[C(Z)] to the loss with
one of three estimators of its gradient.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from ..functional import gumbel_softmax

Conv = Tuple[int, int, int, int, int, int]  # (f, k, I, O, groups, stride)


def _conv_costs(layers: List[Conv], H: int, W: int) -> Tuple[float, float, float]:
    """(params, FLOPs, MAC) of a chain of convolutions on an H x W input."""
    params = flops = mac = 0.0
    for f, k, I, O, g, stride in layers:
        H, W = math.ceil(H / stride), math.ceil(W / stride)
        p = f * k * I * O / g                      # Eq. 35
        params += p
        flops += H * W * p                         # Eq. 36
        mac += H * W * (I + O) + p                 # Eq. 37
    return params, flops, mac


def op_costs(name: str, C: int, stride: int, H: int, W: int) -> Tuple[float, float, float]:
    """(parameter size, FLOPs, MAC) of operation ``name`` with C channels on an
    H x W input (App. F)."""
    Ho, Wo = math.ceil(H / stride), math.ceil(W / stride)
    if name == "none":
        return 0.0, 0.0, 0.0
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return 0.0, Ho * Wo * 3 * 3 * C * C, Ho * Wo * (C + C)      # Eq. 38, 40
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


def network_costs(model, image_size: int) -> Dict[str, torch.Tensor]:
    """Per cell type, ``[3, E, K]`` (params, FLOPs, MAC) summed over the cells of
    that type of a :class:`~pynas.nn.SearchNetwork` on ``image_size`` inputs."""
    ops = model.arch.ops
    tables: Dict[str, torch.Tensor] = {}
    H = image_size
    for cell in model.cells:
        cell_type = "reduce" if cell.reduction else "normal"
        C = cell.preprocess1.body[0].out_channels
        table = tables.setdefault(cell_type, torch.zeros(3, cell.num_edges, len(ops), dtype=torch.float64))
        for e, (j, _) in enumerate(cell.edge_list):
            stride = 2 if cell.reduction and j < cell.inputs else 1
            H_in = H if j < cell.inputs else (math.ceil(H / 2) if cell.reduction else H)
            for k, name in enumerate(ops):
                if k in cell.edges[e].materialised or name == "none":
                    table[:, e, k] += torch.tensor(op_costs(name, C, stride, H_in, H_in), dtype=torch.float64)
        if cell.reduction:
            H = math.ceil(H / 2)
    return tables


PRESETS = {"mild": 0.01, "moderate": 0.03, "aggressive": 0.1}
ESTIMATORS = ("reparameterised", "analytic", "policy")


@dataclass
class ResourceConstraint:
    """λ·E_Z[C(Z)] with C mixing normalised parameter size, FLOPs and MAC.

    Each criterion is divided by the network's largest possible value of it
    (the most expensive op on every edge), so C(Z) is in [0, Σ mix]. Gradient
    estimators of E_Z[C(Z)] w.r.t. α:

    - ``reparameterised``: C(Z) with Z a soft Gumbel sample (through Z);
    - ``analytic``: Σ softmax(α)·C, the exact expectation;
    - ``policy``: the score function of Eq. 11, C(Z)·∇ log p(Z) with Z one-hot.
    """

    weight: float = PRESETS["mild"]
    estimator: str = "reparameterised"
    mix: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"cost estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.weight < 0:
            raise ValueError(f"resource constraint weight must be >= 0, got {self.weight}")

    def tables(self, model, image_size: int) -> Dict[str, torch.Tensor]:
        """Per cell type, the mixed normalised ``[E, K]`` cost table."""
        raw = network_costs(model, image_size)
        scale = sum(t.max(-1).values.sum(-1) for t in raw.values()).clamp_min(1e-12)  # [3]
        mix = torch.tensor(self.mix, dtype=torch.float64)
        return {c: ((t / scale[:, None, None]) * mix[:, None, None]).sum(0).float() for c, t in raw.items()}

    def penalty(self, arch, tables: Dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for cell_type, table in tables.items():
            alpha, mask = arch.alphas[cell_type], arch.mask(cell_type)
            table = table.to(alpha.device)
            logits = alpha.masked_fill(~mask, float("-inf"))
            if self.estimator == "analytic":
                total = total + (arch.probabilities(cell_type) * table).sum()
            elif self.estimator == "reparameterised":
                z = gumbel_softmax(logits, tau=arch.temperature, generator=arch.generator)
                total = total + (torch.where(mask, z, torch.zeros_like(z)) * table).sum()
            else:  # policy: value C(Z), gradient C(Z)·∇α log p(Z) (Z one-hot, Eq. 11)
                z = gumbel_softmax(logits, tau=1.0, hard=True, generator=arch.generator).detach()
                cost = (z * table).sum(-1)
                log_p = (z * torch.log_softmax(logits, -1).masked_fill(~mask, 0.0)).sum(-1)
                total = total + (cost + cost * (log_p - log_p.detach())).sum()
        return self.weight * total
