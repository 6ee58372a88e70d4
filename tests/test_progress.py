"""The progress display (pynas/progress.py): plain lines every N steps off a
terminal, a tqdm bar on one, nothing when quiet; running means, images/s and the
time left checked against numbers worked out here from a fake clock, and device
tensors read only when shown."""
import io
import sys

import pytest
import torch

from pynas._optional import MissingDependency
from pynas.progress import PROGRESS_SECONDS, Progress, duration

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def reads(monkeypatch):
    """Each read of a tensor's value (a host synchronisation on a device) is recorded."""
    calls = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


def test_durations():
    assert [duration(s) for s in (0, 42, 59.6, 151, 3599, 3725)] == ["0s", "42s", "1m00s", "2m31s", "59m59s",
                                                                     "1h02m"]


def test_plain_lines_every_n_steps_with_running_means_rate_and_time_left():
    # Ten steps of 10, 20, 30, ... seconds; the last batch smaller, as a loader without drop_last gives.
    seconds = [10 * (i + 1) for i in range(10)]
    images = [64] * 9 + [16]
    losses = [2.0, 1.5, 1.25, 1.0, 0.875, 0.75, 0.5, 0.25, 0.125, 4.0]
    accs = [0.0, 0.25, 0.5, 0.5, 0.75, 0.625, 1.0, 0.875, 0.75, 0.0]
    clock, out = Clock(100.0), io.StringIO()
    with Progress(log_every=3, stream=out, clock=clock).epoch("epoch 2/5", 10) as bar:
        for i in range(10):
            clock.t += seconds[i]
            bar.update(images[i], loss=losses[i], acc=accs[i])
    expected = []
    for k in (3, 6, 9):
        seen = sum(images[:k])
        loss = sum(l * n for l, n in zip(losses[:k], images[:k])) / seen
        acc = sum(a * n for a, n in zip(accs[:k], images[:k])) / seen
        elapsed = sum(seconds[:k])
        expected.append((k, loss, acc, seen / elapsed, (10 - k) * elapsed / k))
    # Worked out by hand: 192 images in 60 s (3.2/s), mean step 20 s, 7 steps left = 140 s; 384 in 210 s
    # (1.83/s), 4 steps of 35 s = 140 s; 576 in 450 s (1.28/s), one step of 50 s.
    assert [(round(r, 2), round(t)) for *_, r, t in expected] == [(3.2, 140), (1.83, 140), (1.28, 50)]
    assert out.getvalue().splitlines() == [
        "epoch 2/5 step 3/10 loss 1.583 acc 0.250 3.2 img/s 2m20s left",
        "epoch 2/5 step 6/10 loss 1.229 acc 0.438 1.8 img/s 2m20s left",
        "epoch 2/5 step 9/10 loss 0.917 acc 0.583 1.3 img/s 50s left"]
    assert [f"{loss:.3f} {acc:.3f}" for _, loss, acc, *_ in expected] == ["1.583 0.250", "1.229 0.438",
                                                                          "0.917 0.583"]
    assert bar.summary() == (550.0, 592 / 550)


def test_plain_lines_show_the_rate_in_whole_images_from_ten_a_second_and_only_what_was_given():
    clock, out = Clock(), io.StringIO()
    with Progress(log_every=2, stream=out, clock=clock).epoch("round 1", 4) as bar:
        for _ in range(4):
            clock.t += 0.5
            bar.update(128)
    # 256 images in 1 s; 2 steps left of 0.5 s; no loss or accuracy given, none shown
    assert out.getvalue().splitlines() == ["round 1 step 2/4 256 img/s 1s left", "round 1 step 4/4 256 img/s 0s left"]


@pytest.mark.parametrize("steps, lines", [(391, [40 * k for k in range(1, 10)]), (25, [3 * k for k in range(1, 9)]),
                                          (7, [1, 2, 3, 4, 5, 6, 7])])
def test_by_default_about_ten_lines_per_epoch(steps, lines):
    out = Progress(stream=io.StringIO(), clock=Clock())
    with out.epoch("epoch 1/1", steps) as bar:
        for _ in range(steps):
            bar.update(1, loss=1.0)
    assert [int(line.split()[3].split("/")[0]) for line in out.stream.getvalue().splitlines()] == lines


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_quiet_prints_nothing_and_reads_no_tensor(stream, reads):
    clock = Clock(5.0)
    progress = Progress(quiet=True, log_every=1, stream=stream(), clock=clock)
    with progress.epoch("epoch 1/1", 3) as bar:
        for _ in range(3):
            clock.t += 2.0
            bar.update(10, loss=torch.tensor(1.0), acc=torch.tensor(0.5))
    assert progress.stream.getvalue() == "" and reads == []
    assert bar.summary() == (6.0, 5.0)


