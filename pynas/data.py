"""Search data: the embedded digits default, CIFAR-10/100 and SVHN, and the
seeded train/validation split.

``digits`` is scikit-learn's bundled handwritten digits (1,797 8x8 grayscale
images, 10 classes), shipped inside pynas (``pynas/_data/digits.npz``): no
download and no scikit-learn, so ``pynas search`` runs anywhere. The image
datasets are read from ``--data`` in their standard on-disk formats (torchvision
downloads them with ``--download``); their pickles are read by an unpickler
that admits only NumPy arrays, never arbitrary objects.

:func:`loader` makes each batch at once, the image datasets' augmentation vectorised
over the batch, in the main process or in worker processes; the random choices of
a sample's augmentation depend only on (seed, epoch, sample), so a resumed run and
any number of workers see the same batches bit for bit.
"""
import itertools
import os
import pickle
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset, default_collate

from ._optional import require

DATASETS = ("digits", "cifar10", "cifar100", "svhn")

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    num_classes: int
    image_size: int


# What a network needs of each dataset (the search's supernet is built from it).
DATASET_INFO = {"digits": DatasetInfo("digits", 1, 10, 8), "cifar10": DatasetInfo("cifar10", 3, 10, 32),
                "cifar100": DatasetInfo("cifar100", 3, 100, 32), "svhn": DatasetInfo("svhn", 3, 10, 32)}

# The embedded digits have no test split of their own: a fixed one, whatever the training seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_data", "digits.npz")


def load_digits_arrays():
    """The digits as NumPy arrays: ``images`` uint8 ``[1797, 8, 8]`` (values
    0-16) and ``target`` uint8 ``[1797]``, scikit-learn's ``load_digits()``
    stored losslessly (46 KB) so that no scikit-learn is needed. The data are
    the test part of the UCI ML hand-written digits set (CC BY 4.0)."""
    with np.load(DIGITS_FILE, allow_pickle=False) as f:
        return f["images"], f["target"]


def load_digits_dataset() -> Tuple[TensorDataset, DatasetInfo]:
    images, target = load_digits_arrays()
    images = torch.from_numpy(images).float().unsqueeze(1) / 16.0
    images = (images - images.mean()) / images.std()
    labels = torch.from_numpy(target).long()
    return TensorDataset(images, labels), DATASET_INFO["digits"]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's batches: builtins and NumPy arrays, nothing callable else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               # Protocol-2 pickles written by Python 3 carry array bytes via codecs.encode.
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_batch(path):
    with open(path, "rb") as f:
        return _ArraysOnly(f, encoding="bytes").load()


# DARTS' training augmentation (its code's CIFAR transforms): zero-pad PAD pixels, crop back to the
# image's size at a random offset, flip horizontally with probability 1/2, normalise, then cut out a
# square centred anywhere in the image (clipped at the border).
PAD = 4
DRAWS = ("top", "left", "flip", "cutout_row", "cutout_col")

# splitmix64's increment and finaliser (Steele, Lea & Flood, OOPSLA 2014): the finaliser is a bijection of
# 64-bit words in which each input bit flips about half of the output bits.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def augmentation_draws(seed: int, epoch: int, samples, height: int, width: int) -> np.ndarray:
    """The augmentation's random choices for the dataset indices ``samples`` in epoch ``epoch`` of a run
    seeded ``seed``: int64 ``[len(DRAWS), len(samples)]``, rows as named in ``DRAWS`` (crop offsets in
    ``[0, 2·PAD]``, flip 0 or 1, cutout centre in ``[0, height)`` x ``[0, width)``).

    Each is a hash of (seed, epoch, sample, row) rather than a draw from a generator's stream, so it does not
    depend on the batch, the worker that makes it, or anything drawn before: a loader built fresh for an
    epoch (after a resume) makes the images an uninterrupted run made."""
    samples = np.asarray(samples, dtype=np.int64).astype(np.uint64)
    h = np.zeros((len(DRAWS), len(samples)), np.uint64)  # arrays throughout: uint64 arithmetic wraps silently
    for word in (seed % 2 ** 64, epoch % 2 ** 64, samples, np.arange(len(DRAWS), dtype=np.uint64)[:, None]):
        h = _mix((h ^ word) + _GOLDEN)
    sizes = np.array([2 * PAD + 1, 2 * PAD + 1, 2, height, width], np.uint64)[:, None]
    return (h % sizes).astype(np.int64)  # the modulo's bias is below 2**-59


