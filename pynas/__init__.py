"""pynas: differentiable neural architecture search with fused C++/CUDA kernels."""
import torch  # noqa: F401  (loads libtorch before the extension that links to it)

from . import _C  # noqa: F401  (registers torch.ops.pynas.*)
from . import functional
from .functional import edge_cost, gumbel_softmax, mixed_sum

# pynas.nn first: its networks import pynas.arch, which imports pynas.nn.spaces.
from . import nn  # noqa: E402,I001
from . import arch, genotype  # noqa: E402

__version__ = "0.1.0"


def cuda_kernels_available() -> bool:
    """Whether this build compiled pynas' CUDA kernels.

    A CPU-only torch (or PYNAS_FORCE_CPU=1 at build time) gives a CPU-only build;
    the CUDA kernels run only when this is True and ``torch.cuda.is_available()``.
    """
    return bool(_C.cuda_kernels_built())


__all__ = ["arch", "cuda_kernels_available", "edge_cost", "functional", "genotype", "gumbel_softmax", "mixed_sum", "nn"]
