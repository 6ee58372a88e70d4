"""MixedOp: the candidate operations of one edge, combined by the fused mixed_sum."""
from typing import List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..functional import mixed_sum
from .ops import build_op
from .partial import check_partial_channels, shuffled_concat


class MixedOp(nn.Module):
    """The edge ``y = Σ_k w_k · op_k(x)`` over ``ops`` (DARTS Eq. 1).

    ``none`` is never run: its weight only takes part in normalising the others.
    Operations whose first layer is a ReLU share one ReLU. ``weights`` are
    ``[K]`` or ``[B, K]`` over ``ops``; ``active`` optionally names the column
    indices to run (e.g. the one selected by a hard sample: GDAS/DSNAS run only
    that operation, its weight keeping the straight-through gradient to α).

    ``partial_channels`` K > 1 (PC-DARTS Sec. 3.2): the operations see only the
    first C/K input channels (:meth:`operated`); the rest bypass them
    (:meth:`bypass`) and join the result through a channel shuffle with K groups.
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str], affine: bool = False,
                 available: Optional[Sequence[bool]] = None, pool_bn: bool = True, partial_channels: int = 1):
        super().__init__()
        self.names = tuple(ops)
        self.stride = stride
        self.partial_channels = check_partial_channels(partial_channels, C, "MixedOp: `partial_channels`")
        self.channels = C  # of the edge's input, all of them (the operations see C/K)
        # PC-DARTS' code max-pools the bypassed channels 2x2 with stride 2 on a reduction edge; ceil_mode
        # matches the operations' ceil(H/2) on odd sizes too (on even ones it is the same pooling).
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 and partial_channels > 1 else None
        C //= partial_channels
        if available is not None and len(available) != len(self.names):
            raise ValueError(f"MixedOp: `available` has {len(available)} entries for {len(self.names)} ops")
        # Columns of `weights` this edge can run: not `none`, and available on
        # this edge (per-edge spaces such as S1 leave the rest unbuilt).
        self.materialised = [k for k, name in enumerate(self.names)
                             if name != "none" and (available is None or available[k])]
        # DARTS follows each pool by a non-affine BatchNorm in the supernet; NAS-Bench-201 does not.
        self.ops = nn.ModuleList([build_op(self.names[k], C, stride, affine, search=pool_bn) for k in self.materialised])
        self._slot = {k: i for i, k in enumerate(self.materialised)}
        self._column_index = {}  # (columns, device) -> index tensor (see _columns)

    @classmethod
    def from_modules(cls, candidates: Mapping[str, nn.Module]) -> "MixedOp":
        """A MixedOp over arbitrary modules with a common output shape (e.g. a
        layer of an existing model and its alternatives); ``"none"`` stays unrun."""
        if not candidates:
            raise ValueError("MixedOp.from_modules: `candidates` must not be empty")
        op = cls.__new__(cls)
        nn.Module.__init__(op)
        op.names = tuple(candidates)
        op.stride = 1
        op.partial_channels, op.bypass_pool, op.channels = 1, None, None
        op.materialised = [k for k, name in enumerate(op.names) if name != "none"]
        op.ops = nn.ModuleList([candidates[op.names[k]] for k in op.materialised])
        op._slot = {k: i for i, k in enumerate(op.materialised)}
        op._column_index = {}
        return op

    def candidates(self, x: torch.Tensor, weights: torch.Tensor, active: Optional[Sequence[int]] = None
                   ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The outputs of the operations to run and their weights (``[..., n]``),
        ready for one ``mixed_sum`` (possibly together with other edges)."""
        run = self.materialised if active is None else [k for k in active if k in self._slot]
        if self.partial_channels > 1:
            x = self.operated(x)
        relu = None
        outputs = []
        for k in run:
            op = self.ops[self._slot[k]]
            if getattr(op, "relu_first", False):
                relu = F.relu(x) if relu is None else relu
                outputs.append(op.after_relu(relu))
            else:
                outputs.append(op(x))
        return outputs, self._columns(weights, run)

    def _columns(self, weights: torch.Tensor, run: List[int]) -> torch.Tensor:
        """``weights[..., run]`` without a host-to-device copy of ``run`` each call:
        a view when ``run`` is a range (every op but ``none``, or GDAS' one op),
        else an index kept on the weights' device."""
        if not run:
            return weights[..., :0]
        if run == list(range(run[0], run[-1] + 1)):
            return weights[..., run[0]: run[-1] + 1]
        key = (tuple(run), weights.device)
        index = self._column_index.get(key)
        if index is None:
            index = self._column_index[key] = torch.tensor(run, dtype=torch.long, device=weights.device)
        return weights.index_select(-1, index)

    def operated(self, x: torch.Tensor) -> torch.Tensor:
        """The channels the operations see: the first C/K (PC-DARTS' code takes a fixed slice)."""
        return x[:, : x.size(1) // self.partial_channels]

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        """The channels that bypass the operations, at the edge's output resolution."""
        rest = x[:, x.size(1) // self.partial_channels:]
        return rest if self.bypass_pool is None else self.bypass_pool(rest)

    def zeros(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: Optional[Sequence[int]] = None) -> torch.Tensor:
        outputs, w = self.candidates(x, weights, active)
        if self.partial_channels > 1:
            operated = mixed_sum(outputs, w) if outputs else self.zeros(self.operated(x))
            return shuffled_concat(operated, self.bypass(x), self.partial_channels)
        if not outputs:  # only `none` (or nothing) is active
            return self.zeros(x)
        return mixed_sum(outputs, w)
