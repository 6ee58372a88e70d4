"""Builds pynas._C, the compiled kernels registered under torch.ops.pynas.

CUDA kernels are built when the installed torch has CUDA and a CUDA toolkit is
found; otherwise the build is CPU-only. PYNAS_FORCE_CPU=1 / PYNAS_FORCE_CUDA=1
override the choice. PYNAS_DEBUG=1 builds without optimisation and with debug
information (for gdb / cuda-gdb).

The kernels use torch's C++ API, whose ABI changes between torch releases, so
the extension runs only with the torch it was compiled against:
- the C++ standard is the one torch's build helpers choose for that torch;
- the wheel requires exactly that torch version, and pynas/_build_info.py
  records it (pynas refuses to load under another torch, with one line saying so);
- under pip's build isolation (a temporary environment with its own, usually
  newer torch), the build stops at once unless that torch is the one installed
  where pynas is going: `pip install --no-build-isolation .` builds against it.
"""
import glob
import os
import site
import subprocess
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
NO_ISOLATION = "pip install --no-build-isolation ."


def _torch_identity(version, git_version):
    return f"{version} ({git_version[:7]})" if git_version else version


def _check_not_isolated_from_the_target_torch():
    """Stops the build when it runs in pip's isolated environment and the torch
    there differs from the torch of the environment pynas is installed into.

    pip's isolation puts the build requirements (torch among them) in an overlay
    and hides the interpreter's own site-packages; the interpreter is still the
    target's, so a subprocess without pip's PYTHONPATH sees the target's torch.
    """
    here = os.path.normcase(os.path.realpath(os.path.dirname(os.path.dirname(torch.__file__))))
    own = site.getsitepackages() + [site.getusersitepackages()]
    if here in {os.path.normcase(os.path.realpath(p)) for p in own}:
        return  # the interpreter's own torch: no isolation
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = "import torch; print(torch.__version__); print(torch.version.git_version)"
    try:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return
    if out.returncode != 0:
        # No torch where pynas is going: the wheel requires exactly this build's torch,
        # which pip then installs, so the extension matches the torch that will run it.
        return
    target = out.stdout.split()
    build = [torch.__version__, torch.version.git_version or ""]
    if target[:2] != build:
        sys.exit(f"pynas: pip's isolated build environment has torch {_torch_identity(*build)} but this environment "
                 f"runs torch {_torch_identity(*target[:2])}; pynas' kernels must be compiled against the torch that "
                 f"runs them, so add --no-build-isolation to the pip command (e.g. `{NO_ISOLATION}`)")


_check_not_isolated_from_the_target_torch()


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
    # No -std: torch's helpers add the standard its headers need (C++20 for
    # recent releases); forcing an older one breaks newer torch headers.
    # Python's CFLAGS carry -g: debug information for torch's headers makes the
    # C++ compile ~1.4x slower and the library several times larger, so it is
    # dropped unless PYNAS_DEBUG=1 asks for a debug build.
    debug = _flag("PYNAS_DEBUG")
    cxx = ["-O0", "-g"] if debug else ["-O3", "-g0"]
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
        extra_compile_args={"cxx": cxx, "nvcc": ["-O0", "-g", "-G"] if debug else ["-O3"]},
    )


def _cuda_arch_flags():
    """The -gencode flags torch compiles the CUDA kernels with (what doctor reports)."""
    try:
        return [f for f in cpp_extension._get_cuda_arch_flags() if "arch=" in f or f.startswith("-gencode")]
    except Exception:  # a private helper: report the request instead
        return []


def build_info(with_cuda):
    """What pynas/_build_info.py records: the torch built against and the kernels built."""
    return {
        "torch_version": torch.__version__,
        "torch_git_version": torch.version.git_version or "",
        "torch_cuda": torch.version.cuda,
        "cuda_kernels": with_cuda,
        "debug": _flag("PYNAS_DEBUG"),
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "",
        "cuda_arch_flags": _cuda_arch_flags() if with_cuda else [],
        "cuda_home": cpp_extension.CUDA_HOME if with_cuda else None,
        "python": sys.version.split()[0],
    }


class BuildExtension(cpp_extension.BuildExtension):
    """torch's ninja build in a fixed folder (pip's editable builds would use a
    fresh temporary one), so a rebuild recompiles only the files that changed;
    writes pynas/_build_info.py next to the built extension."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "temp")

    def run(self):
        super().run()
        info = build_info(any(name == "PYNAS_WITH_CUDA" for e in self.extensions for name, _ in e.define_macros))
        path = os.path.join(os.path.dirname(self.get_ext_fullpath("pynas._C")), "_build_info.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write('"""Written by setup.py when pynas._C was compiled: what it was built against."""\n')
            f.write(f"BUILD_INFO = {info!r}\n")


def _pinned_torch():
    # The ABI is torch's C++ one: the wheel runs with exactly this release (a
    # local label such as +cpu or +cu130 is not part of the pin; the import-time
    # check in pynas/__init__.py compares the whole version).
    return f"torch=={torch.__version__.split('+')[0]}"


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=[_pinned_torch(), "numpy", "tqdm"],
)
