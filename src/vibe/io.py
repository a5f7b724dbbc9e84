"""Atomic writes and safe reads shared by every file format vibe touches.

Every output is written to a temporary file in the target folder and renamed into
place, so a crash or a validation error never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vibe.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success only."""
    target = Path(path)
    if target.is_dir():
        raise InputError(target, "is a folder, cannot write a file there")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # an unwritable or impossible output path is a user error
        raise InputError(target, f"cannot write here ({exc.strerror or exc.__class__.__name__})") from None
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
        tmp.write_text(text)


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


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file or raise InputError naming the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    if p.is_dir():
        raise InputError(p, "is a folder, expected a JSON file")
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
    if arr.ndim != ndim:
        raise InputError(source, f"{name!r} must be a {ndim}-D array, got shape {list(arr.shape)}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(source, f"{name!r} holds non-finite values")
    return arr


def int_array(value: Any, name: str, source: object, ndim: int) -> np.ndarray:
    """Like numeric_array, for integer arrays (rejects fractional values)."""
    arr = numeric_array(value, name, source, ndim)
    if arr.size and not np.all(arr == np.round(arr)):
        raise InputError(source, f"{name!r} must hold integers")
    return arr.astype(np.int64)
