"""NAS-Bench-201's recorded accuracies of a cell, read from the benchmark file a user has.

Three layouts are read, without the API packages (``nas_201_api``, ``nats_bench``):

- NAS-Bench-201's ``.pth`` (``NAS-Bench-201-v1_0-e61699.pth``, ``-v1_1-096897.pth``),
  a ``torch.save``'d dict, read with ``torch.load(weights_only=True)``;
- NATS-Bench topology's single ``NATS-tss-v1_0-3ffb9.pickle.pbz2`` (a bz2 pickle);
- its ``NATS-tss-v1_0-3ffb9-simple/`` directory: ``meta.pickle.pbz2`` and one
  ``{index:06d}.pickle.pbz2`` per cell, read when the cell is first looked up.

All hold the packages' ``ArchResults`` state dicts (plain containers, ``OrderedDict``
and numpy scalars). The pickles are read by an unpickler that resolves only those
globals: anything else (a pickle that would run code) is refused in one line
before any of it runs.

The numbers are the ones papers report, not the APIs' defaults (12 epochs, one
random seed): 200-epoch training, the mean over the seeds the file holds, in
percent; CIFAR-10 valid from the ``cifar10-valid`` runs (trained on the train
half), CIFAR-10 test from the ``cifar10`` runs (trained on train+valid).
"""
import bz2
import collections
import os
import pickle
import random
import re
import struct
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import InputError, one_line, quoted
from .genotype import NB201Genotype

NATS_SIMPLE = "NATS-tss-v1_0-3ffb9-simple"
NATS_FILE = "NATS-tss-v1_0-3ffb9.pickle.pbz2"
NB201_FILES = ("NAS-Bench-201-v1_1-096897.pth", "NAS-Bench-201-v1_0-e61699.pth")
META = "meta.pickle.pbz2"
LAYOUTS = (f"NAS-Bench-201's .pth (e.g. {NB201_FILES[0]}), NATS-Bench's {NATS_FILE}, "
           f"or its {NATS_SIMPLE}/ directory holding {META}")

# Key -> (dataset in the file, evaluation set): the sets the APIs' get_more_info
# reads for valid-accuracy / test-accuracy of each dataset.
METRICS = {
    "cifar10_valid": ("cifar10-valid", "x-valid"),
    "cifar10_test": ("cifar10", "ori-test"),
    "cifar100_valid": ("cifar100", "x-valid"),
    "cifar100_test": ("cifar100", "x-test"),
    "imagenet16_valid": ("ImageNet16-120", "x-valid"),
    "imagenet16_test": ("ImageNet16-120", "x-test"),
}
# The 200-epoch record of a cell: NATS-Bench's key, NAS-Bench-201's.
_HP_200 = ("200", "full")

# numpy's scalar reconstructor, whichever module this numpy keeps it in.
_SCALAR = np.float64(0).__reduce__()[0]
# The dtypes of the numbers the files hold (accuracies, losses, times, sizes).
_NUMERIC_KINDS = "biuf"


class _Refused(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (its message: what it named)."""


def _numeric_scalar(dtype, *data):
    """numpy's scalar reconstruction, for numeric dtypes only (no object scalars)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise _Refused(f"a numpy scalar of dtype {quoted(str(dtype), 40)}")
    return _SCALAR(dtype, *data)


# Every global the benchmark pickles reference; 2020 files name numpy.core,
# files re-saved under numpy 2 numpy._core.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numeric_scalar,
    ("numpy._core.multiarray", "scalar"): _numeric_scalar,
}


class _RecordUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals, so nothing else in the file can run."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _refusal(path, what) -> InputError:
    return InputError(f"{path} refused unloaded: it references {quoted(what, 160)}, which no NAS-Bench-201 "
                      f"file holds (nothing in it was run)")


def _unreadable(path, error) -> InputError:
    reason = error if isinstance(error, str) else one_line(error)
    return InputError(f"{path} is truncated or not a NAS-Bench-201 file ({quoted(reason, 160)}); "
                      f"expected {LAYOUTS}")


