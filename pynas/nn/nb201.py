"""NAS-Bench-201's topology network (Single-DARTS App. B): a 3x3 stem, three
stages of ``N`` 4-node cells (6 edges, node i = sum over j < i of op(node j)),
residual reduction blocks between stages, then BN-ReLU, pooling and a linear
classifier. The same network is the supernet (MixedOp edges, α shared by all
cells) or, given an :class:`~pynas.genotype.NB201Genotype`, the child."""
from typing import Optional

import torch
import torch.nn as nn

from ..arch import Architecture
from ..functional import mixed_sum
from ..genotype import NB201Genotype
from .layout import check_channels_last, network_input
from .mixed_op import MixedOp
from .ops import ReLUConvBN, build_op
from .partial import check_partial_channels, shuffled_concat
from .spaces import NB201, get_space

NB201_NODES = 4
NB201_EDGES = [(j, i) for i in range(1, NB201_NODES) for j in range(i)]


class ResidualReduction(nn.Module):
    """NB201's ResNet basic block with stride 2 between stages."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1, affine)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x):
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class NB201SearchCell(nn.Module):
    """A supernet cell; ``partial_channels`` K > 1: PC-DARTS' partial channels on
    every edge (DrNAS' NB201 cell, xiangning-chen/DrNAS 201-space/search_cells.py:134-177:
    each edge's operations see the first C/K channels, the rest bypass them, a channel
    shuffle with K groups; the node sums its edges unweighted)."""

    def __init__(self, C: int, ops, available: Optional[torch.Tensor] = None, partial_channels: int = 1):
        super().__init__()
        self.partial_channels = partial_channels
        self.edges = nn.ModuleList([
            MixedOp(C, 1, ops, affine=False, available=None if available is None else available[e].tolist(),
                    pool_bn=False, partial_channels=partial_channels)
            for e in range(len(NB201_EDGES))
        ])
        self.edge_names = [f"{j}->{i}" for j, i in NB201_EDGES]
        self.edge_list, self.inputs, self.steps = NB201_EDGES, 1, NB201_NODES - 1
        self.state_observer = None  # as SearchCell's: receives the nodes after each forward

    def forward(self, x, weights, active=None):
        K = self.partial_channels
        nodes, e = [x], 0
        for i in range(1, NB201_NODES):
            outputs, ws, bypassed = [], [], []
            for j in range(i):
                edge, edge_active = self.edges[e], None if active is None else active[e]
                out, w = edge.candidates(nodes[j], weights[..., e, :], edge_active)
                outputs += out
                ws.append(w)
                if K > 1 and (edge_active is None or edge_active):  # a removed edge passes nothing
                    bypassed.append(edge.bypass(nodes[j]))
                e += 1
            operated = mixed_sum(outputs, torch.cat(ws, -1)) if outputs else None
            if K == 1:
                nodes.append(operated if operated is not None else nodes[0].mul(0.0))
                continue
            # The shuffle is a permutation of channels: the sum of the edges' shuffled outputs is
            # the shuffle of the summed operated and summed bypassed channels.
            if operated is None:
                operated = self.edges[0].operated(nodes[0]).mul(0.0)
            nodes.append(shuffled_concat(operated, sum(bypassed), K) if bypassed else nodes[0].mul(0.0))
        if self.state_observer is not None:
            self.state_observer(self, nodes)
        return nodes[-1]


class NB201ChildCell(nn.Module):
    def __init__(self, C: int, genotype: NB201Genotype):
        super().__init__()
        self.inputs = [[j for _, j in node] for node in genotype.nodes]
        self.ops = nn.ModuleList([nn.ModuleList([build_op(op, C, 1, affine=True) for op, _ in node])
                                  for node in genotype.nodes])

    def forward(self, x):
        nodes = [x]
        for inputs, ops in zip(self.inputs, self.ops):
            nodes.append(sum(op(nodes[j]) for j, op in zip(inputs, ops)) if inputs else nodes[0].mul(0.0))
        return nodes[-1]


class NB201Network(nn.Module):
    """The supernet (``genotype=None``; α in ``self.arch``) or the child of ``genotype``.
    ``partial_channels`` K > 1: the supernet's edges see C/K channels (K divides C;
    no edge normalisation, as DrNAS' NB201 cell)."""

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, genotype: Optional[NB201Genotype] = None,
                 space=NB201, in_channels: int = 3, relaxation: str = "softmax", arch: Optional[Architecture] = None,
                 channels_last: Optional[bool] = None, partial_channels: int = 1, **arch_kwargs):
        super().__init__()
        self.C = C
        check_partial_channels(partial_channels, C, "NB201Network: `partial_channels`")
        if genotype is not None and partial_channels != 1:
            raise ValueError("NB201Network: `partial_channels` applies to the supernet, not a child (genotype)")
        # The operations' convolutions see C/K channels: what the channels-last choice depends on.
        self.min_channels = C // partial_channels
        # The layout it computes in (None: automatic, see pynas.nn.layout.network_input).
        self.channels_last = check_channels_last(channels_last, self.min_channels, "NB201Network")
        if isinstance(genotype, str):
            genotype = NB201Genotype.parse(genotype)
        if genotype is not None and len(genotype.nodes) != NB201_NODES - 1:
            raise ValueError(f"NB201Network: a genotype needs {NB201_NODES - 1} nodes, got {len(genotype.nodes)}")
        self.genotype = genotype
        space = get_space(space)
        self.arch = None
        if genotype is None:
            self.arch = arch or Architecture(space, len(NB201_EDGES), ("cell",), relaxation=relaxation, **arch_kwargs)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers, C_prev = [], C
        for stage, C_stage in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                layers.append(ResidualReduction(C_prev, C_stage))
            for _ in range(N):
                layers.append(NB201ChildCell(C_stage, genotype) if genotype is not None
                              else NB201SearchCell(C_stage, space.ops, self.arch.mask("cell"), partial_channels))
            C_prev = C_stage
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def weight_parameters(self):
        arch = {id(p) for p in self.arch.parameters()} if self.arch is not None else set()
        return (p for p in self.parameters() if id(p) not in arch)

    def arch_parameters(self):
        return self.arch.parameters() if self.arch is not None else iter(())

    def forward(self, x):
        h = self.stem(network_input(x, self.channels_last, self.min_channels))
        shared = None
        for layer in self.cells:
            if isinstance(layer, NB201SearchCell):
                if shared is None or self.arch.sample_per == "cell":
                    shared = self.arch.weights("cell", batch_size=x.size(0))
                h = layer(h, shared.weights, shared.active)
            else:
                h = layer(h)
        return self.classifier(self.global_pooling(self.lastact(h)).flatten(1))
