"""Atomic file writes: write a temporary file beside the target, then rename,
so a killed process leaves either the old file or the new one, never half."""
import json
import os
import tempfile
from pathlib import Path

import torch


def atomic_write(path, write) -> None:
    """Calls ``write(tmp_path)`` and renames the result to ``path``."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
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