def _crop_and_flip(images: torch.Tensor, top, left, flip) -> torch.Tensor:
    """Each uint8 image of ``[B, C, H, W]`` zero-padded by PAD, cropped to H x W at (top, left) and
    mirrored where ``flip``: one gather over the batch instead of B images' slicing."""
    B, C, H, W = images.shape
    rows, cols = np.arange(H), np.arange(W)
    source_cols = left[:, None] + np.where(flip[:, None] == 1, W - 1 - cols, cols)  # [B, W]
    source = (top[:, None, None] + rows[:, None]) * (W + 2 * PAD) + source_cols[:, None, :]  # [B, H, W]
    padded = F.pad(images, (PAD,) * 4).view(B, C, -1)
    index = torch.from_numpy(source).view(B, 1, H * W).expand(B, C, H * W)
    return padded.gather(2, index).view(B, C, H, W)


def _cut_out(x: torch.Tensor, row, col, length: int) -> torch.Tensor:
    """``x`` [B, C, H, W] with rows [row - length//2, row + length//2) x the same columns around ``col``
    zeroed in each image (DARTS' Cutout, which multiplies by its mask, after normalisation)."""
    B, C, H, W = x.shape
    h = length // 2
    rows, cols = np.arange(H), np.arange(W)
    in_rows = (rows >= row[:, None] - h) & (rows < row[:, None] + h)
    in_cols = (cols >= col[:, None] - h) & (cols < col[:, None] + h)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x.mul_(torch.from_numpy(keep).view(B, 1, H, W))


class ImageDataset(Dataset):
    """uint8 images ``[N, C, H, W]`` with labels, DARTS augmentation when
    ``train`` (pad 4 + random crop, horizontal flip; optional cutout), then
    normalisation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, train: bool, cutout: int = 0):
        self.images, self.labels, self.train, self.cutout = images, labels, train, cutout
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def batch(self, samples, seed: int, epoch: int):
        """The indices ``samples`` as one batch ``[images [B, C, H, W] float32, labels [B]]``, augmented when
        ``train`` as :func:`augmentation_draws` chooses for (seed, epoch, sample)."""
        index = torch.as_tensor(samples, dtype=torch.long)
        images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
        if not self.train:
            return [self._normalised(images), labels]
        draws = augmentation_draws(seed, epoch, samples, *images.shape[2:])
        x = self._normalised(_crop_and_flip(images, *draws[:3]))
        if self.cutout > 0:
            x = _cut_out(x, *draws[3:], self.cutout)
        return [x, labels]

    def _normalised(self, images):
        return images.float().div_(255.0).sub_(self.mean).div_(self.std)

    def __getitem__(self, i):
        # One sample outside loader() (indexing, a plain DataLoader): a fresh augmentation per call from
        # the global RNG, as torchvision's transforms draw theirs.
        seed = int(torch.randint(2 ** 62, ())) if self.train else 0
        x, y = self.batch([i], seed, 0)
        return x[0], y[0]


def _require(path, name, download_hint):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} not found at {path}; pass --data DIR holding it{download_hint}")


def _download(name, root):
    torchvision = require("torchvision", needed_for="--download")
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}.get(name)
    if cls is not None:
        cls(root, train=True, download=True)
        cls(root, train=False, download=True)
    else:
        torchvision.datasets.SVHN(root, split="train", download=True)


def load_image_dataset(name: str, root: str, train: bool = True, cutout: int = 0, download: bool = False):
    if download:
        _download(name, root)
    hint = " (or add --download on a machine that is online)"
    if name in ("cifar10", "cifar100"):
        folder = os.path.join(root, "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        _require(folder, name, hint)
        files = ([f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]) if name == "cifar10" \
            else (["train"] if train else ["test"])
        key = b"labels" if name == "cifar10" else b"fine_labels"
        data, labels = [], []
        for f in files:
            path = os.path.join(folder, f)
            _require(path, name, hint)
            batch = _read_batch(path)
            data.append(torch.as_tensor(batch[b"data"]).view(-1, 3, 32, 32))
            labels.append(torch.as_tensor(batch[key], dtype=torch.long))
        images, targets = torch.cat(data), torch.cat(labels)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        info = DATASET_INFO[name]
    else:
        loadmat = require("scipy.io", extra="data", needed_for="SVHN").loadmat

        path = os.path.join(root, "train_32x32.mat" if train else "test_32x32.mat")
        _require(path, name, hint)
        mat = loadmat(path)
        images = torch.as_tensor(mat["X"]).permute(3, 2, 0, 1).contiguous()
        targets = torch.as_tensor(mat["y"].reshape(-1).astype("int64")) % 10  # label 10 is digit 0
        mean, std, info = SVHN_MEAN, SVHN_STD, DATASET_INFO[name]
    return ImageDataset(images, targets, mean, std, train=train, cutout=cutout), info


def load_dataset(name: str, root: Optional[str] = None, cutout: int = 0, download: bool = False):
    """The search (training) set of ``name`` and its :class:`DatasetInfo`."""
    if name == "digits":
        return load_digits_dataset()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if root is None:
        raise ValueError(f"--dataset {name} needs --data DIR (and --download to fetch it)")
    return load_image_dataset(name, root, train=True, cutout=cutout, download=download)


def split(dataset, fraction: float, seed: int):
    """A seeded random split of ``dataset`` into (first, second) with ``fraction`` in the first."""
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(len(order) * fraction)
    return Subset(dataset, order[:cut]), Subset(dataset, order[cut:])


class _Epoch(Dataset):
    """``dataset`` as :func:`loader` reads it in epoch ``epoch`` of a run seeded ``seed``: DataLoader hands
    ``__getitems__`` a whole batch's indices, made into the batch at once."""

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, indices):
        dataset = self.dataset
        while isinstance(dataset, Subset):  # the splits: positions in the dataset they were cut from
            indices = [int(dataset.indices[i]) for i in indices]
            dataset = dataset.dataset
        if isinstance(dataset, ImageDataset):
            return dataset.batch(indices, self.seed, self.epoch)
        if isinstance(dataset, TensorDataset):  # the rows default_collate would stack, indexed at once
            index = torch.as_tensor(indices, dtype=torch.long)
            return [t.index_select(0, index) for t in dataset.tensors]
        return default_collate([dataset[i] for i in indices])


