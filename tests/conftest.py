import os
import random

import numpy as np
import pytest
import torch

import pynas

# Under pytest-xdist the workers share the cores: each takes its share of threads
# (OpenMP threads beyond the cores spin against each other and slow every worker down),
# unless OMP_NUM_THREADS says otherwise.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

# The thread count the suite started with: every test runs (and ends) with it.
THREADS = torch.get_num_threads()


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests (marked ``slow``) run first, the longest first (``seconds``
    of the mark, an estimate, default 20): pytest-xdist hands out tests in this order, so
    the long ones are spread over the workers instead of one worker ending the suite
    alone with them. The order is the same in every worker. run.sh passes
    ``--maxschedchunk 2``: by default xdist first gives each worker a consecutive quarter
    of its share, and the first worker got every long test (530 s against the other's 350)."""
    def order(item):
        mark = item.get_closest_marker("slow")
        return (0, -mark.kwargs.get("seconds", 20)) if mark else (1, 0)

    items.sort(key=order)


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
