"""Safe byte format for statistics snapshots: ``.npz`` of plain arrays, never read with pickle."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
from numpy.typing import NDArray

META_KEY = "__meta__"


def encode_npz(meta: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> bytes:
    """``arrays`` plus a JSON metadata header as the bytes of an (uncompressed) ``.npz`` file."""
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved for the metadata header")
    buffer = io.BytesIO()
    np.savez(buffer, **{META_KEY: np.array(json.dumps(meta))}, **arrays)
    return buffer.getvalue()


def decode_npz(
    data: bytes, *, where: str = "snapshot"
) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    """``(meta, arrays)`` from :func:`encode_npz` bytes; ``where`` names the source in errors."""
    if not data.startswith(b"PK"):
        raise ValueError(f"{where}: not a readable .npz file (no zip header)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if META_KEY not in npz.files:
                raise ValueError(f"{where}: not a recsys statistics file (no metadata header)")
            meta = json.loads(str(npz[META_KEY]))
            arrays = {name: npz[name] for name in npz.files if name != META_KEY}
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"{where}: not a readable .npz file ({exc})") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(f"{where}: holds pickled objects, which are never loaded") from None
        raise
    if not isinstance(meta, dict) or "format" not in meta:
        raise ValueError(f"{where}: metadata header has no format tag")
    return meta, arrays
