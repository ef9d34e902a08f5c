"""Safe on-disk format for statistics: ``.npz`` of plain arrays, never read with pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def write_npz(
    path: str | os.PathLike[str], fmt: str, meta: dict[str, Any], arrays: dict[str, NDArray[Any]]
) -> None:
    """Write ``arrays`` plus a JSON metadata string; atomic (temp file, then rename)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    header = np.array(json.dumps({"format": fmt, **meta}))
    with open(tmp, "wb") as fh:
        np.savez(fh, __meta__=header, **arrays)
    os.replace(tmp, target)


def read_npz(
    path: str | os.PathLike[str], fmt: str
) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    """Read a file written by :func:`write_npz`, checking the format tag."""
    with np.load(path, allow_pickle=False) as data:
        if "__meta__" not in data.files:
            raise ValueError(f"{path}: not a recsys statistics file (no metadata)")
        meta = json.loads(str(data["__meta__"]))
        if meta.get("format") != fmt:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {fmt!r}")
        arrays = {name: data[name] for name in data.files if name != "__meta__"}
    return meta, arrays
