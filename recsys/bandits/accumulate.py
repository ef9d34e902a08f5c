"""The vectorised scatter-add at the heart of every learner: per-row sums of x², x·r and counts."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_DENSE_OVER_SPARSE = 8
"""Scatter straight into all rows while rows ≤ this × batch; otherwise compress to touched rows."""


def touched_rows(rows: NDArray[np.intp], n_rows: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Sorted unique rows and each event's index into them (O(batch + rows) when rows is small)."""
    if n_rows <= _DENSE_OVER_SPARSE * max(rows.size, 1):
        present = np.bincount(rows, minlength=n_rows) > 0
        unique = np.flatnonzero(present)
        remap = np.cumsum(present) - 1
        return unique, remap[rows]
    unique, inverse = np.unique(rows, return_inverse=True)
    return unique, inverse.ravel()


def scatter_add(
    rows: NDArray[np.intp], values: NDArray[np.float64], n_rows: int
) -> NDArray[np.float64]:
    """Per-row sums of ``values`` ([batch, width]) into an [n_rows, width] table.

    One ``np.bincount`` over flattened (row, column) indices: no Python loop over events, and the
    result does not depend on the order of the events beyond float rounding.
    """
    width = values.shape[1]
    flat = (rows[:, None] * width + np.arange(width)).ravel()
    out = np.bincount(flat, weights=values.ravel(), minlength=n_rows * width)
    return out.reshape(n_rows, width)


def scatter_add_many(
    rows: NDArray[np.intp], values: list[NDArray[np.float64]], n_rows: int
) -> list[NDArray[np.float64]]:
    """:func:`scatter_add` for several [batch, width] arrays of one width, sharing the index."""
    if not values:
        return []
    width = values[0].shape[1]
    flat = (rows[:, None] * width + np.arange(width)).ravel()
    size = n_rows * width
    return [np.bincount(flat, weights=v.ravel(), minlength=size).reshape(n_rows, width)
            for v in values]
