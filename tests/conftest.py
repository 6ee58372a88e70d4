import random

import numpy as np
import pytest
import torch

import pynas

# The thread count the suite started with: every test runs (and ends) with it.
THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def restore_global_state():
    """Whatever a test changes of torch's thread count, default dtype or random
    generators (torch, Python, NumPy) is put back, so no test runs under another's
    settings (a benchmark at one thread would leave the multi-threaded kernels
    unchecked for the rest of the suite)."""
    dtype = torch.get_default_dtype()
    torch_rng, python_rng, numpy_rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    yield
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(dtype)
    torch.set_rng_state(torch_rng)
    random.setstate(python_rng)
    np.random.set_state(numpy_rng)

CUDA = torch.cuda.is_available() and pynas.cuda_kernels_available()

# Every device test runs on CPU and, where a GPU and the CUDA kernels exist, on CUDA.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and pynas' CUDA kernels")])]

# Tolerances of the fused result against a float64 reference, per input dtype.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param
