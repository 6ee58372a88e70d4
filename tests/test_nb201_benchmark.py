"""Reading NAS-Bench-201's recorded accuracies from the three file layouts users have.

The fixtures are written here in the genuine layouts (the packages' ArchResults /
ResultsCount state dicts, as the NATS-Bench fact sheet describes them), with the
200-epoch runs' numbers planted and decoys where a wrong set, epoch, dataset or
training length would be read; the expected numbers are the means computed by hand.
"""
import bz2
import collections
import os
import pickle
import pickletools
import types

import numpy as np
import pytest
import torch

from pynas.errors import InputError
from pynas.genotype import NB201Genotype
from pynas.nb201_benchmark import NATS_FILE, NATS_SIMPLE, canonical, default_path, open_benchmark

LAYOUTS = ("nb201-pth", "nb201-pth-legacy", "nats-file", "nats-simple")
SEEDS = (777, 888)
EPOCHS = 200
# Each number papers report: the dataset of the runs and the evaluation set (fact sheet §0, §1.4).
WHERE = {
    "cifar10_valid": ("cifar10-valid", "x-valid"),
    "cifar10_test": ("cifar10", "ori-test"),
    "cifar100_valid": ("cifar100", "x-valid"),
    "cifar100_test": ("cifar100", "x-test"),
    "imagenet16_valid": ("ImageNet16-120", "x-valid"),
    "imagenet16_test": ("ImageNet16-120", "x-test"),
}
# Sets the genuine 200-epoch runs hold beside those (cifar10-valid's ori-test, the others'
# valid+test): a reader that takes them gets these numbers instead.
DECOY_SETS = {"cifar10-valid": "ori-test", "cifar100": "ori-test", "ImageNet16-120": "ori-test"}
DECOY_SET, DECOY_EPOCH, DECOY_12_EPOCHS = 11.0, 22.0, 33.0

A = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|"
B = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
C = "|skip_connect~0|+|none~0|none~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|"
LISTED_ONLY = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"  # in meta_archs, without records
ABSENT = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"

# Per cell and number, the two seeds' accuracies (777, 888); C has CIFAR-10 valid runs only.
CELLS = {
    A: {"cifar10_valid": (87.5, 88.38), "cifar10_test": (91.25, 91.916), "cifar100_valid": (67.1, 67.806),
        "cifar100_test": (67.2, 68.014), "imagenet16_valid": (30.0, 30.822), "imagenet16_test": (29.9, 30.434)},
    B: {"cifar10_valid": (84.03, 84.61), "cifar10_test": (89.1, 89.7), "cifar100_valid": (60.2, 61.0),
        "cifar100_test": (60.5, 60.9), "imagenet16_valid": (25.3, 26.1), "imagenet16_test": (25.0, 26.5)},
    C: {"cifar10_valid": (80.07, 81.13)},
}

_SCALAR = np.float64(0).__reduce__()[0]


def _results_count(arch, dataset, seed, epochs, sets):
    """A ResultsCount state dict: ``sets`` ({set: accuracy}) at the last epoch, a decoy the epoch before."""
    last = epochs - 1
    acc1 = {f"{name}@{last}": value for name, value in sets.items()}
    acc1.update({f"{name}@{last - 1}": DECOY_EPOCH for name in sets})
    return {"name": dataset, "net_state_dict": None, "train_acc1es": {last: 99.0}, "train_losses": {last: 0.01},
            "train_acc5es": None, "train_times": collections.OrderedDict((e, 12.5) for e in range(epochs)),
            "eval_names": sorted(sets), "eval_acc1es": acc1, "eval_losses": {key: 0.5 for key in acc1},
            "eval_times": {}, "arch_config": {"channel": 16, "num_cells": 5, "arch_str": arch, "class_num": 10},
            "params": np.float64(0.8), "flop": 120.5, "seed": f"{seed:04d}", "epochs": epochs,
            "latency": [np.float64(0.018)]}


