"""Memory budgets: the sizes `pynas search --max-memory` and `pynas bench memory --budget` take."""
import re
from typing import Optional, Tuple

import torch

_UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)")


def parse_memory(text, option: str) -> Tuple[Optional[int], Optional[float]]:
    """``(bytes, None)`` for a size with a unit ("10GB" = 10^9 bytes, "512MiB" =
    512·2^20) or ``(None, fraction)`` for a bare number in (0, 1] (a share of the
    GPU's memory); anything else is a ValueError naming ``option``."""
    match = _SIZE.fullmatch(str(text).strip().lower())
    if match is None or (match.group(2) and match.group(2) not in _UNITS):
        raise ValueError(f"{option} must be a size such as 10GB, 512MiB or 1.5GiB (units: B, kB, MB, GB, TB, KiB, "
                         f"MiB, GiB, TiB), or a fraction of the GPU's memory in (0, 1] such as 0.8; got {text!r}")
    value = float(match.group(1))
    if not match.group(2):
        if not 0 < value <= 1:
            raise ValueError(f"{option} {text}: a bare number is a fraction of the GPU's memory, in (0, 1]; "
                             f"give a size a unit (e.g. {text}GB)")
        return None, value
    size = int(value * _UNITS[match.group(2)])
    if size < 1:
        raise ValueError(f"{option} must be at least 1 byte, got {text!r}")
    return size, None


def budget_bytes(text, option: str, device: str) -> int:
    """The budget ``text`` means on ``device`` in bytes (a fraction: of the CUDA device's total memory)."""
    size, fraction = parse_memory(text, option)
    if fraction is None:
        return size
    if torch.device(device).type != "cuda":
        raise ValueError(f"{option} {text}: a fraction of the GPU's memory needs --device cuda; on {device} "
                         f"give a size (e.g. 10GB)")
    if not torch.cuda.is_available():
        raise ValueError(f"{option} {text}: a fraction of the GPU's memory, but no GPU is visible")
    return int(fraction * torch.cuda.get_device_properties(torch.device(device)).total_memory)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
