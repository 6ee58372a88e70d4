"""Builds pynas._C, the compiled kernels registered under torch.ops.pynas.

CUDA kernels are built when the installed torch has CUDA and a CUDA toolkit is
found; otherwise the build is CPU-only. PYNAS_FORCE_CPU=1 / PYNAS_FORCE_CUDA=1
override the choice.
"""
import glob
import os
import sys

from setuptools import setup


def _default_cuda_home():
    # A stray nvcc on PATH (e.g. /usr/local/bin/nvcc) makes torch guess its
    # parent as CUDA_HOME; prefer the toolkit's standard location when it exists.
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


_default_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def _with_cuda():
    if _flag("PYNAS_FORCE_CPU"):
        return False
    found = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if _flag("PYNAS_FORCE_CUDA"):
        if not found:
            sys.exit("PYNAS_FORCE_CUDA=1 but torch has no CUDA or no CUDA toolkit was found")
        return True
    return found


def _cuda_include_dirs():
    # pip's CUDA wheels keep headers such as cuBLAS/cuSPARSE (pulled in by some
    # ATen CUDA headers) under site-packages/nvidia/<cuXY>/include.
    torch_root = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(glob.glob(os.path.join(torch_root, "nvidia", "cu*", "include")))


def extension():
    with_cuda = _with_cuda()
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/common/*.cpp") + rel("csrc/cpu/*.cpp") + rel("csrc/autograd/*.cpp")
    cxx = ["-O3", "-std=c++17"]
    if not with_cuda:
        return cpp_extension.CppExtension("pynas._C", sources, extra_compile_args={"cxx": cxx})
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU to read the architecture from: a short list, not every one.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    return cpp_extension.CUDAExtension(
        "pynas._C",
        sources + rel("csrc/cuda/*.cpp") + rel("csrc/cuda/*.cu"),
        include_dirs=_cuda_include_dirs(),
        define_macros=[("PYNAS_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
    )


class BuildExtension(cpp_extension.BuildExtension):
    """torch's ninja build in a fixed folder (pip's editable builds would use a
    fresh temporary one), so a rebuild recompiles only the files that changed."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "temp")


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
