"""pynas: differentiable neural architecture search with fused C++/CUDA kernels."""
import torch  # noqa: F401  (loads libtorch before the extension that links to it)

__version__ = "0.1.0"


def _check_build_matches_torch():
    # torch's C++ ABI changes between releases: an extension compiled against
    # another torch fails to load with undefined symbols, or loads and misbehaves.
    try:
        from ._build_info import BUILD_INFO
    except ImportError:  # a build from before the file was written
        return
    built = BUILD_INFO["torch_version"]
    if built != torch.__version__:
        raise ImportError(f"pynas {__version__} was compiled against torch {built} but torch {torch.__version__} "
                          "is installed; rebuild it against this torch: pip install --no-build-isolation --force-reinstall "
                          "--no-deps <pynas source tree or sdist>")


_check_build_matches_torch()

from . import _C  # noqa: E402,F401  (registers torch.ops.pynas.*)
from . import functional  # noqa: E402
from .functional import edge_cost, gumbel_softmax, mixed_sum  # noqa: E402

# pynas.nn first: its networks import pynas.arch, which imports pynas.nn.spaces.
from . import nn  # noqa: E402,I001
from . import arch, genotype  # noqa: E402


def cuda_kernels_available() -> bool:
    """Whether this build compiled pynas' CUDA kernels.

    A CPU-only torch (or PYNAS_FORCE_CPU=1 at build time) gives a CPU-only build;
    the CUDA kernels run only when this is True and ``torch.cuda.is_available()``.
    """
    return bool(_C.cuda_kernels_built())


__all__ = ["arch", "cuda_kernels_available", "edge_cost", "functional", "genotype", "gumbel_softmax", "mixed_sum", "nn"]
