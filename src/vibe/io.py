"""Atomic writes and safe reads shared by every file format vibe touches.

Writes go *to* the path the user named:
- a regular file (or a new path) is written to a temporary file in the target folder
  and renamed into place, so a crash or a validation error never leaves a partial file;
  the new file gets the mode the umask allows (or keeps the mode of the file it replaces);
- a symlink is followed: its target is replaced, the link stays a link;
- a device or FIFO (`/dev/stdout`, a named pipe) is written directly: renaming over it
  would replace the device node with a regular file.

Commands check every output path before long work starts (`check_output`,
`check_output_dir`) and refuse an output that is one of their inputs (`check_not_input`).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from vibe.errors import InputError


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _resolve_output(path: str | os.PathLike) -> Path:
    """The path a write really goes to: symlinks followed (also dangling ones). A link to a
    device or pipe (/dev/stdout -> /proc/self/fd/1 -> pipe:[N]) stays as it is: only
    opening it reaches the pipe, its resolved name does not exist."""
    target = Path(path)
    if target.is_symlink() and not _is_special(target):
        return Path(os.path.realpath(target))
    return target


def _is_special(target: Path) -> bool:
    """An existing device, FIFO or socket: written in place, never renamed over."""
    try:
        mode = target.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output(path: str | os.PathLike, what: str = "a file") -> Path:
    """Check, before any work, that `path` can take `what`: not a folder, its folder is a
    folder (or can be made). Returns the path the write will really go to."""
    target = _resolve_output(path)
    if target.is_dir():
        raise InputError(path, f"is a folder, cannot write {what} there")
    if _is_special(target):
        return target
    parent = target.parent
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise InputError(path, f"cannot write here ({up} is not a folder)")
            if not os.access(up, os.W_OK | os.X_OK):
                raise InputError(path, f"cannot write here ({up} is not writable)")
            break
    return target


def check_output_dir(path: str | os.PathLike, what: str = "the output files") -> Path:
    """Check, before any work, that `path` is a folder or can become one."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, f"is a file, not a folder; cannot write {what} into it")
    for up in folder.parents:
        if up.exists():
            if not up.is_dir():
                raise InputError(folder, f"cannot make this folder ({up} is not a folder)")
            break
    return folder


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output path that is (or links to) one of the inputs: writing it would
    destroy the input. Paths that are None are skipped."""
    ins = [Path(p) for p in inputs if p is not None]
    for out in outputs:
        if out is None:
            continue
        o = Path(out)
        for i in ins:
            if _same_file(o, i) and not _is_special(_resolve_output(o)):
                also = "" if str(i) == str(out) else f" ({i})"
                raise InputError(out, f"is also an input{also}; write the output to another path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path to write to; on success it ends up at `path` (see the module
    docstring: regular files atomically, devices and FIFOs directly, symlinks followed)."""
    target = check_output(path)
    if _is_special(target):
        yield target
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # an unwritable or impossible output path is a user error
        raise InputError(path, f"cannot write here ({exc.strerror or exc.__class__.__name__})") from None
    try:
        # mkstemp makes 0600 files; vibe's outputs are ordinary files: keep the mode of
        # the file being replaced, else what the umask allows.
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically; numpy arrays and scalars become plain lists and numbers."""
    write_text_atomic(path, json.dumps(obj, default=json_default, indent=None) + "\n")


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)`: numpy arrays and scalars as plain lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def require_file(path: str | os.PathLike, expected: str = "a file") -> Path:
    """`path` as a Path if it names something readable that is not a folder; else
    InputError saying which: a folder, or nothing at all."""
    p = Path(path)
    if p.is_dir():
        raise InputError(p, f"is a folder, expected {expected}")
    if not p.exists():
        raise InputError(p, "no such file")
    return p


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file or raise InputError naming the file and the problem."""
    p = require_file(path, "a JSON file")
    try:
        return json.loads(p.read_text())
    except UnicodeDecodeError:
        raise InputError(p, "not a text file") from None
    except json.JSONDecodeError as exc:
        raise InputError(p, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None


def require_schema(obj: Any, schema: str, source: object) -> dict:
    """Check that `obj` is a dict tagged with `schema`."""
    if not isinstance(obj, dict):
        raise InputError(source, f"expected a JSON object with schema {schema!r}")
    found = obj.get("schema")
    if found != schema:
        raise InputError(source, f"wrong schema tag {found!r}, expected {schema!r}")
    return obj


def numeric_array(value: Any, name: str, source: object, ndim: int, dtype=np.float64) -> np.ndarray:
    """Turn a JSON list into a finite numeric array of `ndim` dims, or raise InputError."""
    if value is None:
        raise InputError(source, f"missing {name!r}")
    try:
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError):
        raise InputError(source, f"{name!r} is ragged or not numeric") from None
    except OverflowError:  # a JSON integer past float range
        raise InputError(source, f"{name!r} holds a number too large for a float") from None
    if arr.ndim != ndim:
        raise InputError(source, f"{name!r} must be a {ndim}-D array, got shape {list(arr.shape)}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(source, f"{name!r} holds non-finite values")
    return arr


def json_int(value: Any, name: str, source: object, lo: int | None = None) -> int:
    """A JSON integer field (2 and 2.0 pass; 2.5, "2", true, NaN do not), >= `lo` when given."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok and isinstance(value, (float, np.floating)):
        ok = bool(np.isfinite(value)) and float(value).is_integer()
    if not ok or (lo is not None and value < lo) or abs(value) > 2**53:
        want = "an integer" if lo is None else ("a positive integer" if lo == 1 else f"an integer >= {lo}")
        raise InputError(source, f"{name!r} must be {want}, got {value!r}")
    return int(value)


def int_array(value: Any, name: str, source: object, ndim: int) -> np.ndarray:
    """Like numeric_array, for integer arrays (rejects fractional values)."""
    arr = numeric_array(value, name, source, ndim)
    if arr.size and not np.all(arr == np.round(arr)):
        raise InputError(source, f"{name!r} must hold integers")
    if arr.size and np.abs(arr).max() > 2**53:  # past this int64 casts wrap and floats lose integers
        raise InputError(source, f"{name!r} holds an integer beyond 2**53")
    return arr.astype(np.int64)