def _arch_results(index, arch, numbers, epochs, seeds, override=None):
    """An ArchResults state dict; ``override`` replaces every accuracy (the 12-epoch decoy).
    Seed 888's accuracies are numpy scalars (the genuine files' are Python floats; their sizes
    and latencies numpy scalars), 777's Python floats."""
    by_dataset = collections.defaultdict(dict)
    for key, (first, second) in numbers.items():
        dataset, name = WHERE[key]
        by_dataset[dataset][name] = (first, np.float64(second))
    all_results, dataset_seed = {}, {}
    for dataset, sets in by_dataset.items():
        if dataset in DECOY_SETS:
            sets[DECOY_SETS[dataset]] = (DECOY_SET, DECOY_SET)
        for i, seed in enumerate(seeds):
            chosen = {name: override if override is not None else pair[i] for name, pair in sets.items()}
            all_results[(dataset, seed)] = _results_count(arch, dataset, seed, epochs, chosen)
        dataset_seed[dataset] = sorted(seeds)
    return {"arch_index": index, "arch_str": arch, "all_results": all_results, "dataset_seed": dataset_seed,
            "clear_net_done": True}


class _Numpy1Pickler(pickle._Pickler):
    """Names numpy's scalar reconstructor numpy.core.multiarray.scalar, as the 2020 files do."""

    def save_global(self, obj, name=None):
        if obj is not _SCALAR:
            return super().save_global(obj, name)
        if self.proto >= 4:
            self.save("numpy.core.multiarray")
            self.save("scalar")
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
        self.memoize(obj)


# What torch.save needs of a pickle module.
_NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")
_NUMPY1_PICKLE.Pickler = _Numpy1Pickler
_NUMPY1_PICKLE.dump = lambda obj, f, protocol=2: _Numpy1Pickler(f, protocol).dump(obj)


def _write_pbz2(path, obj, pickler=_Numpy1Pickler):
    """NATS-Bench's pickle_save: protocol 4, bz2."""
    with bz2.open(path, "wb") as f:
        pickler(f, 4).dump(obj)


def write_benchmark(folder, layout, cells, listed_only=()):
    """Writes a benchmark in ``layout`` (one of LAYOUTS) under ``folder``; returns its path.

    ``cells``: {cell string: {number key: (seed 777's accuracy, seed 888's)}} with keys of
    WHERE (a dataset's runs are written when one of its numbers is given); the 200-epoch
    runs hold these at the last epoch, the 12-epoch runs DECOY_12_EPOCHS. ``listed_only``:
    cell strings in meta_archs without records. Cell i of meta_archs is the i-th of
    ``cells``, then ``listed_only``.
    """
    archs = list(cells) + list(listed_only)
    records = {}
    for index, (arch, numbers) in enumerate(cells.items()):
        long = _arch_results(index, arch, numbers, EPOCHS, SEEDS)
        short = _arch_results(index, arch, numbers, 12, (111,), override=DECOY_12_EPOCHS)
        records[index] = (short, long)
    meta = {"meta_archs": archs, "total_archs": len(archs)}
    if layout.startswith("nb201-pth"):
        path = os.path.join(folder, "NAS-Bench-201-v1_1-096897.pth")
        data = {**meta, "arch2infos": {i: {"full": long, "less": short} for i, (short, long) in records.items()},
                "evaluated_indexes": sorted(records)}
        torch.save(data, path, pickle_module=_NUMPY1_PICKLE,
                   _use_new_zipfile_serialization=layout == "nb201-pth")
    elif layout == "nats-file":
        path = os.path.join(folder, NATS_FILE)
        by_index = {i: {"12": short, "200": long} for i, (short, long) in records.items()}
        _write_pbz2(path, {**meta, "arch2infos": by_index, "evaluated_indexes": set(records)})
    elif layout == "nats-simple":
        path = os.path.join(folder, NATS_SIMPLE)
        os.makedirs(path)
        _write_pbz2(os.path.join(path, "meta.pickle.pbz2"), {**meta, "arch2infos": None, "evaluated_indexes": set()})
        for i, (short, long) in records.items():
            _write_pbz2(os.path.join(path, f"{i:06d}.pickle.pbz2"),
                        collections.OrderedDict([("12", short), ("200", long)]))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return path


