"""Discrete evaluation networks built from a genotype (DARTS' NetworkCIFAR):
stem, cells, auxiliary head at 2/3 depth, drop-path."""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..genotype import Genotype
from .layout import check_channels_last, network_input
from .ops import FactorizedReduce, Identity, ReLUConvBN, build_op


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zeroes whole samples of a path with probability ``drop_prob`` (scaling the rest)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


def live_nodes(nodes: List[List[Tuple[str, int]]], concat) -> Tuple[List[List[Tuple[str, int]]], List[int]]:
    """Drops nodes left without inputs (edge-all cells may have them), and the
    edges from them, recursively; returns the kept edges and concat nodes."""
    alive = {0, 1}
    kept = []
    for k, edges in enumerate(nodes):
        live = [(op, j) for op, j in edges if j in alive]
        if live:
            alive.add(k + 2)
        kept.append(live)
    return kept, [i for i in concat if i in alive]


class EvalCell(nn.Module):
    def __init__(self, genotype: Genotype, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        cell_type = "reduce" if reduction else "normal"
        concat = getattr(genotype, f"{cell_type}_concat")
        nodes, self.concat = live_nodes(genotype.nodes(cell_type), concat)
        if not self.concat:
            # e.g. FairDARTS' threshold rule when no edge of the cell passes the threshold
            raise ValueError(f"genotype {cell_type} cell has no output: no node of {cell_type}_concat {list(concat)} "
                             f"has an input (every edge to it is `none` or comes from a node without input)")
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        self.nodes = [[j for _, j in edges] for edges in nodes]
        self.ops = nn.ModuleList([
            nn.ModuleList([build_op(op, C, 2 if reduction and j < 2 else 1, affine=True) for op, j in edges])
            for edges in nodes
        ])
        self.multiplier = len(self.concat)

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for inputs, ops in zip(self.nodes, self.ops):
            if not inputs:
                states.append(None)
                continue
            total = 0
            for j, op in zip(inputs, ops):
                h = op(states[j])
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS' CIFAR auxiliary classifier on 8x8 features."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # its input is the trunk's, still used by later cells
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class EvalNetwork(nn.Module):
    """A child network of ``genotype``: ``forward`` returns ``(logits, aux_logits)``
    (``aux_logits`` is None unless training with ``auxiliary=True``). ``channels_last``:
    the layout it computes in (None: see :func:`pynas.nn.layout.network_input`)."""

    def __init__(self, genotype: Genotype, C: int = 36, num_classes: int = 10, layers: int = 20,
                 auxiliary: bool = True, stem_multiplier: int = 3, in_channels: int = 3, drop_path_prob: float = 0.0,
                 channels_last: Optional[bool] = None):
        super().__init__()
        self.drop_path_prob = drop_path_prob
        self.C = C
        self.channels_last = check_channels_last(channels_last, C, "EvalNetwork")
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        self.aux_index: Optional[int] = None
        reduction_prev = False
        C_aux = None
        for i in range(layers):
            reduction = layers >= 3 and i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                self.aux_index, C_aux = i, C_p
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary and C_aux is not None else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x):
        aux = None
        s0 = s1 = self.stem(network_input(x, self.channels_last, self.C))
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return self.classifier(self.global_pooling(s1).flatten(1)), aux