def _load_pbz2(path):
    """The object of a bz2-compressed pickle, through the restricted unpickler."""
    try:
        with bz2.open(path, "rb") as f:
            data = _RecordUnpickler(f).load()
            if f.read(1):  # also reads up to the stream's end, checking that it is all there
                raise pickle.UnpicklingError("data after the pickle")
            return data
    except _Refused as e:
        raise _refusal(path, str(e)) from None
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, MemoryError, UnicodeDecodeError) as e:
        raise _unreadable(path, e) from None


def _torch_allowed():
    """What ``torch.load(weights_only=True)`` must also accept to read NAS-Bench-201's
    numpy scalars: the reconstructor under both module names, numpy.dtype, and the
    dtype classes whose state it restores (numeric ones only)."""
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdg"}
    return [(_numeric_scalar, "numpy.core.multiarray.scalar"), (_numeric_scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtype_classes]


def _load_pth(path):
    """NAS-Bench-201's ``.pth``: torch's weights_only loader (zip or legacy container)
    with only the numpy globals the records need added."""
    import torch

    try:
        with torch.serialization.safe_globals(_torch_allowed()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except _Refused as e:
        raise _refusal(path, str(e)) from None
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except pickle.UnpicklingError as e:  # weights_only refused something, or met a broken pickle
        refused, reason = _weights_only_reason(e)
        raise (_refusal(path, reason) if refused else _unreadable(path, reason)) from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            TypeError, IndexError, MemoryError, UnicodeDecodeError, struct.error) as e:
        raise _unreadable(path, e) from None


def _weights_only_reason(error) -> Tuple[bool, str]:
    """(whether torch's weights_only loader refused something, what): the global it
    refused, or its message without the advice to load the file unsafely (which pynas
    never does) and the pointers to the documentation."""
    text = str(error)
    name = re.search(r"GLOBAL (\S+)", text)
    if name:
        return True, name.group(1).rstrip(".")
    advice = ("Weights only load failed", "(1)", "(2)", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(advice)]
    reason = " ".join(line.split("WeightsUnpickler error:")[-1].strip() for line in lines) or one_line(error)
    return "allowlist" in reason, reason


def canonical(genotype) -> str:
    """NAS-Bench-201's string of a cell (an :class:`NB201Genotype` or its string, edges
    in any order) with each node's edges in input order, as the benchmark files key them."""
    cell = genotype if isinstance(genotype, NB201Genotype) else NB201Genotype.parse(genotype)
    return str(NB201Genotype(tuple(tuple(sorted(node, key=lambda pair: pair[1])) for node in cell.nodes)))


def default_path() -> str:
    """Where the APIs look: ``$TORCH_HOME`` (NATS-Bench also ``~/.torch``), the lazily
    read simple directory first, then the single files."""
    folders = [os.environ["TORCH_HOME"]] if os.environ.get("TORCH_HOME") else []
    folders.append(os.path.join(os.path.expanduser("~"), ".torch"))
    for folder in folders:
        for name in (NATS_SIMPLE, NATS_FILE, *NB201_FILES):
            if os.path.exists(os.path.join(folder, name)):
                return os.path.join(folder, name)
    raise InputError(f"no NAS-Bench-201 benchmark given and none in {' or '.join(folders)}: "
                     f"pass the path of {LAYOUTS}")


def open_benchmark(path=None) -> "NB201Benchmark":
    """The benchmark at ``path`` (any of the three layouts; by default the one
    :func:`default_path` finds). Only the simple directory's meta file is read now."""
    path = os.fspath(default_path() if path is None else path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, META)):
            raise InputError(f"{path} is a directory without {META}: expected {LAYOUTS}")
        return NB201Benchmark(path, _meta_archs(path, _load_pbz2(os.path.join(path, META))), None)
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist: expected {LAYOUTS}")
    if path.endswith(".pth"):
        data = _load_pth(path)
    elif path.endswith(".pbz2"):
        data = _load_pbz2(path)
    else:
        raise InputError(f"{path} is not a NAS-Bench-201 benchmark: expected {LAYOUTS}")
    records = data.get("arch2infos") if isinstance(data, dict) else None
    if not isinstance(records, dict):
        hint = "pass the directory holding it" if os.path.basename(path) == META else f"expected {LAYOUTS}"
        raise InputError(f"{path} has no per-cell records (arch2infos): {hint}")
    return NB201Benchmark(path, _meta_archs(path, data), records)


