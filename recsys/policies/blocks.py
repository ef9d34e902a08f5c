"""Blocks of rows that keep a ``rows × width`` temporary under a fixed number of cells.

Policies compute per-request arrays over the whole catalogue (scores, marginals, Monte Carlo
draws); looping over blocks of requests, vectorised inside, bounds their memory on large
catalogues.
"""

from __future__ import annotations

CHUNK_CELLS = 2**22
"""Cells (rows × width) of one block: 32 MB of float64."""


def row_blocks(n: int, width: int, cells: int = CHUNK_CELLS) -> list[slice]:
    """Slices over ``n`` rows whose blocks hold at most ``cells`` cells of ``width`` each (at
    least one row per block)."""
    step = max(1, cells // max(width, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]
