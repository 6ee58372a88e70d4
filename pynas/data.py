"""Search data: the embedded digits default and the seeded train/validation split.

``digits`` is scikit-learn's bundled handwritten digits (1,797 8x8 grayscale
images, 10 classes): no download, so ``pynas search`` runs anywhere.
"""
from dataclasses import dataclass
from typing import Tuple

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

DATASETS = ("digits",)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    num_classes: int
    image_size: int


def load_digits_dataset() -> Tuple[TensorDataset, DatasetInfo]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("the digits dataset needs scikit-learn (pip install scikit-learn)") from e
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(digits.target, dtype=torch.long)
    return TensorDataset(images, labels), DatasetInfo("digits", 1, 10, 8)


def load_dataset(name: str):
    if name == "digits":
        return load_digits_dataset()
    raise ValueError(f"unknown dataset {name!r}; available here: {DATASETS}")


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
