"""Checkpoints carry a checksum of their content: one byte changed on disk is refused
by every loader in one line naming the file, with the run directory left as it was;
checkpoints without a checksum are refused with the hint to start anew. A disk that
fills up while a checkpoint is written keeps the previous checkpoint and says so in
one line, and a pickle given to `analyze landscape --checkpoint` is refused in one."""
import collections
import errno
import json
import os
import re
import shutil
import struct
import zipfile

import pytest
import torch
from conftest import DEVICES

from pynas.cli import main
from pynas.errors import DiskFullError, InputError
from pynas.io import checkpoint_header, load_checkpoint, save_checkpoint

TINY_SEARCH = ["--epochs", "1", "--C", "2", "--layers", "3", "--steps", "2", "--batch-size", "256", "--quiet"]
TINY_TRAIN = ["--epochs", "1", "--C", "4", "--layers", "2", "--batch-size", "512", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished one-epoch search and a finished one-epoch training on the embedded digits."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["search", *TINY_SEARCH, "--out", str(root / "search")]) == 0
    assert main(["train", *TINY_TRAIN, "--out", str(root / "train")]) == 0
    return root


def copy_run(runs, tmp_path, name):
    shutil.copytree(runs / name, tmp_path / name)
    return tmp_path / name


def snapshot(folder):
    """Every file under ``folder`` with its bytes and modification time, and every folder."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def one_line_error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def flip_a_weight(path):
    """Changes one bit inside the stored bytes of the checkpoint's largest weight, in place
    (the zip's CRC of that entry no longer matches; everything else is as written)."""
    state = torch.load(path, weights_only=True)
    name, weight = max(((k, v) for k, v in state["model"].items() if v.is_floating_point()),
                       key=lambda kv: kv[1].numel())
    raw = weight.contiguous().numpy().tobytes()
    data = path.read_bytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0  # the tensor's storage, found once
    with open(path, "r+b") as f:
        f.seek(at + len(raw) // 2)
        f.write(bytes([data[at + len(raw) // 2] ^ 0x10]))
    # torch itself loads the damaged file (it does not check the zip's CRCs): one value of the weight changed.
    damaged = torch.load(path, weights_only=True)["model"][name]
    assert int((damaged != weight).sum()) == 1
    return name


def storage_offsets(path):
    """(start, size) in the file of every tensor storage (``data/N`` entry) of a ``torch.save`` zip."""
    spans = []
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if "/data/" in info.filename:
                f.seek(info.header_offset)
                local = f.read(30)  # the local file header: name and extra field lengths at 26 and 28
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                spans.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return spans


# -- a flipped byte ------------------------------------------------------------------------


@pytest.mark.slow(seconds=60)
@pytest.mark.parametrize("command", ["search --resume", "select", "select pt", "evaluate", "analyze cost",
                                     "train --resume", "analyze landscape"])
def test_a_flipped_byte_is_refused_by_every_loader(runs, tmp_path, capsys, command):
    run = copy_run(runs, tmp_path, "train" if command in ("train --resume", "analyze landscape") else "search")
    path = run / "checkpoint.pt"
    flip_a_weight(path)
    argv = {"search --resume": ["search", "--resume", str(run)],
            "select": ["select", "--run", str(run), "--method", "magnitude"],
            "select pt": ["select", "--run", str(run), "--method", "pt", "--tune-epochs", "0", "--val-batches", "1"],
            "evaluate": ["evaluate", "--run", str(run), "--genotype", "DARTS_V2"],
            "analyze cost": ["analyze", "cost", "--run", str(run), "--samples", "1", "--out", str(tmp_path / "cost")],
            "train --resume": ["train", "--resume", str(run)],
            "analyze landscape": ["analyze", "landscape", "--genotype", str(run / "genotype.txt"), "--C", "4",
                                  "--layers", "2", "--checkpoint", str(path), "--out", str(tmp_path / "landscape")],
            }[command]
    before = snapshot(tmp_path)
    err = one_line_error(capsys, main(argv))
    assert f"{path} is corrupted" in err
    assert snapshot(tmp_path) == before  # nothing written, nothing truncated, no output folder


def test_every_byte_of_every_tensor_is_covered(tmp_path):
    """Any dtype and layout: each byte of each stored tensor, changed, is refused."""
    x = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    state = {"epoch": 3, "model": {"w": x.to(memory_format=torch.channels_last),  # stored non-contiguous
                                   "half": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
                                   "mask": torch.tensor([True, False]), "count": torch.tensor(7),
                                   "scale": torch.tensor(0.25, dtype=torch.float64), "empty": torch.zeros(0)},
             "rng": (3, (1, 2), None), "lr": [0.1, 1e-300]}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, checkpoint_header("search", "darts", "darts", {}), state)
    loaded = load_checkpoint(path, "search", {})
    for name, t in state["model"].items():
        assert loaded["model"][name].dtype == t.dtype and torch.equal(loaded["model"][name], t)
    assert loaded["model"]["w"].stride() == state["model"]["w"].stride()  # loaded channels-last: hashed alike
    intact = path.read_bytes()
    spans = storage_offsets(path)
    stored = sum(t.numel() * t.element_size() for t in state["model"].values())
    assert sum(size for _, size in spans) == stored  # every storage found (the empty one has no bytes)
    for start, size in spans:
        for i in range(start, start + size):
            damaged = bytearray(intact)
            damaged[i] ^= 0x01
            path.write_bytes(damaged)
            with pytest.raises(InputError, match=f"^{path} is corrupted"):
                load_checkpoint(path, "search", {})


@pytest.mark.parametrize("change", ["epoch", "learning rate", "header"])
def test_plain_values_and_the_header_are_covered(runs, tmp_path, change):
    """A checkpoint rewritten with another value (its checksum kept) is refused."""
    path = tmp_path / "checkpoint.pt"
    shutil.copy(runs / "search" / "checkpoint.pt", path)
    state = torch.load(path, weights_only=True)
    if change == "epoch":
        state["epoch"] = 0
    elif change == "learning rate":
        group = state["strategy"]["w_opt"]["param_groups"][0]
        group["lr"] = group["lr"] * (1 + 2 ** -40)
    else:
        state["pynas_checkpoint"]["method"] = "snas"
    torch.save(state, path)
    with pytest.raises(InputError, match=f"^{path} is corrupted"):
        load_checkpoint(path, "search", {})


@pytest.mark.parametrize("device", DEVICES)
def test_the_checksum_holds_on_any_device(tmp_path, device):
    """Saved from ``device``, loaded onto the CPU or ``device``: the same bytes, verified."""
    torch.manual_seed(0)
    state = {"model": {"w": torch.randn(5, 3, device=device), "b": torch.randn(3, device=device).bfloat16()}}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, checkpoint_header("train", "darts", "train", {}), state)
    for where in ("cpu", device):
        loaded = load_checkpoint(path, "train", {}, map_location=where)
        assert loaded["model"]["w"].device.type == where and torch.equal(loaded["model"]["w"].cpu(),
                                                                          state["model"]["w"].cpu())
    start, size = storage_offsets(path)[0]
    data = bytearray(path.read_bytes())
    data[start + size - 1] ^= 0x80
    path.write_bytes(data)
    with pytest.raises(InputError, match="is corrupted"):
        load_checkpoint(path, "train", {}, map_location=device)


@pytest.mark.slow(seconds=30)
def test_a_checkpoint_without_a_checksum_is_refused_with_the_hint_to_start_anew(runs, tmp_path, capsys):
    run = copy_run(runs, tmp_path, "search")
    path = run / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["pynas_checkpoint"]["checksum"]  # the format before checksums
    torch.save(state, path)
    before = snapshot(run)
    for argv in (["search", "--resume", str(run)], ["select", "--run", str(run), "--method", "magnitude"]):
        err = one_line_error(capsys, main(argv))
        assert str(path) in err and "without a checksum" in err and "start a new run" in err
    assert snapshot(run) == before


# -- a full disk --------------------------------------------------------------------------


def fill_the_disk_at_save(monkeypatch, nth, failure):
    """``torch.save`` works ``nth - 1`` times, then writes part of the file and fails as on a
    full disk: ``failure`` is the exception (torch's C++ stream gives a RuntimeError without
    an errno, with the disk then showing no room)."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) < nth:
            return real_save(obj, f, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 part of a checkpoint")
        raise failure

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 20, 1 << 20, 0))
    return calls


def assert_kept(folder, path, kept):
    assert path.read_bytes() == kept  # the previous checkpoint, untouched
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))  # no temporary left


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("failure", [RuntimeError("basic_ios::clear: iostream error"),
                                     OSError(errno.ENOSPC, "No space left on device")])
def test_search_on_a_full_disk_keeps_its_last_checkpoint_and_says_so(runs, tmp_path, capsys, monkeypatch, failure):
    run = copy_run(runs, tmp_path, "search")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 2}))  # one more epoch to save
    kept = (run / "checkpoint.pt").read_bytes()
    with monkeypatch.context() as m:
        calls = fill_the_disk_at_save(m, 1, failure)
        err = one_line_error(capsys, main(["search", "--resume", str(run), "--quiet"]))
    assert len(calls) == 1
    assert err == (f"pynas search: cannot write {run / 'checkpoint.pt'}: the disk is full (No space left on device); "
                   f"the last checkpoint (epoch 1) is kept: free some space, then continue with "
                   f"`pynas search --resume {run}`")
    assert_kept(run, run / "checkpoint.pt", kept)
    assert main(["search", "--resume", str(run), "--quiet"]) == 0  # space freed: it goes on
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.slow(seconds=30)
def test_train_on_a_full_disk_keeps_its_last_checkpoint_and_says_so(runs, tmp_path, capsys, monkeypatch):
    run = copy_run(runs, tmp_path, "train")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    kept = (run / "checkpoint.pt").read_bytes()
    fill_the_disk_at_save(monkeypatch, 1, RuntimeError("basic_ios::clear: iostream error"))
    err = one_line_error(capsys, main(["train", "--resume", str(run), "--quiet"]))
    assert err == (f"pynas train: cannot write {run / 'checkpoint.pt'}: the disk is full (No space left on device); "
                   f"the last checkpoint (epoch 1) is kept: free some space, then continue with "
                   f"`pynas train --resume {run}`")
    assert_kept(run, run / "checkpoint.pt", kept)


@pytest.mark.slow(seconds=40)
def test_pt_on_a_full_disk_keeps_its_last_round_and_a_flipped_byte_there_is_refused(runs, tmp_path, capsys,
                                                                                    monkeypatch):
    run = copy_run(runs, tmp_path, "search")
    out, argv = run / "select-pt", ["select", "--run", str(run), "--method", "pt", "--tune-epochs", "0",
                                    "--val-batches", "1", "--quiet"]
    path = out / "select_checkpoint.pt"
    with monkeypatch.context() as m:
        real_save, kept = torch.save, []

        def remember(obj, f):  # the first round's checkpoint, as written
            real_save(obj, f)
            kept.append(open(f, "rb").read())

        m.setattr(torch, "save", remember)
        fill_the_disk_at_save(m, 2, RuntimeError("basic_ios::clear: iostream error"))
        err = one_line_error(capsys, main(argv))
    assert err == (f"pynas select: cannot write {path}: the disk is full (No space left on device); the last "
                   f"checkpoint (round 1) is kept: free some space, then run the same `pynas select` again (it "
                   f"continues from there)")
    assert_kept(out, path, kept[0])
    flip_a_weight(path)
    before = snapshot(run)
    assert f"{path} is corrupted" in one_line_error(capsys, main(argv))
    assert snapshot(run) == before


def test_a_first_checkpoint_on_a_full_disk_says_none_is_kept(tmp_path, monkeypatch):
    fill_the_disk_at_save(monkeypatch, 1, RuntimeError("basic_ios::clear: iostream error"))
    path = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(DiskFullError, match=re.escape("the disk is full (No space left on device); no earlier "
                                                      "checkpoint is there: free some space")):
        save_checkpoint(path, checkpoint_header("search", "darts", "darts", {}), {"epoch": 1})
    assert list(path.parent.iterdir()) == []


def test_a_failed_write_with_room_on_the_disk_is_no_full_disk(tmp_path, monkeypatch):
    """A stream error while the disk has room is a bug: it propagates as it is."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, checkpoint_header("search", "darts", "darts", {}), {"epoch": 1, "w": torch.ones(4)})
    kept = path.read_bytes()

    def broken(obj, f):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="iostream error"):
        save_checkpoint(path, checkpoint_header("search", "darts", "darts", {}), {"epoch": 2, "w": torch.ones(4)})
    assert_kept(tmp_path, path, kept)


# -- analyze landscape --checkpoint -------------------------------------------------------


def test_landscape_refuses_a_pickle_in_one_line(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    err = one_line_error(capsys, main(["analyze", "landscape", "--genotype", "DARTS_V2", "--checkpoint", str(path),
                                       "--out", str(tmp_path / "out")]))
    assert err.startswith(f"pynas analyze landscape: --checkpoint: {path} is not a checkpoint")
    assert "refused unloaded" in err and "system" in err  # what it would have run, named
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
