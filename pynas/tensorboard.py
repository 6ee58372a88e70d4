"""TensorBoard logging beside metrics.jsonl (``--tensorboard DIR``).

:class:`TensorBoardLogger` takes the per-epoch records that the runs append to
``metrics.jsonl`` and writes their numbers as scalars at step ``record["epoch"]``:

- ``train_loss``, ``val_acc``, ... as ``loss/train``, ``accuracy/val``, ...
  (one chart per quantity, one curve per split);
- ``arch`` (a search's α summary) as ``alpha/<cell type>/edge_<e>/<op>``, the
  probability of each operation on each edge, and ``entropy/<cell type>/edge_<e>``;
- every other number (``temperature``, ``cost``, ``lr``, nested ones such as
  ``grad_correlation``) under its own name, nested keys joined by ``/``;
- ``genotype`` as text.

Needs the ``tensorboard`` package (``pip install "pynas[tensorboard]"``).
"""
import numbers
from typing import Dict, Iterator, Optional, Sequence, Tuple

from ._optional import require

_SPLITS = ("train", "val", "test")
_QUANTITIES = {"loss": "loss", "acc": "accuracy"}
# Not scalars: the step itself, SGAS' decision list (strings), the genotype (written as text).
_SKIP = ("epoch", "decisions", "genotype")


def scalars(record: dict, op_names: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, float]]:
    """The (tag, value) pairs that :class:`TensorBoardLogger` writes for ``record``."""
    for key, value in record.items():
        if key in _SKIP or value is None:
            continue
        if key == "arch" and isinstance(value, dict):
            yield from _arch_scalars(value, op_names)
            continue
        split, _, quantity = key.partition("_")
        if split in _SPLITS and quantity in _QUANTITIES:
            key = f"{_QUANTITIES[quantity]}/{split}"
        yield from _flatten(key, value)


def _arch_scalars(arch: dict, op_names) -> Iterator[Tuple[str, float]]:
    for cell_type, summary in arch.items():
        for e, probs in enumerate(summary.get("probabilities", [])):
            for k, p in enumerate(probs):
                op = op_names[k] if op_names is not None and k < len(op_names) else f"op_{k}"
                yield f"alpha/{cell_type}/edge_{e}/{op}", float(p)
        for e, h in enumerate(summary.get("entropy", [])):
            yield f"entropy/{cell_type}/edge_{e}", float(h)


def _flatten(tag: str, value) -> Iterator[Tuple[str, float]]:
    if isinstance(value, bool):  # e.g. ranks_agree
        yield tag, float(value)
    elif isinstance(value, numbers.Real):
        yield tag, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            if v is not None:
                yield from _flatten(f"{tag}/{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if v is not None:
                yield from _flatten(f"{tag}/{i}", v)
    # strings and other objects are not scalars


class TensorBoardLogger:
    """Writes each per-epoch record as TensorBoard scalars into ``log_dir``.

    ``op_names``: the search space's operation names, for the α tags (else
    ``op_0``, ``op_1``, ...). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, log_dir: str, op_names: Optional[Sequence[str]] = None):
        require("tensorboard", needed_for="--tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir, self.op_names = log_dir, list(op_names) if op_names is not None else None
        self.writer = SummaryWriter(log_dir)

    def log(self, record: Dict, step: Optional[int] = None) -> None:
        step = record.get("epoch", 0) if step is None else step
        for tag, value in scalars(record, self.op_names):
            self.writer.add_scalar(tag, value, step)
        if isinstance(record.get("genotype"), str):
            self.writer.add_text("genotype", record["genotype"], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
