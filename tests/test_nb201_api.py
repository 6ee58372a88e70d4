"""Where the API packages are installed (`nats_bench`, `nas-bench-201`), pynas reads the numbers they give for the
same files: the fixture files of test_nb201_benchmark in each genuine layout, every planted cell."""
import pytest
from test_nb201_benchmark import CELLS, write_benchmark

from pynas.nb201_benchmark import open_benchmark

# pynas' number -> (the API's dataset, its key), as the maintainers answer papers should report them
API_NUMBERS = {"cifar10_valid": ("cifar10-valid", "valid-accuracy"), "cifar10_test": ("cifar10", "test-accuracy"),
               "cifar100_valid": ("cifar100", "valid-accuracy"), "cifar100_test": ("cifar100", "test-accuracy"),
               "imagenet16_valid": ("ImageNet16-120", "valid-accuracy"),
               "imagenet16_test": ("ImageNet16-120", "test-accuracy")}
FULL = [cell for cell, numbers in CELLS.items() if set(numbers) == set(API_NUMBERS)]  # every dataset planted


def _api(layout, path):
    if layout.startswith("nats"):
        nats_bench = pytest.importorskip("nats_bench")
        return nats_bench.create(path, "tss", fast_mode=layout == "nats-simple", verbose=False)
    nas_201_api = pytest.importorskip("nas_201_api")
    import torch

    # The API's own torch.load refuses the numpy scalars these files hold under torch >= 2.6's weights_only
    # default; this test's own file is trusted, so the API is handed the dict it would have read.
    return nas_201_api.NASBench201API(torch.load(path, weights_only=False), verbose=False)


@pytest.mark.parametrize("layout", ["nats-simple", "nats-file", "nb201-pth"])
def test_pynas_reads_what_the_api_reads(tmp_path, layout):
    path = write_benchmark(tmp_path, layout, CELLS)
    api = _api(layout, path)
    bench = open_benchmark(path)
    assert FULL
    for cell in FULL:
        index = api.query_index_by_arch(cell)
        ours = bench.lookup(cell)
        for key, (dataset, field) in API_NUMBERS.items():
            theirs = api.get_more_info(index, dataset, hp="200", is_random=False)[field]
            assert ours[key] == pytest.approx(theirs, abs=1e-9), (layout, cell, key)
