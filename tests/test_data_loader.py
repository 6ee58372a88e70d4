"""loader(): batches made whole, in worker processes or not, the same bit for bit whatever the workers and
after a resume; each image is DARTS' augmentation of its sample (checked against a per-image float64
reference given the drawn choices); the draws are uniform and keyed by (seed, epoch, sample); the embedded
digits' batches are a plain DataLoader's, as before."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pynas.data import (CIFAR10_MEAN, CIFAR10_STD, DRAWS, PAD, ImageDataset, augmentation_draws, load_dataset,
                        loader, seconds_per_batch, split)
from pynas.train import TrainConfig


def image_dataset(n=40, cutout=16, size=32):
    """Random uint8 images whose labels are their indices, so that a batch says which samples it holds."""
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageDataset(images, torch.arange(n), CIFAR10_MEAN, CIFAR10_STD, train=True, cutout=cutout)


def assert_same_bits(batches, expected):
    assert len(batches) == len(expected)
    for batch, other in zip(batches, expected):
        assert len(batch) == len(other)
        for a, b in zip(batch, other):
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.is_floating_point():  # compared as integers: -0.0 and 0.0 differ
                a, b = a.view(torch.int32), b.view(torch.int32)
            assert torch.equal(a, b)


@pytest.mark.parametrize("shuffle", [True, False])
def test_two_workers_make_the_batches_of_the_main_process_bit_for_bit(shuffle):
    train, _ = split(image_dataset(), 0.75, seed=1)  # a Subset, as the search's halves
    alone = list(loader(train, 8, 7, 3, shuffle=shuffle))
    assert_same_bits(list(loader(train, 8, 7, 3, shuffle=shuffle, workers=2)), alone)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_digits_batches_are_a_plain_data_loaders_as_before(workers):
    # What loader() returned before batches were made whole: a DataLoader over the (split) TensorDataset
    # with its order drawn from this generator. The float64 method-equality tests depend on these batches.
    digits, _ = load_dataset("digits")
    train, _ = split(digits, 0.8, seed=0)
    for seed, epoch, shuffle in ((0, 0, True), (3, 5, True), (0, 0, False)):
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        plain = DataLoader(train, 64, shuffle=shuffle, generator=order)
        assert_same_bits(list(loader(train, 64, seed, epoch, shuffle=shuffle, workers=workers)), list(plain))


def test_a_loader_built_fresh_for_an_epoch_makes_the_uninterrupted_runs_batches():
    train, _ = split(image_dataset(), 0.75, seed=1)
    torch.manual_seed(0)
    uninterrupted = []
    for epoch in range(3):
        uninterrupted.append(list(loader(train, 8, 7, epoch)))
        torch.rand(1000)  # the steps' own draws from the global generator
    torch.manual_seed(12345)  # a resumed process: another global state, and no epoch before this one
    assert_same_bits(list(loader(train, 8, 7, 2)), uninterrupted[2])


def test_a_samples_augmentation_does_not_depend_on_its_batch():
    data = image_dataset()
    small, large = list(loader(data, 4, 7, 1)), list(loader(data, 16, 7, 1))  # the same order, cut differently
    assert_same_bits([[torch.cat([b[k] for b in small]) for k in (0, 1)]],
                     [[torch.cat([b[k] for b in large]) for k in (0, 1)]])


def darts_reference(image, top, left, flip, row, col, length):
    """DARTS' CIFAR training transforms on one uint8 image [C, H, W], in float64 and step by step:
    RandomCrop(32, padding=4) at (top, left), RandomHorizontalFlip as drawn, ToTensor, Normalize, then
    Cutout(length) centred at (row, col), its square clipped at the border."""
    C, H, W = image.shape
    padded = torch.zeros(C, H + 2 * PAD, W + 2 * PAD, dtype=torch.float64)
    padded[:, PAD:PAD + H, PAD:PAD + W] = image.double()
    x = padded[:, top:top + H, left:left + W]
    if flip:
        x = x.flip(-1)
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(-1, 1, 1)
    x = (x / 255 - mean) / std
    if length > 0:
        h = length // 2
        x[:, max(0, row - h):min(H, row + h), max(0, col - h):min(W, col + h)] = 0
    return x


@pytest.mark.parametrize("cutout", [16, 7, 0])
def test_each_image_is_darts_augmentation_of_its_sample_as_drawn(cutout):
    data = image_dataset(cutout=cutout)
    train, _ = split(data, 0.75, seed=1)
    seed, epoch, checked = 7, 3, 0
    for x, y in loader(train, 8, seed, epoch):
        draws = augmentation_draws(seed, epoch, y.tolist(), 32, 32)  # labels are the samples' indices
        for k, sample in enumerate(y.tolist()):
            expected = darts_reference(data.images[sample], *draws[:, k].tolist(), cutout)
            torch.testing.assert_close(x[k].double(), expected, rtol=0, atol=1e-6)
            checked += 1
    assert checked == len(train) == 30


def test_the_draws_are_uniform_independent_and_keyed_by_seed_epoch_and_sample():
    n = 18_000
    draws = augmentation_draws(3, 1, np.arange(n), 32, 24)
    assert draws.shape == (len(DRAWS), n)

    def chi_square_ok(values, cells):  # a deterministic hash: the bound sits ~7 standard deviations out
        counts = np.bincount(values, minlength=cells)
        expected = len(values) / cells
        assert len(counts) == cells and counts.min() > 0
        return ((counts - expected) ** 2 / expected).sum() < (cells - 1) + 7 * np.sqrt(2 * (cells - 1))

    top, left, flip, row, col = draws
    for values, cells in ((top, 9), (left, 9), (flip, 2), (row, 32), (col, 24),
                          (top * 9 + left, 81), (flip * 32 + row, 64), (row * 24 + col, 32 * 24)):
        assert chi_square_ok(values, cells)
    # A sample's draws do not depend on the other samples asked for with it, nor on their order...
    assert (augmentation_draws(3, 1, [7, 5, 11], 32, 24)[:, 1] == draws[:, 5]).all()
    # ... but on the seed and the epoch: another one agrees on a draw about as often as chance.
    for other in (augmentation_draws(4, 1, np.arange(n), 32, 24), augmentation_draws(3, 2, np.arange(n), 32, 24),
                  augmentation_draws(1, 3, np.arange(n), 32, 24)):
        assert abs((other[0] == top).mean() - 1 / 9) < 0.02 and abs((other[2] == flip).mean() - 0.5) < 0.03


def test_an_unaugmented_batch_is_the_stored_pixels_normalised():
    data = image_dataset()
    data.train = False
    x, y = next(iter(loader(data, 40, 7, 0, workers=2)))
    mean, std = torch.tensor(CIFAR10_MEAN).view(-1, 1, 1), torch.tensor(CIFAR10_STD).view(-1, 1, 1)
    torch.testing.assert_close(x * std + mean, data.images[y].float() / 255, rtol=0, atol=1e-6)


def test_bad_workers_are_refused_in_one_line():
    data = image_dataset()
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="--workers must be a non-negative integer"):
            loader(data, 8, 0, 0, workers=bad)
        with pytest.raises(ValueError, match="--workers must be a non-negative integer"):
            TrainConfig(workers=bad).resolved(nb201=False).validate()
    TrainConfig(workers=3).resolved(nb201=False).validate()


def test_seconds_per_batch_times_the_batches_asked_for():
    batches = loader(image_dataset(), 8, 0, 0)  # 5 batches
    assert seconds_per_batch(batches, 5) > 0
    with pytest.raises(ValueError, match="5 batches, fewer than the 6"):
        seconds_per_batch(batches, 6)


def test_the_ranks_of_a_distributed_run_share_the_epoch_and_augment_as_one_process_does():
    data = image_dataset(n=30)
    one = {int(y): x for xs, ys in loader(data, 8, 7, 2) for x, y in zip(xs, ys)}
    seen = []
    for rank in (0, 1):
        sampler = torch.utils.data.DistributedSampler(range(30), 2, rank, shuffle=True, seed=7)
        sampler.set_epoch(2)
        batches = list(loader(data, 8, 7, 2, world=2, rank=rank))
        samples = [int(y) for _, ys in batches for y in ys]
        assert samples == list(sampler)  # DistributedSampler's share, as the distributed search had it
        for xs, ys in batches:
            for x, y in zip(xs, ys):
                assert torch.equal(x.view(torch.int32), one[int(y)].view(torch.int32))
        seen += samples
    assert sorted(seen) == list(range(30))
