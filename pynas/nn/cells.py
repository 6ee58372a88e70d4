"""Search cells: a DAG whose edges are MixedOps (DARTS Sec. 2; wiring paper Fig. 2)."""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from ..functional import mixed_sum
from .mixed_op import MixedOp
from .ops import FactorizedReduce, ReLUConvBN


def cell_edges(steps: int, inputs: int = 2) -> List[tuple]:
    """``(source, target)`` of every edge, in the order α rows use: node by node,
    sources ascending. Nodes ``0..inputs-1`` are the cell inputs."""
    return [(j, inputs + i) for i in range(steps) for j in range(inputs + i)]


def edge_name(source: int, target: int) -> str:
    return f"{source}->{target}"


class SearchCell(nn.Module):
    """A normal or reduction cell of a supernet.

    Inputs are the outputs of the previous two cells (or one, ``inputs=1``),
    preprocessed by a 1x1 ReLU-Conv-BN (a factorized reduce after a reduction
    cell); each intermediate node sums all its predecessors through MixedOps, and
    all incoming edges of a node are combined in a single ``mixed_sum``; the
    output concatenates the ``concat`` nodes (default: the last ``multiplier``).
    """

    def __init__(self, steps: int, multiplier: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, ops: Sequence[str], available: Optional[torch.Tensor] = None,
                 inputs: int = 2, concat: Optional[Sequence[int]] = None):
        super().__init__()
        if inputs not in (1, 2):
            raise ValueError(f"SearchCell: `inputs` must be 1 or 2, got {inputs}")
        if steps < 1:
            raise ValueError(f"SearchCell: `steps` must be >= 1, got {steps}")
        self.reduction, self.steps, self.inputs = reduction, steps, inputs
        self.concat = list(concat) if concat is not None else list(range(inputs + steps - multiplier, inputs + steps))
        if not self.concat or any(not 0 <= n < inputs + steps for n in self.concat):
            raise ValueError(f"SearchCell: `concat` {self.concat} must name nodes in [0, {inputs + steps})")
        self.preprocess0 = None
        if inputs == 2:
            self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                                else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edge_list = cell_edges(steps, inputs)
        self.edge_names = [edge_name(j, i) for j, i in self.edge_list]
        self.edges = nn.ModuleList([
            MixedOp(C, 2 if reduction and j < inputs else 1, ops, affine=False,
                    available=None if available is None else available[e].tolist())
            for e, (j, _) in enumerate(self.edge_list)
        ])

    @property
    def num_edges(self) -> int:
        return len(self.edge_list)

    def forward(self, s0, s1, weights: torch.Tensor, active: Optional[Sequence[Optional[Sequence[int]]]] = None):
        """``weights``: ``[E, K]`` or, per sample, ``[B, E, K]``; ``active``: per
        edge, the columns to run (None: every available one)."""
        states = [self.preprocess1(s1)] if self.inputs == 1 else [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(self.steps):
            outputs, node_weights = [], []
            for h in states:
                out, w = self.edges[e].candidates(h, weights[..., e, :], None if active is None else active[e])
                outputs += out
                node_weights.append(w)
                e += 1
            if outputs:
                states.append(mixed_sum(outputs, torch.cat(node_weights, dim=-1)))
            else:  # every incoming edge is `none` or removed: zeros, via the edge from input 0
                states.append(self.edges[e - len(states)].zeros(states[0]))
        return torch.cat([states[n] for n in self.concat], dim=1)
