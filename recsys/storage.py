"""Where state is written: a local path or any fsspec URI, with atomic whole-file writes.

Statistics snapshots and checkpoints go through this one seam, so the same code writes to a local
directory by default and to ``s3://``, ``gs://``, ``memory://`` (tests) or any other filesystem
that fsspec knows by configuration alone. A write goes to a uniquely named temporary file beside
its target and is then moved over it: readers see the old file or the new one, never half of one,
and two writers never share a temporary name.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

PathLike = str | os.PathLike[str]


def resolve(uri: PathLike, filesystem: Any = None) -> tuple[Any, str]:
    """The fsspec filesystem and the path within it for ``uri`` (a local path or a URI)."""
    text = os.fspath(uri)
    if filesystem is not None:
        return filesystem, text
    fs, path = fsspec.core.url_to_fs(text)
    return fs, path


def join(base: str, *parts: str) -> str:
    """``base/part/...`` with forward slashes (fsspec paths are POSIX-like on every backend)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def write_bytes_atomic(fs: Any, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``: a unique temporary name first, then a move over the target."""
    parent = fs._parent(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, path)  # atomic on POSIX, also when the target exists
        else:
            fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def read_bytes(fs: Any, path: str) -> bytes:
    """The whole content of ``path``; a missing file raises FileNotFoundError naming it."""
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
