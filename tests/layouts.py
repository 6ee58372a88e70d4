"""Test inputs in the memory layouts the ops must handle."""
import torch

LAYOUTS = ["contiguous", "channels_last", "sliced", "transposed", "expanded"]


def make(shape, layout, dtype, device, generator=None):
    """A random tensor of `shape` stored in `layout` (values independent of layout)."""
    if layout == "channels_last" and len(shape) == 4:
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(device).contiguous(memory_format=torch.channels_last)
    if layout == "sliced" and len(shape) >= 1:
        big = torch.randn(*shape[:-1], shape[-1] * 2 + 1, generator=generator, dtype=torch.float64)
        return big.to(dtype).to(device)[..., 1::2]
    if layout == "transposed" and len(shape) >= 2:
        t = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=generator, dtype=torch.float64)
        return t.to(dtype).to(device).transpose(-1, -2)
    if layout == "expanded" and len(shape) >= 1 and shape[0] > 0:
        row = torch.randn(1, *shape[1:], generator=generator, dtype=torch.float64)
        return row.to(dtype).to(device).expand(*shape)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(device)


def weight_view(w, ref):
    """Weights broadcastable against one output: [K] -> scalars, [B, K] -> [B, 1, ...]."""
    if w.dim() == 1:
        return [w[k] for k in range(w.numel())]
    return [w[:, k].reshape(-1, *([1] * (ref.dim() - 1))) for k in range(w.size(1))]
