"""Search cells: a DAG whose edges are MixedOps (DARTS Sec. 2; wiring paper Fig. 2)."""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from ..functional import edge_cost, mixed_sum
from .mixed_op import MixedOp
from .ops import FactorizedReduce, ReLUConvBN
from .partial import shuffled_concat


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

    ``cost_recorder``: None, or a callable ``recorder(cell, costs)`` that then
    receives, during each backward pass, one ``[E, K]`` float64 tensor per node
    holding the per-edge, per-operation costs ``w_k · Σ ∂L/∂X ⊙ op_k(x)`` of the
    node's incoming edges (wiring paper Eq. 4-5; see :mod:`pynas.analysis.edge_cost`).
    ``state_observer``: None, or a callable ``observer(cell, states)`` that receives
    the cell's states (preprocessed inputs, then the nodes) after each forward
    (see :mod:`pynas.analysis.grad_correlation`).

    ``partial_channels`` K > 1: PC-DARTS' partial channel connections on every
    edge (:class:`MixedOp`); see :meth:`forward` for how a node is summed.
    """

    def __init__(self, steps: int, multiplier: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, ops: Sequence[str], available: Optional[torch.Tensor] = None,
                 inputs: int = 2, concat: Optional[Sequence[int]] = None, partial_channels: int = 1):
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
        self.partial_channels = partial_channels
        self.edges = nn.ModuleList([
            MixedOp(C, 2 if reduction and j < inputs else 1, ops, affine=False,
                    available=None if available is None else available[e].tolist(),
                    partial_channels=partial_channels)
            for e, (j, _) in enumerate(self.edge_list)
        ])
        self.cost_recorder = None
        self.state_observer = None

    @property
    def num_edges(self) -> int:
        return len(self.edge_list)

    def forward(self, s0, s1, weights: torch.Tensor, active: Optional[Sequence[Optional[Sequence[int]]]] = None,
                edge_weights: Optional[torch.Tensor] = None):
        """``weights``: ``[E, K]`` or, per sample, ``[B, E, K]``; ``active``: per
        edge, the columns to run (None: every available one); ``edge_weights``:
        PC-DARTS' ``[E]`` edge normalisation (None: none)."""
        states = [self.preprocess1(s1)] if self.inputs == 1 else [self.preprocess0(s0), self.preprocess1(s1)]
        if self.partial_channels > 1 or edge_weights is not None:
            return self._forward_partial(states, weights, active, edge_weights)
        e = 0
        for _ in range(self.steps):
            outputs, node_weights, columns = [], [], []
            for h in states:
                edge_active = None if active is None else active[e]
                out, w = self.edges[e].candidates(h, weights[..., e, :], edge_active)
                outputs += out
                node_weights.append(w)
                if self.cost_recorder is not None:
                    columns += [(e, k) for k in self._run_columns(e, edge_active)]
                e += 1
            if outputs:
                node_weights = torch.cat(node_weights, dim=-1)
                node = mixed_sum(outputs, node_weights)
                if self.cost_recorder is not None and node.requires_grad:
                    node.register_hook(self._cost_hook(outputs, node_weights, columns))
                states.append(node)
            else:  # every incoming edge is `none` or removed: zeros, via the edge from input 0
                states.append(self.edges[e - len(states)].zeros(states[0]))
        if self.state_observer is not None:
            self.state_observer(self, states)
        return torch.cat([states[n] for n in self.concat], dim=1)

    def _forward_partial(self, states, weights, active, edge_weights):
        """PC-DARTS' cell (model_search.py ``Cell``, ``MixedOp``): node = Σ_e β̂_e ·
        shuffle(cat[Σ_k w_ek op_ek(x_e[:C/K]), bypass(x_e[C/K:])]). The shuffle is
        one permutation for every edge of the node, so the node is computed as
        shuffle(cat[one mixed_sum of every edge's operations with weights β̂_e·w_ek,
        one mixed_sum of the bypassed channels with weights β̂_e]): two fused sums
        per node instead of one per edge. A removed edge (no operation left, not even
        `none`) passes nothing; an edge left with only `none` still passes its bypass."""
        K = self.partial_channels
        e = 0
        for _ in range(self.steps):
            outputs, node_weights, columns, bypassed, bypass_weights = [], [], [], [], []
            for h in states:
                edge, edge_active = self.edges[e], None if active is None else active[e]
                out, w = edge.candidates(h, weights[..., e, :], edge_active)
                if edge_weights is not None:
                    w = w * edge_weights[e]
                outputs += out
                node_weights.append(w)
                if self.cost_recorder is not None:
                    columns += [(e, k) for k in self._run_columns(e, edge_active)]
                if K > 1 and (edge_active is None or edge_active):
                    bypassed.append(edge.bypass(h))
                    bypass_weights.append(edge_weights[e:e + 1] if edge_weights is not None
                                          else torch.ones(1, dtype=weights.dtype, device=weights.device))
                e += 1
            first = self.edges[e - len(states)]  # an edge from input 0: the node's shape
            if outputs:
                node_weights = torch.cat(node_weights, dim=-1)
                operated = mixed_sum(outputs, node_weights)
                if self.cost_recorder is not None and operated.requires_grad:
                    # The operated channels enter the node through the shuffle alone: ∂L/∂operated is the
                    # node's gradient on them, what Eq. 4-5 multiply the outputs by.
                    operated.register_hook(self._cost_hook(outputs, node_weights, columns))
            else:
                operated = first.zeros(first.operated(states[0]))
            if K == 1:
                states.append(operated)
            elif bypassed:
                states.append(shuffled_concat(operated, mixed_sum(bypassed, torch.cat(bypass_weights)), K))
            else:  # every incoming edge removed
                states.append(first.zeros(states[0]))
        if self.state_observer is not None:
            self.state_observer(self, states)
        return torch.cat([states[n] for n in self.concat], dim=1)

    def _run_columns(self, e: int, edge_active) -> List[int]:
        """The α columns whose outputs ``MixedOp.candidates`` returns, in its order."""
        materialised = self.edges[e].materialised
        return list(materialised) if edge_active is None else [k for k in edge_active if k in materialised]

    def _cost_hook(self, outputs, node_weights, columns):
        """A hook on a node's output. Every incoming edge's output X_e enters the
        node as a plain sum, so ∂L/∂X_e = ∂L/∂node, and one fused ``edge_cost``
        over the node's candidate outputs gives ``Σ ∂L/∂node ⊙ op_k(x)`` for all its
        (edge, op) pairs at once; times w_k these are the costs of Eq. 4-5."""
        recorder = self.cost_recorder  # the one set at forward time receives this pass's costs
        outputs = [o.detach() for o in outputs]
        node_weights = node_weights.detach()
        edges = torch.tensor([e for e, _ in columns])
        ops = torch.tensor([k for _, k in columns])
        K = len(self.edges[0].names)

        def hook(grad):
            per_sample = node_weights.dim() == 2  # [B, n]: one weight row per input sample
            cost = edge_cost(grad, outputs, per_sample).double() * node_weights.double()
            if per_sample:
                cost = cost.sum(0)
            costs = torch.zeros(self.num_edges, K, dtype=torch.float64, device=cost.device)
            costs[edges.to(cost.device), ops.to(cost.device)] = cost
            recorder(self, costs)

        return hook
