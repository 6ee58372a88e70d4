"""Atomic file writes: write a temporary file beside the target, then rename,
so a killed process leaves either the old file or the new one, never half."""
import json
import os
import tempfile
from pathlib import Path

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write) -> None:
    """Calls ``write(tmp_path)`` and renames the result to ``path``."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


def write_json(path, payload) -> None:
    write_text(path, json.dumps(payload, indent=1) + "\n")


def save(obj, path) -> None:
    """``torch.save`` atomically (checkpoints)."""
    atomic_write(path, lambda p: torch.save(obj, p))


def append_jsonl(path, record) -> None:
    """Appends one JSON line (a per-epoch metrics log)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl(path, epoch: int) -> None:
    """Keeps the records of epochs up to ``epoch`` (a resumed run's checkpoint):
    lines written after it, or cut short by a kill, are dropped."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("epoch", epoch + 1) <= epoch:
                kept.append(line if line.endswith("\n") else line + "\n")
    write_text(path, "".join(kept))
