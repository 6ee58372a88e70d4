"""The memory layout the networks compute in."""
from typing import Optional

import torch

# On CPU, oneDNN's convolutions (the depthwise and 1x1 ones of every DARTS op above
# all; forward + backward of a 5x5 depthwise conv was ~6x faster) and PyTorch's
# pooling kernels are much faster on channels-last tensors. The layout is chosen
# once, for the input: every layer after it keeps it (convolutions, BatchNorm,
# pools, ReLU, cat and pynas' kernels all follow their input's layout).
_CHANNELS_LAST_DTYPES = (torch.float32, torch.bfloat16)
# oneDNN's channels-last 1x1-conv backward (jit_avx2_1x1_convolution_bwd_weights,
# torch 2.13 on CPU) crashed or hung for inputs of fewer than 8 channels (2, 3, 4
# and 6 seen, stride 2 above all); 8 and more never did in a scan up to 36.
MIN_CHANNELS_LAST_CHANNELS = 8


def check_channels_last(channels_last: Optional[bool], min_channels: int, name: str) -> Optional[bool]:
    """``channels_last`` as a network's option, or a ValueError naming it when a
    network with ``min_channels`` channels cannot compute in channels-last."""
    if channels_last and min_channels < MIN_CHANNELS_LAST_CHANNELS:
        raise ValueError(f"{name}: channels_last=True needs C >= {MIN_CHANNELS_LAST_CHANNELS} "
                         f"(oneDNN's CPU 1x1 convolutions fail below), got C={min_channels}")
    return channels_last


def network_input(x: torch.Tensor, channels_last: Optional[bool], min_channels: int) -> torch.Tensor:
    """``x`` in the layout a network whose convolutions see at least
    ``min_channels`` channels computes in: channels-last when ``channels_last`` is
    True, or when it is None (automatic) and ``x`` is a 4-d float32/bfloat16 CPU
    tensor and ``min_channels >= 8``; as it is otherwise. The math is the same."""
    if channels_last is None:
        channels_last = (x.device.type == "cpu" and x.dim() == 4 and x.dtype in _CHANNELS_LAST_DTYPES
                         and min_channels >= MIN_CHANNELS_LAST_CHANNELS)
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
