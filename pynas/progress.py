"""Progress of long loops (epochs of search and training, PT's rounds, the
analyses' samples): a tqdm bar on a terminal, a plain line every ``log_every``
steps elsewhere (a log file, CI), nothing when quiet.

Losses and accuracies may be 0-dim device tensors: they are summed on the
device and read (a host synchronisation) only when shown, at most every
:data:`PROGRESS_SECONDS` on a terminal and every ``log_every`` steps otherwise.

    progress = Progress(quiet=args.quiet, log_every=args.log_every)
    with progress.epoch(f"epoch {e + 1}/{epochs}", len(batches)) as bar:
        for x, y in batches:
            ...
            bar.update(len(y), loss=loss.detach(), acc=(pred == y).float().mean())
    seconds, images_per_second = bar.summary()
"""
import math
import sys
import time

from ._optional import require

PROGRESS_SECONDS = 1.0  # the bar's loss and accuracy (a host synchronisation) at most this often
LINES_PER_EPOCH = 10  # plain lines per epoch unless --log-every says otherwise


def default_log_every(total_steps: int) -> int:
    """Steps between plain lines: about :data:`LINES_PER_EPOCH` lines per epoch."""
    return max(1, math.ceil(total_steps / LINES_PER_EPOCH))


def duration(seconds: float) -> str:
    """``42s``, ``2m31s`` or ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _rate(images_per_second: float) -> str:
    # A CPU search makes a few images a second: keep a digit there.
    return f"{images_per_second:.1f}" if images_per_second < 10 else f"{images_per_second:.0f}"


class Progress:
    """How one command shows its loops. The mode follows from ``quiet``, then
    from whether ``stream`` (default: stdout) is a terminal; ``log_every``
    (default: per epoch, :func:`default_log_every`) spaces the plain lines."""

    def __init__(self, quiet: bool = False, log_every: int = None, stream=None, clock=time.monotonic):
        if log_every is not None and (isinstance(log_every, bool) or not isinstance(log_every, int)
                                      or log_every < 1):
            raise ValueError(f"--log-every must be a whole number of steps, at least 1, got {log_every!r}")
        self.stream = sys.stdout if stream is None else stream
        self.log_every, self.clock = log_every, clock
        isatty = getattr(self.stream, "isatty", None)
        self.mode = "quiet" if quiet else "bar" if isatty is not None and isatty() else "lines"
        # On a terminal a missing tqdm stops the command before its work starts, in one line.
        self._tqdm = require("tqdm", needed_for="the progress bar").tqdm if self.mode == "bar" else None

    def epoch(self, description: str, total_steps: int) -> "EpochProgress":
        """The display of one epoch (or round) of ``total_steps`` steps, as a context manager."""
        return EpochProgress(self, description, total_steps)


class EpochProgress:
    """Steps done, images/s, running loss and accuracy (means over the images
    seen) and the time left, (total - done) × the mean step time so far."""

    def __init__(self, progress: Progress, description: str, total_steps: int):
        self.progress, self.description, self.total = progress, description, total_steps
        self.log_every = progress.log_every or default_log_every(total_steps)
        self.steps = self.images = 0
        self.start = self.end = None
        self._sums = {}  # metric -> [Σ value × images (a device tensor, maybe), images]
        self._bar = None
        self._shown = None

    def __enter__(self):
        self.start = self._shown = self.progress.clock()
        if self.progress.mode == "bar":
            # leave=False: the epoch's summary line takes the bar's place, as one line per epoch.
            self._bar = self.progress._tqdm(total=self.total, desc=self.description, file=self.progress.stream,
                                            leave=False, dynamic_ncols=True,
                                            bar_format="{desc} {percentage:3.0f}%|{bar}| step {n_fmt}/{total_fmt}"
                                                       "{postfix}")
        return self

    def __exit__(self, *exc):
        self.end = self.progress.clock()
        if self._bar is not None:
            self._bar.close()
        return False

    def update(self, images: int, loss=None, acc=None) -> None:
        """One step over ``images`` images, whose mean ``loss`` and ``acc`` (floats or 0-dim tensors) are optional."""
        self.steps += 1
        self.images += images
        mode = self.progress.mode
        if mode == "quiet":
            return
        for name, value in (("loss", loss), ("acc", acc)):
            if value is not None:
                # A loss still attached to its graph would keep every step's graph alive in the sum.
                value = value.detach() if hasattr(value, "detach") else value
                total = self._sums.setdefault(name, [0.0, 0])
                total[0] = total[0] + value * images
                total[1] += images
        if mode == "lines":
            if self.steps % self.log_every == 0:
                print(f"{self.description} step {self.steps}/{self.total} {self._stats()}",
                      file=self.progress.stream, flush=True)
            return
        self._bar.update(1)
        now = self.progress.clock()
        if now - self._shown >= PROGRESS_SECONDS or self.steps == self.total:
            self._shown = now
            self._bar.set_postfix_str(self._stats(now))  # refreshes the bar with it

    def _stats(self, now=None) -> str:
        """``loss 1.234 acc 0.567 1234 img/s 2m31s left``: each running mean read from the device once."""
        now = self.progress.clock() if now is None else now
        elapsed = now - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        left = max(self.total - self.steps, 0) * elapsed / self.steps
        means = [f"{name} {float(s) / max(n, 1):.3f}" for name, (s, n) in self._sums.items()]
        return " ".join(means + [f"{_rate(rate)} img/s", f"{duration(left)} left"])

    def summary(self):
        """``(epoch_seconds, images_per_second)``: wall time from entering the
        block to leaving it (to now while inside), and the images over it."""
        seconds = (self.progress.clock() if self.end is None else self.end) - self.start
        return seconds, (self.images / seconds if seconds > 0 else 0.0)


def add_log_every_argument(parser) -> None:
    """``--log-every N`` for a command that shows its progress (search, select, train, analyze)."""
    parser.add_argument("--log-every", type=int, default=None, metavar="N",
                        help="off a terminal, a progress line every N steps (default: about ten per epoch); on a "
                             "terminal a bar")
