"""pynas: differentiable neural architecture search with fused C++/CUDA kernels."""
import torch

from . import _C  # noqa: F401  (registers torch.ops.pynas.*)
from . import functional
from .functional import edge_cost, gumbel_softmax, mixed_sum

__version__ = "0.1.0"


def cuda_kernels_available() -> bool:
    """Whether this build compiled pynas' CUDA kernels.

    A CPU-only torch (or PYNAS_FORCE_CPU=1 at build time) gives a CPU-only build;
    the CUDA kernels run only when this is True and ``torch.cuda.is_available()``.
    """
    return bool(_C.cuda_kernels_built())


__all__ = ["cuda_kernels_available", "edge_cost", "functional", "gumbel_softmax", "mixed_sum"]
