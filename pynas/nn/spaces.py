"""Search spaces: which operations each edge of a cell chooses from.

A space has one ordered operation list (the columns of α) and, optionally,
per cell type, the subset available on each edge (S1 of DARTS-PT App. A.2).
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch

from .ops import OPS

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    ops: Tuple[str, ...]
    # cell type -> for each edge (in cell order) the operations it may use.
    edge_ops: Optional[Dict[str, Tuple[Tuple[str, ...], ...]]] = field(default=None, hash=False, compare=False)

    def __post_init__(self):
        if not self.ops:
            raise ValueError(f"search space {self.name!r}: `ops` must not be empty")
        if len(set(self.ops)) != len(self.ops):
            raise ValueError(f"search space {self.name!r}: `ops` has duplicates: {self.ops}")
        unknown = [op for op in self.ops if op not in OPS]
        if unknown:
            raise ValueError(f"search space {self.name!r}: unknown operations {unknown}")
        for cell_type, edges in (self.edge_ops or {}).items():
            for e, ops in enumerate(edges):
                bad = [op for op in ops if op not in self.ops]
                if bad or not ops:
                    raise ValueError(f"search space {self.name!r}: edge {e} of {cell_type!r} cells lists {ops}; "
                                     f"each must be a non-empty subset of {self.ops}")

    def available(self, cell_type: str, num_edges: int) -> torch.Tensor:
        """``[num_edges, K]`` booleans: which operations each edge may use."""
        mask = torch.ones(num_edges, len(self.ops), dtype=torch.bool)
        if self.edge_ops is None or cell_type not in self.edge_ops:
            return mask
        edges = self.edge_ops[cell_type]
        if len(edges) != num_edges:
            raise ValueError(f"search space {self.name!r}: {len(edges)} edge lists for {cell_type!r} cells "
                             f"with {num_edges} edges")
        for e, ops in enumerate(edges):
            mask[e] = torch.tensor([op in ops for op in self.ops])
        return mask


DARTS = SearchSpace("darts", DARTS_OPS)
DARTS_WITHOUT_NONE = SearchSpace("darts-no-none", DARTS_OPS[1:])
NB201 = SearchSpace("nb201", NB201_OPS)
# The robustness spaces of Zela et al. used by DARTS-PT (App. A.2).
S2 = SearchSpace("s2", ("skip_connect", "sep_conv_3x3"))
S3 = SearchSpace("s3", ("none", "skip_connect", "sep_conv_3x3"))
S4 = SearchSpace("s4", ("noise", "sep_conv_3x3"))


def _pairs(text: str) -> Tuple[Tuple[str, ...], ...]:
    short = {"skip": "skip_connect", "max": "max_pool_3x3", "avg": "avg_pool_3x3", "sep3": "sep_conv_3x3",
             "dil3": "dil_conv_3x3", "dil5": "dil_conv_5x5"}
    return tuple(tuple(short[op] for op in pair.split("+")) for pair in text.split())


# S1 as published (Zela et al.'s RobustDARTS, src/spaces.py `primitives_1`, which DARTS-PT's code
# copies): two operations per edge, edges in cell order (0->2, 1->2, 0->3, 1->3, 2->3, 0->4, ...).
S1 = SearchSpace("s1", DARTS_OPS, {
    "normal": _pairs("skip+dil3 skip+dil5 skip+dil5 skip+sep3 skip+dil3 max+skip skip+sep3 skip+sep3 skip+dil3 "
                     "skip+sep3 max+skip skip+dil3 dil3+dil5 dil3+dil5"),
    "reduce": _pairs("max+avg max+dil3 max+avg max+avg skip+dil5 max+avg max+sep3 skip+dil3 skip+dil5 max+avg "
                     "max+avg skip+dil5 skip+dil5 skip+dil5"),
})


def s1(edge_ops: Dict[str, Sequence[Sequence[str]]], ops: Sequence[str] = DARTS_OPS) -> SearchSpace:
    """A space with a different operation list on every edge, like S1 (DARTS-PT
    App. A.2), e.g. the top-2 operations per edge of a DARTS search (see
    :func:`s1_from_alphas`); the published S1 is :data:`S1`."""
    return SearchSpace("s1", tuple(ops), {t: tuple(tuple(e) for e in edges) for t, edges in edge_ops.items()})


def s1_from_alphas(alphas: Dict[str, torch.Tensor], ops: Sequence[str] = DARTS_OPS, top: int = 2) -> SearchSpace:
    """S1 as Zela et al. built it: on each edge, the ``top`` operations with the
    largest α of a DARTS search (``alphas``: cell type -> ``[E, K]``)."""
    edge_ops = {}
    for cell_type, alpha in alphas.items():
        idx = alpha.detach().topk(top, dim=-1).indices.sort(dim=-1).values
        edge_ops[cell_type] = [[ops[i] for i in row.tolist()] for row in idx]
    return s1(edge_ops, ops)


SPACES = {space.name: space for space in (DARTS, DARTS_WITHOUT_NONE, NB201, S1, S2, S3, S4)}


def get_space(space) -> SearchSpace:
    """A space by name (``darts``, ``darts-no-none``, ``nb201``, ``s1``-``s4``), an
    operation list, or a :class:`SearchSpace`."""
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, str):
        if space not in SPACES:
            raise ValueError(f"unknown search space {space!r}; known: {sorted(SPACES)} (or pass a SearchSpace)")
        return SPACES[space]
    return SearchSpace("custom", tuple(space))
