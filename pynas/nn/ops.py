"""Candidate operations and their registry.

Every operation is built as ``constructor(C, stride, affine)`` and maps
``[B, C, H, W]`` to ``[B, C, H/stride, W/stride]``. Names follow DARTS
(ReLU-Conv-BN order, separable convolutions applied twice, a factorized
reduce for a stride-2 ``skip_connect``) and NAS-Bench-201.

Operations whose first layer is a ReLU expose ``relu_first = True`` and
``after_relu(x)``: a :class:`~pynas.nn.MixedOp` applies that ReLU once for all
of them (the same math with one activation in memory instead of several).
"""
from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

OpConstructor = Callable[[int, int, bool], nn.Module]


class ReLUFirst(nn.Module):
    """An operation ``body(relu(x))``."""

    relu_first = True

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def after_relu(self, x):
        return self.body(x)

    def forward(self, x):
        return self.body(F.relu(x))


class ReLUConvBN(ReLUFirst):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(nn.Sequential(
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        ))


class DilConv(ReLUFirst):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(_depthwise_separable(C_in, C_out, kernel_size, stride, padding, dilation, affine))


class SepConv(ReLUFirst):
    """A separable convolution applied twice (the first with the stride), as in DARTS."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(nn.Sequential(
            _depthwise_separable(C_in, C_in, kernel_size, stride, padding, 1, affine),
            nn.ReLU(inplace=False),
            _depthwise_separable(C_in, C_out, kernel_size, 1, padding, 1, affine),
        ))


def _depthwise_separable(C_in, C_out, kernel_size, stride, padding, dilation, affine):
    return nn.Sequential(
        nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C_in, bias=False),
        nn.Conv2d(C_in, C_out, 1, bias=False),
        nn.BatchNorm2d(C_out, affine=affine),
    )


class FactorizedReduce(nn.Module):
    """Halves the resolution without losing pixels: two stride-2 1x1 convs, one
    shifted by a pixel, concatenated (ReLU first)."""

    relu_first = True

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce: C_out must be even, got {C_out}")
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def after_relu(self, x):
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)) if x.size(2) % 2 or x.size(3) % 2 else x[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))

    def forward(self, x):
        return self.after_relu(F.relu(x))


class Zero(nn.Module):
    """``none``: zeros of the output shape (never run inside a MixedOp)."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Noise(nn.Module):
    """S4's ``noise``: N(0, 1) samples of the output shape, independent of the input."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        B, C, H, W = x.shape
        s = self.stride
        return torch.randn(B, C, (H + s - 1) // s, (W + s - 1) // s, dtype=x.dtype, device=x.device)


class Identity(nn.Module):
    def forward(self, x):
        return x


def _skip(C, stride, affine):
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine)


def _pool(kind):
    def build(C, stride, affine):
        if kind == "max":
            return nn.MaxPool2d(3, stride=stride, padding=1)
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    return build


OPS: Dict[str, OpConstructor] = {
    "none": lambda C, stride, affine: Zero(stride),
    "noise": lambda C, stride, affine: Noise(stride),
    "max_pool_3x3": _pool("max"),
    "avg_pool_3x3": _pool("avg"),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_7x1_1x7": lambda C, stride, affine: ReLUFirst(nn.Sequential(
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )),
    # NAS-Bench-201 (Single-DARTS App. B): ReLU-Conv-BN convolutions.
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
}

# Parameter-free operations; in a search supernet they are followed by a
# BatchNorm without affine parameters when they are pools (DARTS; SNAS App. G.1).
POOLS = {"max_pool_3x3", "avg_pool_3x3"}


def register_op(name: str, constructor: OpConstructor, *, overwrite: bool = False) -> None:
    """Adds an operation ``constructor(C, stride, affine) -> nn.Module`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("register_op: `name` must be a non-empty string")
    if not callable(constructor):
        raise ValueError(f"register_op: `constructor` for {name!r} must be callable")
    if name in OPS and not overwrite:
        raise ValueError(f"register_op: an operation named {name!r} exists; pass overwrite=True to replace it")
    OPS[name] = constructor


def build_op(name: str, C: int, stride: int, affine: bool, search: bool = False) -> nn.Module:
    """The operation ``name``; in a search supernet (``search=True``) a pool gets
    a non-affine BatchNorm after it."""
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; known: {sorted(OPS)} (add one with pynas.nn.register_op)")
    op = OPS[name](C, stride, affine)
    if search and name in POOLS:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op
