"""Mapping from external item ids to rows of the statistics arrays."""

from __future__ import annotations

import operator

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.validation import UnknownItemError


class ItemIndex:
    """Sorted, unique item ids with vectorised id→row lookup.

    Rows follow the sorted order of ids, so two statistics over the same item set always agree on
    the layout, whatever order the items were added in. When the ids are exactly ``0..n-1`` the
    lookup is the identity and costs one bounds check.
    """

    __slots__ = ("_contiguous", "ids")

    def __init__(self, ids: ArrayLike) -> None:
        raw = np.asarray(ids)
        if raw.ndim != 1:
            raise ValueError(f"item ids: expected a 1-d array, got shape {raw.shape}")
        if raw.size and not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"item ids: must be integers, got dtype {raw.dtype}")
        arr = raw.astype(np.int64)
        if arr.size and arr.min() < 0:
            raise ValueError("item ids: must be >= 0")
        uniq = np.unique(arr)
        if uniq.size != arr.size:
            raise ValueError(f"item ids: {arr.size - uniq.size} duplicate id(s)")
        self.ids: NDArray[np.int64] = uniq
        self._contiguous = bool(uniq.size == 0 or (uniq[0] == 0 and uniq[-1] == uniq.size - 1))

    def __len__(self) -> int:
        return int(self.ids.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemIndex) and np.array_equal(self.ids, other.ids)

    __hash__ = None  # type: ignore[assignment]

    def rows(self, items: NDArray[np.int64], *, name: str = "items") -> NDArray[np.intp]:
        """Rows of ``items``; raises UnknownItemError naming the first unknown id."""
        n = self.ids.size
        if self._contiguous:
            if items.size and (items.min() < 0 or items.max() >= n):
                bad = items[(items < 0) | (items >= n)]
                raise UnknownItemError(self._unknown_message(bad, name))
            return items.astype(np.intp, copy=False)
        pos = np.searchsorted(self.ids, items)
        found = pos < n
        found[found] = self.ids[pos[found]] == items[found]
        if not found.all():
            raise UnknownItemError(self._unknown_message(items[~found], name))
        return pos

    def row_one(self, item: int, *, name: str = "item") -> int:
        """Row of a single item id (the single-event fast path)."""
        try:
            i = operator.index(item)
        except TypeError:
            raise ValueError(f"{name}: item ids must be integers, got {item!r}") from None
        n = self.ids.size
        if self._contiguous:
            if 0 <= i < n:
                return i
        else:
            pos = int(np.searchsorted(self.ids, i))
            if pos < n and self.ids[pos] == i:
                return pos
        raise UnknownItemError(self._unknown_message(np.array([i]), name))

    def contains(self, items: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Boolean mask: which of ``items`` are held."""
        pos = np.searchsorted(self.ids, items)
        ok = pos < self.ids.size
        ok[ok] = self.ids[pos[ok]] == items[ok]
        return ok

    def _unknown_message(self, bad: NDArray[np.int64], name: str) -> str:
        shown = ", ".join(str(int(i)) for i in np.unique(bad)[:5])
        return (
            f"{name}: {np.unique(bad).size} unknown item id(s) ({shown}); the statistics hold "
            f"{self.ids.size} items: add new items with add_items() before learning on them"
        )
