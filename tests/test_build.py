"""What the build reports, and the registration of every op."""
import os

import pytest
import torch
from torch.utils import cpp_extension

import pynas

OPS = ["mixed_sum", "mixed_sum_backward", "edge_cost", "gumbel_softmax", "gumbel_softmax_backward"]


def test_every_op_has_a_cpu_kernel():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pynas::{op}", "CPU"), op


def test_cuda_kernels_reported_as_registered():
    # cuda_kernels_available() reflects the CUDA kernels the build actually registered.
    for op in OPS:
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"pynas::{op}", "CUDA")
        assert has == pynas.cuda_kernels_available(), op


@pytest.mark.skipif(
    torch.version.cuda is None or cpp_extension.CUDA_HOME is None or os.environ.get("PYNAS_FORCE_CPU") == "1",
    reason="CPU-only torch, no CUDA toolkit, or a CPU-only build was forced",
)
def test_cuda_kernels_built_when_torch_and_toolkit_have_cuda():
    # The dev/CI environment has a CUDA torch and nvcc: a silent fallback to a
    # CPU-only build would leave the CUDA kernels uncompiled.
    assert pynas.cuda_kernels_available()


def test_debug_information_only_in_a_debug_build():
    # Python's CFLAGS add -g; setup.py overrides it (-g0) unless PYNAS_DEBUG=1.
    info = pytest.importorskip("pynas._build_info").BUILD_INFO
    with open(pynas._C.__file__, "rb") as f:
        sections = f.read()
    assert (b".debug_info\0" in sections) == info["debug"], info
