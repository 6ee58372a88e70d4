"""Search data: the embedded digits default, CIFAR-10/100 and SVHN, and the
seeded train/validation split.

``digits`` is scikit-learn's bundled handwritten digits (1,797 8x8 grayscale
images, 10 classes), shipped inside pynas (``pynas/_data/digits.npz``): no
download and no scikit-learn, so ``pynas search`` runs anywhere. The image
datasets are read from ``--data`` in their standard on-disk formats (torchvision
downloads them with ``--download``); their pickles are read by an unpickler
that admits only NumPy arrays, never arbitrary objects.
"""
import os
import pickle
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

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
    import numpy as np

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

    def __getitem__(self, i):
        x = self.images[i].float() / 255.0
        if self.train:
            H, W = x.shape[1:]
            padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
            top, left = torch.randint(0, 9, (2,)).tolist()
            x = padded[:, top:top + H, left:left + W]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        x = (x - self.mean) / self.std
        if self.train and self.cutout > 0:
            H, W = x.shape[1:]
            cy, cx = torch.randint(0, H, ()).item(), torch.randint(0, W, ()).item()
            h = self.cutout // 2
            x = x.clone()
            x[:, max(0, cy - h):cy + h, max(0, cx - h):cx + h] = 0
        return x, self.labels[i]


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


def loader(dataset, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> DataLoader:
    """A loader whose order depends only on (seed, epoch), so a resumed run sees
    the same batches as an uninterrupted one."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=False)