def _made(batch):
    return batch  # __getitems__ returned the batch itself


def loader(dataset, batch_size: int, seed: int, epoch: int, shuffle: bool = True, workers: int = 0,
           pin_memory: bool = False, world: int = 1, rank: int = 0) -> DataLoader:
    """A loader whose order and augmentation depend only on (seed, epoch), so a resumed run sees
    the same batches as an uninterrupted one, whatever ``workers``.

    Batches are made in ``workers`` processes, by default in this one: on the 2-core CPU measured, a whole
    augmented batch of 64 CIFAR images cost 1.0-1.4 ms of this process' CPU, and receiving it from a
    worker (through shared memory) 0.8-1.3 ms, the workers' start-up included, so workers pay only where
    making a batch is dearer than that. ``pin_memory`` (for a CUDA run) puts batches in page-locked memory, from which
    ``.to("cuda", non_blocking=True)`` copies without waiting. With ``world`` > 1, the share of process
    ``rank`` of a ``torch.distributed`` run (DistributedSampler's order); an image is augmented as it would
    be in a one-process run."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"--workers must be a non-negative integer, got {workers!r}")
    data = _Epoch(dataset, seed, epoch)
    sampler = None
    if world > 1:
        sampler = DistributedSampler(data, world, rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=gen, drop_last=False, num_workers=workers, pin_memory=pin_memory, collate_fn=_made)


def seconds_per_batch(batches, count: int) -> float:
    """Wall seconds per batch of the first ``count`` batches of a fresh pass over ``batches`` (a loader),
    counted from the pass' start (its workers start with it, as with every epoch): what a step waits for
    its data when nothing overlaps. A bi-level step (DARTS) takes two batches."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    start = time.perf_counter()
    fetched = sum(1 for _ in itertools.islice(batches, count))
    seconds = time.perf_counter() - start
    if fetched < count:
        raise ValueError(f"the loader has {fetched} batches, fewer than the {count} to time")
    return seconds / count