def _expected(cell):
    """The planted 200-epoch means, by hand; None for the numbers the cell has no runs of."""
    return {key: (CELLS[cell][key][0] + CELLS[cell][key][1]) / 2 if key in CELLS[cell] else None for key in WHERE}


def _one_line_error(call):
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def _shuffled(cell):
    """The same cell with each node's edges in reverse order."""
    return "+".join("|" + "|".join(reversed(node.strip("|").split("|"))) + "|" for node in cell.split("+"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_the_planted_200_epoch_means(tmp_path, layout):
    path = write_benchmark(tmp_path, layout, CELLS, listed_only=[LISTED_ONLY])
    bench = open_benchmark(path)
    for cell in CELLS:
        numbers = bench.lookup(cell)
        assert numbers.pop("file") == os.path.basename(path)
        assert numbers == pytest.approx(_expected(cell), abs=1e-9)
        assert bench.lookup(_shuffled(cell)) == bench.lookup(cell)
        assert bench.lookup(NB201Genotype.parse(_shuffled(cell)))["cifar10_valid"] == _expected(cell)["cifar10_valid"]
    assert bench.lookup(LISTED_ONLY) is None
    assert bench.lookup(ABSENT) is None
    assert bench.cells() == [A, B, C, LISTED_ONLY]


def test_fixtures_name_numpy_as_the_2020_files_do(tmp_path):
    path = write_benchmark(tmp_path, "nats-file", CELLS)
    with bz2.open(path) as f:
        strings = {arg for _, arg, _ in pickletools.genops(f.read()) if isinstance(arg, str)}
    assert {"numpy.core.multiarray", "scalar", "collections", "OrderedDict"} <= strings
    assert "numpy._core.multiarray" not in strings


def test_the_simple_directory_reads_each_cell_once(tmp_path):
    path = write_benchmark(tmp_path, "nats-simple", CELLS)
    bench = open_benchmark(path)
    first = bench.lookup(A)
    os.remove(os.path.join(path, "000000.pickle.pbz2"))  # a cached cell needs no file
    assert bench.lookup(A) == first
    assert bench.lookup(B)["cifar10_test"] == pytest.approx(_expected(B)["cifar10_test"])


def test_canonical_orders_each_nodes_edges_by_input():
    shuffled = "|nor_conv_3x3~0|+|avg_pool_3x3~1|nor_conv_3x3~0|+|avg_pool_3x3~2|none~0|nor_conv_3x3~1|"
    assert canonical(shuffled) == A
    assert canonical(NB201Genotype.parse(shuffled)) == A
    assert canonical(A) == A
    with pytest.raises(ValueError, match="unknown operation"):
        canonical("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|")


def _truncate(path, fraction=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(min(int(size * fraction), size - 1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_truncated_file_is_one_line(tmp_path, layout):
    path = write_benchmark(tmp_path, layout, CELLS)
    if layout == "nats-simple":
        _truncate(os.path.join(path, "000001.pickle.pbz2"))
        bench = open_benchmark(path)
        assert bench.lookup(A)["cifar10_valid"] == pytest.approx(_expected(A)["cifar10_valid"])
        assert "000001.pickle.pbz2 is truncated" in _one_line_error(lambda: bench.lookup(B))
        _truncate(os.path.join(path, "meta.pickle.pbz2"))
        assert "meta.pickle.pbz2 is truncated" in _one_line_error(lambda: open_benchmark(path))
    else:
        with open(path, "rb") as f:
            whole = f.read()
        for fraction in (0.0, 0.1, 0.5, 0.9, 1.0):  # 1.0: all but the last byte
            _truncate(path, fraction)
            assert "is truncated" in _one_line_error(lambda: open_benchmark(path))
            with open(path, "wb") as f:
                f.write(whole)


class _Command:
    """Unpickling it runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_malicious_payload_does_run_when_unpickled_unrestricted(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"arch2infos": _Command(marker)}))
    assert marker.exists()


@pytest.mark.parametrize("layout, where", [("nb201-pth", "file"), ("nb201-pth-legacy", "file"),
                                           ("nats-file", "file"), ("nats-simple", "meta"),
                                           ("nats-simple", "cell")])
def test_a_pickle_that_would_run_a_command_is_refused(tmp_path, layout, where):
    marker = tmp_path / "ran"
    path = write_benchmark(tmp_path, layout, CELLS)
    evil = {"meta_archs": [A, B, C], "total_archs": 3, "arch2infos": {0: {"200": _Command(marker)}}}
    if layout.startswith("nb201-pth"):
        torch.save(evil, path, _use_new_zipfile_serialization=layout == "nb201-pth")
        message = _one_line_error(lambda: open_benchmark(path))
    elif where == "cell":
        _write_pbz2(os.path.join(path, "000000.pickle.pbz2"), {"200": _Command(marker)}, pickle.Pickler)
        bench = open_benchmark(path)
        message = _one_line_error(lambda: bench.lookup(A))
    else:
        target = path if where == "file" else os.path.join(path, "meta.pickle.pbz2")
        _write_pbz2(target, evil, pickle.Pickler)
        message = _one_line_error(lambda: open_benchmark(path))
    assert "refused unloaded" in message and "system" in message
    assert not marker.exists()


class _ObjectScalar:
    """Pickles as numpy's scalar reconstruction of an object-dtype scalar (which gives back "payload")."""

    def __reduce__(self):
        return _SCALAR, (np.dtype(object), "payload")


@pytest.mark.parametrize("name", [NATS_FILE, "NAS-Bench-201-v1_0-e61699.pth"])
def test_numpy_scalars_of_other_than_numbers_are_refused(tmp_path, name):
    path = tmp_path / name
    data = {"meta_archs": [A, _ObjectScalar()], "arch2infos": {}}
    if name.endswith(".pth"):
        torch.save(data, path)
    else:
        _write_pbz2(path, data, pickle.Pickler)
    assert "refused unloaded" in _one_line_error(lambda: open_benchmark(path))


@pytest.mark.parametrize("name", ["results.json", "NAS-Bench-201.tar", "missing.pth", "folder"])
def test_a_path_of_no_layout_names_the_three(tmp_path, name):
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    elif not name.startswith("missing"):
        path.write_text("{}")
    message = _one_line_error(lambda: open_benchmark(path))
    assert str(path) in message
    assert ".pth" in message and NATS_FILE in message and NATS_SIMPLE in message


def test_a_pickle_without_records_is_one_line(tmp_path):
    path = tmp_path / NATS_FILE
    _write_pbz2(path, {"weights": [1.0, 2.0]})
    assert "has no per-cell records (arch2infos)" in _one_line_error(lambda: open_benchmark(path))
    meta = os.path.join(write_benchmark(tmp_path, "nats-simple", CELLS), "meta.pickle.pbz2")
    assert "pass the directory holding it" in _one_line_error(lambda: open_benchmark(meta))


def test_random_search_is_the_best_sampled_cell_by_cifar10_valid(tmp_path):
    bench = open_benchmark(write_benchmark(tmp_path, "nats-file", CELLS, listed_only=[LISTED_ONLY]))
    sample = bench.random_cells(3, seed=5)
    assert len(set(sample)) == 3 and set(sample) <= {A, B, C, LISTED_ONLY}
    assert bench.random_cells(3, seed=5) == sample
    best = max((c for c in sample if c in CELLS), key=lambda c: _expected(c)["cifar10_valid"])
    cell, numbers = bench.random_search(3, seed=5)
    assert cell == best and numbers["cifar10_valid"] == pytest.approx(_expected(best)["cifar10_valid"])
    assert bench.random_search(4, seed=0)[0] == A  # every cell: A has the best CIFAR-10 valid accuracy
    for n in (0, 5, 2.0):
        assert "number of random cells" in _one_line_error(lambda: bench.random_cells(n, seed=0))


def test_the_default_location_is_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert "no NAS-Bench-201 benchmark given" in _one_line_error(default_path)
    path = write_benchmark(tmp_path, "nats-simple", CELLS)
    assert default_path() == path
    assert open_benchmark().lookup(B) == open_benchmark(path).lookup(B)
