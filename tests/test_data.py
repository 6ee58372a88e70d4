"""Dataset readers on tiny files written in the datasets' own on-disk formats."""
import os
import pickle

import numpy as np
import pytest
import torch

from pynas.cli import main
from pynas.data import load_dataset, split


def write_cifar10(root, n=6):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        batch[b"labels"] = [int(v) for v in batch[b"labels"]]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def test_cifar10_reader_and_augmentation(tmp_path):
    write_cifar10(str(tmp_path))
    data, info = load_dataset("cifar10", str(tmp_path), cutout=8)
    assert len(data) == 30 and info.num_classes == 10 and info.image_size == 32
    x, y = data[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= int(y) < 10
    # Without augmentation the normalised image is exactly the stored pixels.
    data.train = False
    batch = pickle.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="bytes")
    raw = torch.tensor(batch[b"data"][0]).view(3, 32, 32).float() / 255
    torch.testing.assert_close(data[0][0] * data.std + data.mean, raw)


def test_cifar100_and_svhn_readers(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"fine_labels": [1, 99, 5, 0]}, f)
    data, info = load_dataset("cifar100", str(tmp_path))
    assert len(data) == 4 and info.num_classes == 100 and int(data[1][1]) == 99
    from scipy.io import savemat

    savemat(tmp_path / "train_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8),
                                            "y": np.array([[10], [1], [2], [3], [9]])})
    data, info = load_dataset("svhn", str(tmp_path))
    assert len(data) == 5 and int(data[0][1]) == 0  # SVHN's label 10 is the digit 0


def test_pickles_with_code_are_refused(tmp_path):
    folder = write_cifar10(str(tmp_path))

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", str(tmp_path))


def test_missing_data_is_one_clear_sentence(tmp_path, capsys):
    assert main(["search", "--dataset", "cifar10", "--out", str(tmp_path / "r")]) == 2
    assert "needs --data DIR" in capsys.readouterr().err
    assert main(["search", "--dataset", "cifar10", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err


def test_split_is_seeded_and_disjoint():
    data, _ = load_dataset("digits")
    a1, b1 = split(data, 0.5, seed=3)
    a2, _ = split(data, 0.5, seed=3)
    assert a1.indices == a2.indices and not set(a1.indices) & set(b1.indices)
    assert len(a1) + len(b1) == len(data) == 1797


def test_search_runs_on_a_cifar_format_folder(tmp_path):
    write_cifar10(str(tmp_path / "data"))
    assert main(["search", "--dataset", "cifar10", "--data", str(tmp_path / "data"), "--epochs", "1", "--C", "2",
                 "--layers", "3", "--steps", "2", "--batch-size", "8", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "genotype.txt").exists()


def test_embedded_digits_equal_scikit_learns():
    # pynas ships the digits (pynas/_data/digits.npz) so that no scikit-learn is needed;
    # where scikit-learn is installed, the copy must be its load_digits() exactly.
    from pynas.data import load_digits_arrays

    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    digits = sklearn_datasets.load_digits()
    images, target = load_digits_arrays()
    assert images.shape == (1797, 8, 8) and target.shape == (1797,)
    np.testing.assert_array_equal(images.astype(np.float64), digits.images)
    np.testing.assert_array_equal(target.astype(np.int64), digits.target)


def test_digits_load_without_scikit_learn(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    data, info = load_dataset("digits")
    x, y = data[0]
    assert len(data) == 1797 and info.image_size == 8 and x.shape == (1, 8, 8) and int(y) == 0
    assert abs(float(data.tensors[0].mean())) < 1e-5


def test_augmentation_is_a_padded_crop_a_flip_and_a_cutout_of_the_stored_image(tmp_path):
    # Each augmented image, checked by value against brute force over every crop offset and flip of the
    # 4-padded stored image; outside the cutout square everything matches, inside it is 0 after normalisation.
    write_cifar10(str(tmp_path))
    data, _ = load_dataset("cifar10", str(tmp_path), cutout=8)
    batch = pickle.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="bytes")
    raw = torch.tensor(batch[b"data"][0]).view(3, 32, 32).float() / 255
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    torch.manual_seed(0)
    offsets, flips = set(), 0
    for _ in range(40):
        x = data[0][0]
        cut = (x == 0).all(0)  # the cutout square (normalised zeros)
        rows, cols = cut.any(1).nonzero().flatten(), cut.any(0).nonzero().flatten()
        if len(rows):
            assert len(rows) <= 8 and len(cols) <= 8 and cut[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
        pixels = x * data.std + data.mean
        matches = [(top, left, flip) for top in range(9) for left in range(9) for flip in (False, True)
                   if torch.allclose(((padded[:, top:top + 32, left:left + 32].flip(-1) if flip
                                       else padded[:, top:top + 32, left:left + 32]) - pixels)[:, ~cut].abs(),
                                     torch.zeros(1), atol=1e-6)]
        assert matches, "not a crop/flip of the stored image"
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(offsets) > 10 and 5 < flips < 35  # crops and flips are drawn, not fixed
