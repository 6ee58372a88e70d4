"""Supernets: the DARTS CIFAR search network (any C, depth, nodes, classes,
input channels or image size) and a network of the wiring paper's minimal cells."""
import contextlib
import math
import numbers
from typing import Dict, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..arch import Architecture, EdgeWeights
from .cells import SearchCell, cell_edges
from .layout import check_channels_last, network_input
from .ops import recomputing, saves_recomputed
from .partial import check_partial_channels
from .spaces import get_space


class SearchNetwork(nn.Module):
    """DARTS' supernet: a 3x3 conv stem with ``stem_multiplier * C`` channels,
    ``layers`` cells with reductions at 1/3 and 2/3 of the depth (doubling the
    channels), global average pooling and a linear classifier.

    The architecture (``self.arch``, an :class:`~pynas.arch.Architecture`) holds α
    apart from the weights: optimise :meth:`weight_parameters` and
    :meth:`arch_parameters` separately. ``channels_last`` is the layout it
    computes in (None: channels-last for float CPU inputs when C >= 8, see
    :func:`pynas.nn.layout.network_input`); ``classifier_bias=False`` makes the
    logits linear in the last cell's output (wiring paper, Thm. 2).
    ``checkpoint_cells``: in training, each cell keeps only its inputs for
    backward and is computed again there (``torch.utils.checkpoint``, the RNG
    state restored so `noise` draws the same samples; BatchNorm running
    statistics updated once): activation memory of about one cell, for a
    second forward of every cell.
    ``partial_channels`` K > 1: PC-DARTS (partial channel connections on every
    edge, and β's edge normalisation in a new ``arch``); K must divide C.
    ``edge_normalisation``: β in a new ``arch`` (True), none (False: e.g. DrNAS'
    partial channels, whose cell sums its edges unweighted, xiangning-chen/DrNAS
    DARTS-space/model_search.py:87-98), or None: β exactly with partial channels.
    ``aux_skip``: DARTS-' auxiliary skip connection on every edge of every cell
    (:class:`~pynas.nn.SearchCell`, ``cell.aux_skips``), weighted by one β for the
    whole network: the 0-d buffer ``aux_weight`` (1.0 at first, DARTS-' ``--skip_beta``
    default), set by :meth:`set_aux_weight` (DARTS-' code sets it once per epoch,
    src/search/train_search.py:107-108). It is not part of α: :meth:`arch_parameters`
    is unchanged and the stride-2 aux modules' parameters are weight parameters.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, steps: int = 4,
                 multiplier: int = 4, stem_multiplier: int = 3, space="darts", in_channels: int = 3,
                 inputs: int = 2, relaxation: str = "softmax", arch: Optional[Architecture] = None,
                 channels_last: Optional[bool] = None, classifier_bias: bool = True, partial_channels: int = 1,
                 checkpoint_cells: bool = False, aux_skip: bool = False,
                 edge_normalisation: Optional[bool] = None, **arch_kwargs):
        super().__init__()
        self.C = C
        if not isinstance(aux_skip, bool):
            raise ValueError(f"SearchNetwork: `aux_skip` must be True or False, got {aux_skip!r}")
        self.aux_skip = aux_skip
        check_partial_channels(partial_channels, C, "SearchNetwork: `partial_channels`")
        # The operations' convolutions see C/K channels: what the channels-last choice depends on.
        self.min_channels = C // partial_channels
        self.channels_last = check_channels_last(channels_last, self.min_channels, "SearchNetwork")
        if layers < 1:
            raise ValueError(f"SearchNetwork: `layers` must be >= 1, got {layers}")
        space = get_space(space)
        num_edges = len(cell_edges(steps, inputs))
        if edge_normalisation not in (None, True, False):
            raise ValueError(f"SearchNetwork: `edge_normalisation` must be None, True or False, "
                             f"got {edge_normalisation!r}")
        if arch is not None and edge_normalisation is not None:
            raise ValueError("SearchNetwork: `edge_normalisation` configures a new `arch`; the given `arch` already "
                             "has or lacks β")
        if edge_normalisation is None:  # PC-DARTS Sec. 3.3: β comes with partial channels
            edge_normalisation = partial_channels > 1
        if arch is None and edge_normalisation:
            arch_kwargs = dict(arch_kwargs, edge_normalisation=True, inputs=inputs)
        self.arch = arch if arch is not None else Architecture(space, num_edges, ("normal", "reduce"),
                                                               relaxation=relaxation, **arch_kwargs)
        if self.arch.num_edges != num_edges:
            raise ValueError(f"SearchNetwork: `arch` has {self.arch.num_edges} edges per cell, cells have {num_edges}")
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = layers >= 3 and i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell_type = "reduce" if reduction else "normal"
            cell = SearchCell(steps, multiplier, C_pp, C_p, C_curr, reduction, reduction_prev, space.ops,
                              available=self.arch.mask(cell_type), inputs=inputs, partial_channels=partial_channels,
                              aux_skip=aux_skip)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, len(cell.concat) * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        # Without bias the logits are linear in the last cell's output, as the wiring paper's Thm. 2 assumes.
        self.classifier = nn.Linear(C_p, num_classes, bias=classifier_bias)
        self.record_edge_weights = False
        self.checkpoint_cells = bool(checkpoint_cells)
        self.last_edge_weights = []
        if aux_skip:  # a buffer: in the model's dtype and device, in its state dict, and updated in place
            self.register_buffer("aux_weight", torch.tensor(1.0))

    def set_aux_weight(self, value: float) -> None:
        """Sets DARTS-' β, the weight of every edge's auxiliary skip, in place (a
        captured CUDA graph reads the same buffer). ``value``: a finite number >= 0."""
        if not self.aux_skip:
            raise ValueError("SearchNetwork.set_aux_weight: the network has no auxiliary skip (build it with "
                             "aux_skip=True)")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"SearchNetwork.set_aux_weight: `value` must be a finite number >= 0, got {value!r}")
        with torch.no_grad():
            self.aux_weight.fill_(float(value))

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        arch = {id(p) for p in self.arch.parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        return self.arch.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared: Dict[str, EdgeWeights] = {}
        s0 = s1 = self.stem(network_input(x, self.channels_last, self.min_channels))
        # Each cell's edge weights of this forward, on request: the sample Z a resource constraint
        # differentiates through, as SNAS' code does.
        self.last_edge_weights = []
        if self.arch.sample_per != "cell":  # every cell type's sample at once: one host transfer under hard samples
            shared = self.arch.weights_of(self._cell_types(), batch_size=x.size(0))
        for cell in self._cell_runs():
            cell_type = "reduce" if cell.reduction else "normal"
            if self.arch.sample_per == "cell" or cell_type not in shared:
                shared[cell_type] = self.arch.weights(cell_type, batch_size=x.size(0))
            w = shared[cell_type]
            if self.record_edge_weights:
                self.last_edge_weights.append(w.weights)
            s0, s1 = s1, cell(s0, s1, w.weights, w.active, w.edge, self._aux_weight())
        return self.classifier(self.global_pooling(s1).flatten(1))

    def _aux_weight(self) -> Optional[torch.Tensor]:
        """β for the cells: the buffer with ``aux_skip``, else None."""
        return self.aux_weight if self.aux_skip else None

    def _cell_runs(self):
        """The cells as this forward calls them: inside ``saves_recomputed`` (so the
        operations' lean forms reach the nodes' ``mixed_sum``, see pynas.nn.ops) and,
        with ``checkpoint_cells`` in training, each through ``torch.utils.checkpoint``."""
        checkpoint = self.checkpoint_cells and self.training and torch.is_grad_enabled()
        if checkpoint:
            for cell in self.cells:
                if cell.cost_recorder is not None or cell.state_observer is not None:
                    raise ValueError("SearchNetwork: `checkpoint_cells` cannot run with a cell's cost_recorder or "
                                     "state_observer (its forward runs twice); set checkpoint_cells=False")
        return [_CellRun(cell, checkpoint) for cell in self.cells]

    def _cell_types(self):
        """The cell types in the order the cells use them first."""
        types = ["reduce" if cell.reduction else "normal" for cell in self.cells]
        return sorted(set(types), key=types.index)


class _CellRun:
    """One call of a cell within ``SearchNetwork.forward`` (see ``_cell_runs``)."""

    def __init__(self, cell: SearchCell, checkpoint: bool):
        self.cell, self.checkpoint = cell, checkpoint
        self.reduction = cell.reduction

    def __call__(self, *args):
        if not self.checkpoint:
            with saves_recomputed():
                return self.cell(*args)
        # Tensors go through checkpoint's arguments (kept, and detached for the recomputation);
        # the rest (the active columns) is the same in the recomputation.
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        others = {i: a for i, a in enumerate(args) if i not in tensors}

        def run(*tensor_args):
            full = {**others, **dict(zip(tensors, tensor_args))}
            with saves_recomputed():
                return self.cell(*(full[i] for i in range(len(args))))

        return torch.utils.checkpoint.checkpoint(run, *(args[i] for i in tensors), use_reentrant=False,
                                                 context_fn=_recomputing_context)


def _recomputing_context():
    """checkpoint's contexts: none for the forward, :func:`pynas.nn.ops.recomputing`
    (BatchNorm running statistics left alone) for the recomputation."""
    return contextlib.nullcontext(), recomputing()


def minimal_cell_network(C: int = 16, num_classes: int = 10, layers: int = 8, space="darts", **kwargs) -> SearchNetwork:
    """A supernet of the wiring paper's minimal cell (Fig. 2): two input nodes,
    two intermediate nodes, five edges; the output concatenates both nodes."""
    return SearchNetwork(C, num_classes, layers, steps=2, multiplier=2, space=space, **kwargs)


def forward_with_weights(model: SearchNetwork, x: torch.Tensor, cell_weights: Sequence[EdgeWeights]) -> torch.Tensor:
    """``model(x)`` with the given weights for each cell in place of the ones
    its architecture would draw (e.g. a uniformly sampled subnetwork)."""
    if len(cell_weights) != len(model.cells):
        raise ValueError(f"forward_with_weights: {len(cell_weights)} weights for {len(model.cells)} cells")
    s0 = s1 = model.stem(x)
    for cell, w in zip(model.cells, cell_weights):
        s0, s1 = s1, cell(s0, s1, w.weights, w.active, aux_weight=model._aux_weight())
    return model.classifier(model.global_pooling(s1).flatten(1))
