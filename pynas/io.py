"""Atomic file writes: write a temporary file beside the target, then rename,
so a killed process leaves either the old file or the new one, never half.

Checkpoints know what they are: :func:`save_checkpoint` writes a header (kind:
search, pt or train; space, method, parameter shapes, pynas version) and
:func:`load_checkpoint` checks it before anything of the state is used, so a
checkpoint of another run, or a file that is no checkpoint at all, is refused in
one line naming the file. Loads are ``weights_only``: no pickled code runs.

The header also holds a SHA-256 of the header and the state (every tensor's bytes,
dtype and shape, and the other values, in order), checked on every load: a byte
changed on disk is refused in one line, never resumed. A disk that fills up while
a checkpoint is written keeps the previous one and says so in one line.
"""
import dataclasses
import errno
import glob
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import DiskFullError, InputError, quoted

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
    """``torch.save`` of ``state`` with ``header`` (:func:`checkpoint_header`) and
    their checksum, atomically. A full disk -> DiskFullError naming the checkpoint kept."""
    digest, size = _checksum(header, state)
    # The checkpoint it replaces is as large as this one (the same run); the size hashed is a lower bound.
    needed = max(size, os.path.getsize(path) if os.path.isfile(path) else 0)
    try:
        atomic_write(path, lambda tmp: _torch_save({_HEADER: {**header, "checksum": digest}, **state}, tmp, needed))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(_disk_full_message(path, header["kind"], os.strerror(e.errno))) from None


def _torch_save(obj, tmp, needed: int) -> None:
    """``torch.save``, whose C++ stream fails on a full disk without an errno (``basic_ios::clear:
    iostream error``, ``unexpected pos``): with less room left than the checkpoint needs, that is ENOSPC."""
    try:
        torch.save(obj, tmp)
    except RuntimeError:
        if shutil.disk_usage(os.path.dirname(tmp) or ".").free >= needed:
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None


def _checksum(header: dict, state: dict):
    """``("sha256:<hex>", about the bytes torch.save writes)`` of ``header`` (its checksum
    left out) and ``state`` (its header left out): their structure and plain values, then
    every tensor's bytes in one pass, on the CPU whatever their device or memory layout,
    so that a checkpoint loaded anywhere hashes as it was saved."""
    tensors = []
    skeleton = _skeleton([{k: v for k, v in header.items() if k != "checksum"},
                          {k: v for k, v in state.items() if k != _HEADER}], tensors)
    plain = repr(skeleton).encode()
    h = hashlib.sha256(plain)
    for t in tensors:
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # any dtype (bfloat16, bool) as its bytes
    return f"sha256:{h.hexdigest()}", len(plain) + sum(t.numel() * t.element_size() for t in tensors)


_PLAIN = (int, float, str, type(None))