def test_a_terminal_gets_a_bar_with_steps_rate_means_and_time_left_and_it_is_cleared_at_the_end():
    clock, out = Clock(), Terminal()
    losses, accs = [1.0, 0.5, 0.25, 0.75], [0.25, 0.5, 0.75, 1.0]
    with Progress(stream=out, clock=clock).epoch("epoch 3/50", 4) as bar:
        for i in range(4):
            clock.t += 45.0  # each step past PROGRESS_SECONDS: every step is shown
            bar.update(90, loss=losses[i], acc=accs[i])
    # tqdm pads a render with spaces over a longer previous one
    shown = [s.rstrip() for s in out.getvalue().split("\r") if s.strip()]
    # 180 images in 90 s: 2 img/s; two steps of 45 s left
    second = [s for s in shown if "step 2/4" in s][-1]  # the last render of step 2: with its postfix
    assert second.startswith("epoch 3/50  50%|")
    assert second.endswith(f"step 2/4, loss {0.75:.3f} acc {0.375:.3f} 2.0 img/s 1m30s left")
    assert shown[-1].startswith("epoch 3/50 100%|")
    assert shown[-1].endswith(f"step 4/4, loss {2.5 / 4:.3f} acc {2.5 / 4:.3f} 2.0 img/s 0s left")
    # The bar is wiped at the end: the epoch's summary line takes its place.
    assert out.getvalue().endswith("\r") and not out.getvalue().split("\r")[-2].strip()
    assert bar.summary() == (180.0, 2.0)


def test_the_bar_reads_device_tensors_at_most_once_per_refresh(reads):
    clock, out = Clock(), Terminal()
    assert PROGRESS_SECONDS == 1.0
    losses = torch.linspace(2.0, 0.2, 10)
    accs = torch.linspace(0.1, 1.0, 10)
    per_step = []
    with Progress(stream=out, clock=clock).epoch("epoch 1/1", 10) as bar:
        for i in range(10):
            clock.t += 0.25  # shown at 1 s, 2 s and at the last step
            bar.update(8, loss=losses[i], acc=accs[i])
            per_step.append(len(reads))
    assert per_step == [0, 0, 0, 2, 2, 2, 2, 4, 4, 6]
    last = [s for s in out.getvalue().split("\r") if "step 10/10" in s][-1]
    assert f"loss {sum(losses.tolist()) / 10:.3f} acc {sum(accs.tolist()) / 10:.3f} 32 img/s 0s left" in last


def test_plain_lines_read_device_tensors_only_when_printed(reads):
    clock, out = Clock(), io.StringIO()
    with Progress(log_every=4, stream=out, clock=clock).epoch("epoch 1/1", 10) as bar:
        per_step = []
        for _ in range(10):
            clock.t += 1.0
            bar.update(4, loss=torch.tensor(0.5), acc=torch.tensor(0.25))
            per_step.append(len(reads))
    assert per_step == [0, 0, 0, 2, 2, 2, 2, 4, 4, 4]
    assert out.getvalue().splitlines()[-1] == "epoch 1/1 step 8/10 loss 0.500 acc 0.250 4.0 img/s 2s left"


def test_a_loss_with_its_graph_is_summed_detached():
    w = torch.tensor(2.0, requires_grad=True)
    with Progress(log_every=1, stream=io.StringIO(), clock=Clock()).epoch("epoch 1/1", 2) as bar:
        bar.update(1, loss=w * 3)
        bar.update(1, loss=w * 3)
    assert not bar._sums["loss"][0].requires_grad


def test_summary_inside_the_block_counts_to_now():
    clock = Clock(10.0)
    with Progress(stream=io.StringIO(), clock=clock).epoch("epoch 1/1", 100) as bar:
        clock.t += 4.0
        bar.update(32)
        assert bar.summary() == (4.0, 8.0)
        clock.t += 4.0
    clock.t += 100.0  # after the block: its end is kept
    assert bar.summary() == (8.0, 4.0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_log_every_must_be_a_positive_whole_number(bad):
    with pytest.raises(ValueError, match=r"^--log-every must be a whole number of steps, at least 1, got"):
        Progress(log_every=bad, stream=io.StringIO())


def test_without_tqdm_a_terminal_is_refused_in_one_line_and_a_log_needs_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` raises ImportError
    with pytest.raises(MissingDependency, match=r"^pynas needs tqdm for the progress bar: pip install tqdm$"):
        Progress(stream=Terminal())
    out = io.StringIO()
    with Progress(log_every=1, stream=out, clock=Clock()).epoch("epoch 1/1", 1) as bar:
        bar.update(1, loss=1.0)
    assert out.getvalue().startswith("epoch 1/1 step 1/1 loss 1.000")
