"""Partial channel connections (PC-DARTS, Xu et al., ICLR 2020, Sec. 3.2).

An edge with ``K`` partial channels runs its candidate operations on the first
``C/K`` channels of its input only; the other ``C − C/K`` channels bypass them
(max-pooled 2x2 with stride 2 on a reduction edge) and are joined back by a
channel shuffle with ``K`` groups, as PC-DARTS' public code (model_search.py
``MixedOp``, ``channel_shuffle``) does. Edge normalisation (Sec. 3.3) is in
:class:`~pynas.arch.Architecture` (β).
"""
import torch


def check_partial_channels(K, C: int, name: str = "--partial-channels") -> int:
    """``K`` as a number of partial channels for cells of ``C`` channels (and
    multiples of it), or a ValueError naming ``name``."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"{name} must be an integer >= 1 (1: every channel, no partial connections), got {K!r}")
    if C % K:
        raise ValueError(f"{name} {K} must divide the channels C = {C}: each edge's operations see C/K channels "
                         f"and the channel shuffle needs K equal groups")
    return K


def shuffled_concat(operated: torch.Tensor, bypassed: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (PC-DARTS' ``channel_shuffle``) of
    ``cat([operated, bypassed], 1)`` with ``groups`` groups, written in one pass (no
    concatenated copy): output channel ``i·groups + g`` is input channel
    ``g·C/groups + i``, so ``operated`` (C/K channels) lands on channels 0, K, 2K,
    ..., ``bypassed`` (C − C/K) on the rest. In ``operated``'s dtype and memory format."""
    part = operated.size(1)
    if bypassed.size(1) != (groups - 1) * part:
        raise ValueError(f"shuffled_concat: {bypassed.size(1)} bypassed channels for {part} operated ones "
                         f"and {groups} groups (expected {(groups - 1) * part})")
    shape = (operated.size(0), groups * part, *operated.shape[2:])
    out = torch.empty(shape, dtype=operated.dtype, device=operated.device, memory_format=_memory_format(operated))
    grouped = out.unflatten(1, (part, groups))
    grouped[:, :, 0].copy_(operated)
    grouped[:, :, 1:].copy_(bypassed.unflatten(1, (groups - 1, part)).transpose(1, 2))
    return out


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Channels-last when ``x``'s channels are its innermost dimension (also for a slice of channels)."""
    if x.dim() == 4 and x.size(1) > 1 and x.stride(1) < x.stride(3):
        return torch.channels_last
    return torch.contiguous_format