def _skeleton(value, tensors: list):
    """``value`` with each tensor replaced by its dtype and shape, and appended to ``tensors``
    (on the CPU, contiguous). Its ``repr`` is deterministic: ``torch.load`` returns dicts in
    the order they were saved, and floats' ``repr`` round-trips."""
    if isinstance(value, _PLAIN):  # most values: the ints of the header's shapes
        return value
    if isinstance(value, torch.Tensor):
        tensors.append(value.detach().cpu().contiguous())
        return "tensor", str(value.dtype), tuple(value.shape)
    if isinstance(value, dict):
        return {k: _skeleton(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_skeleton(v, tensors) for v in value]
    if isinstance(value, tuple):  # torch.Size too
        return tuple(_skeleton(v, tensors) for v in value)
    return value


def _disk_full_message(path, kind: str, reason: str) -> str:
    kept = _progress(path, kind)
    kept = f"the last checkpoint ({kept}) is kept" if kept else "no earlier checkpoint is there"
    if kind == "pt":
        how = "run the same `pynas select` again (it continues from there)"
    else:
        how = f"continue with `pynas {kind} --resume {os.path.dirname(path) or '.'}`"
    return f"cannot write {path}: the disk is full ({reason}); {kept}: free some space, then {how}"


def _progress(path, kind: str):
    """``"epoch N"`` (``"round N"`` for PT) of the checkpoint at ``path``; None without one."""
    if not os.path.isfile(path):
        return None
    try:
        state = _read(path, "cpu")
    except InputError:
        return "unreadable"
    key, name = ("rounds", "round") if kind == "pt" else ("epoch", "epoch")
    done = state.get(key) if isinstance(state, dict) else None
    return f"{name} {done}" if isinstance(done, int) else "its progress unknown"


def _read(path, map_location):
    """``torch.load(weights_only=True)``; any file that is not a loadable checkpoint -> InputError."""
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory, not a checkpoint")
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except pickle.UnpicklingError as e:  # weights_only refused something: never run it
        raise InputError(f"{path} is not a checkpoint: it holds objects other than tensors and plain data, "
                         f"refused unloaded ({quoted(_refused_global(e), 160)})") from None
    except (EOFError, RuntimeError, ValueError, zipfile.BadZipFile, KeyError, AttributeError, TypeError,
            IndexError, OverflowError, MemoryError, UnicodeDecodeError) as e:
        if os.path.exists(path) and os.path.getsize(path) == 0:
            raise InputError(f"{path} is empty, not a checkpoint (a write that never finished?)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path} is not a readable checkpoint (truncated or another format: "
                         f"{quoted(first, 160)})") from None


def _refused_global(error) -> str:
    """The line of torch's weights_only refusal that names what was refused (its first
    lines advise loading the file unsafely, which pynas never does)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if "GLOBAL" in line), lines[0])


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
    _verify(path, header, state)
    written = f" (pynas {header.get('version', '?')})"
    if header["kind"] != kind:
        raise InputError(f"{path} is a {quoted(header['kind'], 30)} checkpoint, not a {kind} checkpoint{written}")
    for key, want in expected.items():
        got = header.get(key)
        if got != want:
            raise InputError(f"{path} is a {kind} checkpoint of {key} {quoted(got, 60)}, but this run's {key} is "
                             f"{quoted(want, 60)}{written}")
    if shapes is not None:
        check_parameter_shapes(path, state, shapes)
    return state


def check_parameter_shapes(path, state: dict, shapes: dict) -> None:
    """The checkpoint ``state`` read from ``path`` (:func:`load_checkpoint`) is for a model of parameter
    ``shapes``, or InputError in one line naming the file (for a model whose shapes are only known after
    reading the checkpoint, e.g. a DrNAS supernet widened in its second stage)."""
    header = state[_HEADER]
    written = f" (pynas {header.get('version', '?')})"
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


def _verify(path, header: dict, state: dict) -> None:
    """The checksum :func:`save_checkpoint` stored in ``header`` matches ``state``, or InputError."""
    saved = header.get("checksum")
    if not isinstance(saved, str):
        raise InputError(f"{path} is a checkpoint without a checksum (pynas {header.get('version', '?')}, before "
                         f"checkpoints carried one): its content cannot be verified: start a new run")
    if _checksum(header, state)[0] != saved:
        raise InputError(f"{path} is corrupted: its content does not match the checksum saved with it (a damaged "
                         f"disk or copy?): use an intact copy or start a new run")


def read_weights(path):
    """What ``torch.save`` wrote at ``path`` (a state_dict, or a pynas checkpoint, whose
    checksum is verified), read as checkpoints are: failures are InputError naming ``path``."""
    state = _read(path, "cpu")
    header = state.get(_HEADER) if isinstance(state, dict) else None
    if isinstance(header, dict):
        _verify(path, header, state)
    return state


def load_state(path, module, state_dict) -> None:
    """``module.load_state_dict(state_dict)``; a state that does not fit (a forged or
    damaged checkpoint whose header passed) -> InputError naming ``path``."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: its state does not fit this run ({quoted(first, 160)})") from None