def _meta_archs(path, data) -> List[str]:
    archs = data.get("meta_archs") if isinstance(data, dict) else None
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise InputError(f"{path} has no list of cell strings (meta_archs): expected {LAYOUTS}")
    return archs


def _mean_accuracy(record: dict, dataset: str, split: str) -> Optional[float]:
    """Mean over the seeds of the last epoch's ``split`` accuracy of the ``dataset``
    runs; None where the record has no such runs, or a seed lacks that set (the
    APIs then leave the number out)."""
    seeds = record["dataset_seed"].get(dataset) or []
    values = []
    for seed in seeds:
        run = record["all_results"][(dataset, seed)]
        value = run["eval_acc1es"].get(f"{split}@{run['epochs'] - 1}")
        if value is None:
            return None
        values.append(float(value))
    return sum(values) / len(values) if values else None


class NB201Benchmark:
    """An opened benchmark: :meth:`lookup` gives a cell's six accuracies."""

    def __init__(self, path: str, archs: List[str], records: Optional[dict]):
        self.path = path
        self.file = os.path.basename(os.path.normpath(path))
        self._archs = archs
        self._index = {arch: i for i, arch in enumerate(archs)}
        self._records = records  # None: the simple directory, one file per cell
        self._cache: Dict[int, Optional[dict]] = {}

    def cells(self) -> List[str]:
        """Every cell string the file lists, in its (official index) order."""
        return list(self._archs)

    def lookup(self, genotype) -> Optional[dict]:
        """The cell's numbers (keys of :data:`METRICS`, a None where the file has no
        such runs, and ``file``), or None where the file lacks the cell."""
        index = self._index.get(canonical(genotype))
        if index is None:
            return None
        if index not in self._cache:
            self._cache[index] = self._numbers(index)
        numbers = self._cache[index]
        return None if numbers is None else dict(numbers)

    def random_cells(self, n: int, seed: int) -> List[str]:
        """``n`` distinct cells drawn uniformly from :meth:`cells` (a random-search baseline's samples)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self._archs):
            raise InputError(f"the number of random cells must be in [1, {len(self._archs)}] "
                             f"(the cells {self.file} lists), got {quoted(n, 40)}")
        return random.Random(seed).sample(self._archs, n)

    def random_search(self, n: int, seed: int) -> Optional[Tuple[str, dict]]:
        """Random search read off the table: of ``n`` random cells, the one with the best
        CIFAR-10 valid accuracy, and its numbers; None if none of them has one."""
        scored = [(cell, self.lookup(cell)) for cell in self.random_cells(n, seed)]
        scored = [(cell, numbers) for cell, numbers in scored if numbers and numbers["cifar10_valid"] is not None]
        return max(scored, key=lambda item: item[1]["cifar10_valid"], default=None)

    def _record(self, index: int):
        """The cell's per-training-length records, or None where the file lacks them."""
        if self._records is not None:
            return self._records.get(index)
        for name in (f"{index:06d}.pickle.pbz2", f"{index}.pickle.pbz2"):
            path = os.path.join(self.path, name)
            if os.path.isfile(path):
                return _load_pbz2(path)
        return None

    def _numbers(self, index: int) -> Optional[dict]:
        by_length = self._record(index)
        try:
            record = next((by_length[k] for k in _HP_200 if k in by_length), None) if by_length is not None else None
            if record is None:
                return None
            numbers = {key: _mean_accuracy(record, *where) for key, where in METRICS.items()}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise InputError(f"{self.path}: the records of cell {index} ({self._archs[index]}) are not "
                             f"NAS-Bench-201's ArchResults state dicts ({quoted(one_line(e), 80)})") from None
        return {**numbers, "file": self.file}


def numbers_line(numbers: dict) -> str:
    """``cifar10 valid 89.12 test 93.76 | cifar100 ... | imagenet16 ...`` (percent, two decimals) of
    :meth:`NB201Benchmark.lookup`'s numbers, or, for ``{"missing": True, "file", "cell"}``, that the file lacks it."""
    if numbers.get("missing"):
        return f"{numbers['file']} has no record of {numbers['cell']}"

    def value(key):
        return "n/a" if numbers.get(key) is None else f"{numbers[key]:.2f}"

    return " | ".join(f"{name} valid {value(name + '_valid')} test {value(name + '_test')}"
                      for name in ("cifar10", "cifar100", "imagenet16"))
