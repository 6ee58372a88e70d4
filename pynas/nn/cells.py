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

    ``aux_skip``: DARTS-' auxiliary skip connection on every edge, outside the
    relaxation: edge = Σ_k w_k·op_k(x) + β·aux(x), β given to :meth:`forward` as
    ``aux_weight`` (Meituan-AutoML/DARTS- src/search/model_search.py ``MixedOp``,
    lines 17-45: added in training and evaluation alike). ``aux_skips[e]`` is edge
    e's aux: the identity on a stride-1 edge, ``FactorizedReduce(C, C,
    affine=False)`` (learnable, a weight) on a stride-2 one (a reduction cell's edges
    from its inputs). With partial channels it sees the operated C/K channels, as
    confopt's PartialConnector adds it (so ``FactorizedReduce(C/K, C/K)``).
    """

    def __init__(self, steps: int, multiplier: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, ops: Sequence[str], available: Optional[torch.Tensor] = None,
                 inputs: int = 2, concat: Optional[Sequence[int]] = None, partial_channels: int = 1,
                 aux_skip: bool = False):
        super().__init__()
        if not isinstance(aux_skip, bool):
            raise ValueError(f"SearchCell: `aux_skip` must be True or False, got {aux_skip!r}")
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
        self.aux_skips = self._aux_skips(C // partial_channels) if aux_skip else None
        self.cost_recorder = None
        self.state_observer = None

    def _aux_skips(self, C: int) -> nn.ModuleList:
        """DARTS-' aux module of each edge, at the edge's stride, on ``C`` channels."""
        if any(edge.stride == 2 for edge in self.edges) and C % 2:
            raise ValueError(f"SearchCell: `aux_skip` on a reduction cell needs an even number of channels on its "
                             f"edges (a factorized reduce halves them into two convs), got {C}")
        return nn.ModuleList([FactorizedReduce(C, C, affine=False) if edge.stride == 2 else nn.Identity()
                              for edge in self.edges])

    @property
    def num_edges(self) -> int:
        return len(self.edge_list)

    def _aux_term(self, e: int, x: torch.Tensor, edge_active, beta, weights: torch.Tensor):
        """Edge ``e``'s aux output on ``x`` and its weight β shaped as one more column
        of ``weights``' node weights (``[1]``, or ``[B, 1]`` for per-sample ``[B, E, K]``
        weights); None for a cell without aux or an edge removed by the mask (no
        operation left to run, not even `none`: the edge is gone from the supernet,
        aux included, as the partial-channel bypass of such an edge is)."""
        if self.aux_skips is None or (edge_active is not None and not edge_active):
            return None
        beta = beta.to(weights.dtype).reshape(1)
        if weights.dim() == 3:
            beta = beta.expand(weights.size(0), 1)
        return self.aux_skips[e](x), beta

    def _check_aux_weight(self, aux_weight):
        if self.aux_skips is not None and aux_weight is None:
            raise ValueError("SearchCell: `aux_weight` (DARTS-' β) is needed by a cell built with aux_skip=True")
        if self.aux_skips is None and aux_weight is not None:
            raise ValueError("SearchCell: `aux_weight` given to a cell built without aux_skip")
        if aux_weight is not None and (not isinstance(aux_weight, torch.Tensor) or aux_weight.numel() != 1):
            raise ValueError(f"SearchCell: `aux_weight` must be a one-element tensor, got {aux_weight!r}")

    def forward(self, s0, s1, weights: torch.Tensor, active: Optional[Sequence[Optional[Sequence[int]]]] = None,
                edge_weights: Optional[torch.Tensor] = None, aux_weight: Optional[torch.Tensor] = None):
        """``weights``: ``[E, K]`` or, per sample, ``[B, E, K]``; ``active``: per
        edge, the columns to run (None: every available one); ``edge_weights``:
        PC-DARTS' ``[E]`` edge normalisation (None: none); ``aux_weight``: DARTS-'
        β, a 0-d tensor, for a cell with ``aux_skip`` (None otherwise).

        With ``aux_skip`` every edge's aux output is one more input of its node's
        ``mixed_sum``, at weight β; the edge costs (``cost_recorder``) cover the
        operations only. An edge removed by the mask (``active[e]`` empty) passes
        no aux; an edge left with only `none` still passes it (it is in the
        supernet: DARTS- adds the aux whatever the weights)."""
        self._check_aux_weight(aux_weight)
        states = [self.preprocess1(s1)] if self.inputs == 1 else [self.preprocess0(s0), self.preprocess1(s1)]
        if self.partial_channels > 1 or edge_weights is not None:
            return self._forward_partial(states, weights, active, edge_weights, aux_weight)
        e = 0
        for _ in range(self.steps):
            outputs, node_weights, columns, aux_outputs, aux_weights = [], [], [], [], []
            for h in states:
                edge_active = None if active is None else active[e]
                out, w = self.edges[e].candidates(h, weights[..., e, :], edge_active)
                outputs += out
                node_weights.append(w)
                aux = self._aux_term(e, h, edge_active, aux_weight, weights)
                if aux is not None:
                    aux_outputs.append(aux[0])
                    aux_weights.append(aux[1])
                if self.cost_recorder is not None:
                    columns += [(e, k) for k in self._run_columns(e, edge_active)]
                e += 1
            if outputs or aux_outputs:
                node_weights = torch.cat(node_weights, dim=-1)
                node = mixed_sum(outputs + aux_outputs, torch.cat([node_weights, *aux_weights], dim=-1))
                if self.cost_recorder is not None and outputs and node.requires_grad:
                    node.register_hook(self._cost_hook(outputs, node_weights, columns))
                states.append(node)
            else:  # every incoming edge is `none` or removed: zeros, via the edge from input 0
                states.append(self.edges[e - len(states)].zeros(states[0]))
        if self.state_observer is not None:
            self.state_observer(self, states)
        return torch.cat([states[n] for n in self.concat], dim=1)

    def _forward_partial(self, states, weights, active, edge_weights, aux_weight):
        """PC-DARTS' cell (model_search.py ``Cell``, ``MixedOp``): node = Σ_e β̂_e ·
        shuffle(cat[Σ_k w_ek op_ek(x_e[:C/K]), bypass(x_e[C/K:])]). The shuffle is
        one permutation for every edge of the node, so the node is computed as
        shuffle(cat[one mixed_sum of every edge's operations with weights β̂_e·w_ek,
        one mixed_sum of the bypassed channels with weights β̂_e]): two fused sums
        per node instead of one per edge. A removed edge (no operation left, not even
        `none`) passes nothing; an edge left with only `none` still passes its bypass.
        DARTS-' aux of an edge sees the operated channels x_e[:C/K] and joins the
        operated mixed_sum at weight β̂_e·β (confopt's PartialConnector adds it to the
        operated part, before the shuffle); passed or not as the bypass is."""
        K = self.partial_channels
        e = 0
        for _ in range(self.steps):
            outputs, node_weights, columns, bypassed, bypass_weights = [], [], [], [], []
            aux_outputs, aux_weights = [], []
            for h in states:
                edge, edge_active = self.edges[e], None if active is None else active[e]
                out, w = edge.candidates(h, weights[..., e, :], edge_active)
                if edge_weights is not None:
                    w = w * edge_weights[e]
                outputs += out
                node_weights.append(w)
                beta = aux_weight if aux_weight is None or edge_weights is None else aux_weight * edge_weights[e]
                aux = self._aux_term(e, edge.operated(h), edge_active, beta, weights)
                if aux is not None:
                    aux_outputs.append(aux[0])
                    aux_weights.append(aux[1])
                if self.cost_recorder is not None:
                    columns += [(e, k) for k in self._run_columns(e, edge_active)]
                if K > 1 and (edge_active is None or edge_active):
                    bypassed.append(edge.bypass(h))
                    bypass_weights.append(edge_weights[e:e + 1] if edge_weights is not None
                                          else torch.ones(1, dtype=weights.dtype, device=weights.device))
                e += 1
            first = self.edges[e - len(states)]  # an edge from input 0: the node's shape
            if outputs or aux_outputs:
                node_weights = torch.cat(node_weights, dim=-1)
                operated = mixed_sum(outputs + aux_outputs, torch.cat([node_weights, *aux_weights], dim=-1))
                if self.cost_recorder is not None and outputs and operated.requires_grad:
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
