"""Atomic file writes: write a temporary file beside the target, then rename,
so a killed process leaves either the old file or the new one, never half.

Checkpoints know what they are: :func:`save_checkpoint` writes a header (kind:
search, pt or train; space, method, parameter shapes, pynas version) and
:func:`load_checkpoint` checks it before anything of the state is used, so a
checkpoint of another run, or a file that is no checkpoint at all, is refused in
one line naming the file. Loads are ``weights_only``: no pickled code runs.
"""
import dataclasses
import glob
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import InputError, quoted

# Temporary files of atomic_write: ".<target name>.<random>.tmp" (older pynas: "tmp<random>.tmp").
_TMP_PATTERNS = (".*.*.tmp", "tmp*.tmp")

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write) -> None:
    """Calls ``write(tmp_path)`` and renames the result to ``path``."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual permissions
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:  # name the file (ENOSPC, read-only, ...)
            raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from None
        raise


def remove_stale_temporaries(folder) -> list:
    """Removes the temporary files that killed atomic writes left in ``folder``
    (call it when a run starts there: no write of that run is under way); returns their paths."""
    removed = []
    for pattern in _TMP_PATTERNS:
        for path in glob.glob(os.path.join(glob.escape(str(folder)), pattern)):
            if os.path.isfile(path):
                try:
                    os.unlink(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass
    return removed


def write_text(path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


def write_json(path, payload) -> None:
    write_text(path, json.dumps(payload, indent=1) + "\n")


def save(obj, path) -> None:
    """``torch.save`` atomically (checkpoints)."""
    atomic_write(path, lambda p: torch.save(obj, p))


def append_jsonl(path, record) -> None:
    """Appends one JSON line (a per-epoch metrics log)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        if e.errno is None:
            raise
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from None


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


# -- configurations ---------------------------------------------------------------


def read_config(path, cls, what: str):
    """The dataclass ``cls`` from the JSON object in ``path`` (a run's config.json);
    ``what`` names the option that led here (``--resume RUN_DIR``). Anything else
    than an object of ``cls``' fields is refused in one line naming the file."""
    try:
        with open(path) as f:
            loaded = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what}: {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what}: {path} is a directory, not a configuration file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{what}: {path} is not JSON ({e})") from None
    except RecursionError:
        raise InputError(f"{what}: {path} is not a run configuration (nested too deeply)") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{what}: {path} is not a run configuration (a JSON object)")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(loaded) - fields)
    if unknown:
        raise InputError(f"{what}: {path} has unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(quoted(k, 40) for k in unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    try:
        return cls(**loaded)
    except TypeError as e:
        raise InputError(f"{what}: {path}: {e}") from None


# -- checkpoints --------------------------------------------------------------------

CHECKPOINT_KINDS = ("search", "pt", "train")
_HEADER = "pynas_checkpoint"


def parameter_shapes(module) -> dict:
    """``{name: shape}`` of every parameter and buffer of ``module`` (its state dict)."""
    return {name: list(t.shape) for name, t in module.state_dict().items()}


def checkpoint_header(kind: str, space: str, method: str, shapes: dict, **extra) -> dict:
    from . import __version__

    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, got {kind!r}")
    return {"kind": kind, "space": space, "method": method, "shapes": shapes, "version": __version__, **extra}


def save_checkpoint(path, header: dict, state: dict) -> None:
    """``torch.save`` of ``state`` with ``header`` (:func:`checkpoint_header`), atomically."""
    save({_HEADER: header, **state}, path)


def _read(path, map_location):
    """``torch.load(weights_only=True)``; any file that is not a loadable checkpoint -> InputError."""
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory, not a checkpoint")
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except pickle.UnpicklingError as e:  # weights_only refused something: never run it
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path} is not a pynas checkpoint: it holds objects that are not plain data "
                         f"(refused unloaded: {quoted(first, 160)})") from None
    except (EOFError, RuntimeError, ValueError, zipfile.BadZipFile, KeyError, AttributeError, TypeError,
            IndexError, OverflowError, MemoryError, UnicodeDecodeError) as e:
        if os.path.exists(path) and os.path.getsize(path) == 0:
            raise InputError(f"{path} is empty, not a checkpoint (a write that never finished?)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path} is not a readable checkpoint (truncated or another format: "
                         f"{quoted(first, 160)})") from None


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def load_checkpoint(path, kind: str, expected: dict, shapes: dict = None, map_location="cpu") -> dict:
    """The state saved by :func:`save_checkpoint` at ``path``, after checking that it
    is a ``kind`` checkpoint whose header agrees with ``expected`` (e.g. space and
    method) and, when given, with the parameter ``shapes`` of the model it is for.
    Any mismatch, and any file that is not such a checkpoint, raises InputError
    in one line naming the file."""
    state = _read(path, map_location)
    header = state.get(_HEADER) if isinstance(state, dict) else None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise InputError(f"{path} is not a pynas checkpoint with a header (written by another program, or by "
                         f"a pynas before checkpoints carried their kind): start a new run")
    written = f" (pynas {header.get('version', '?')})"
    if header["kind"] != kind:
        raise InputError(f"{path} is a {quoted(header['kind'], 30)} checkpoint, not a {kind} checkpoint{written}")
    for key, want in expected.items():
        got = header.get(key)
        if got != want:
            raise InputError(f"{path} is a {kind} checkpoint of {key} {quoted(got, 60)}, but this run's {key} is "
                             f"{quoted(want, 60)}{written}")
    if shapes is not None:
        saved = header.get("shapes")
        if not isinstance(saved, dict):
            raise InputError(f"{path}: its header has no parameter shapes{written}")
        missing, extra = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
        if missing or extra:
            names = ", ".join((missing + extra)[:3])
            raise InputError(f"{path} holds a different network: {len(missing)} parameters missing, {len(extra)} "
                             f"unexpected ({names}{' ...' if len(missing) + len(extra) > 3 else ''}){written}")
        for name, shape in shapes.items():
            if list(saved[name]) != list(shape):
                raise InputError(f"{path} holds a different network: {name} has shape {_shape_str(saved[name])} "
                                 f"in the checkpoint but {_shape_str(shape)} here{written}")
    return state


def load_state(path, module, state_dict) -> None:
    """``module.load_state_dict(state_dict)``; a state that does not fit (a forged or
    damaged checkpoint whose header passed) -> InputError naming ``path``."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: its state does not fit this run ({quoted(first, 160)})") from None
