"""Decayed exposure counts per (user, item): the state behind the fatigue effect.

A user's response to an item depends on a decayed count of its recent exposures (Weighted
Tallying Bandits). Only pairs that were ever shown have state, so it is kept sparse: sorted int64
keys ``user * n_items + item`` with the count and the user's clock at the last update, looked up
with ``searchsorted`` and merged once per batch. The count decays by ``decay`` per request of the
same user, applied lazily on read.
"""

from __future__ import annotations

import numpy as np


class ExposureTable:
    """Sparse, vectorised map (user, item) → decayed exposure count."""

    def __init__(self, n_users: int, n_items: int, decay: float) -> None:
        self.n_items = n_items
        self.decay = decay
        self.user_clock = np.zeros(n_users, dtype=np.int64)
        self._keys = np.empty(0, dtype=np.int64)
        self._level = np.empty(0)
        self._clock = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._keys.size)

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._keys.size == 0:
            return np.zeros(keys.shape, dtype=np.intp), np.zeros(keys.shape, dtype=bool)
        idx = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
        return idx, self._keys[idx] == keys

    def level(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Current decayed counts for broadcastable ``users`` and ``items`` arrays."""
        users, items = np.broadcast_arrays(users, items)
        keys = users.astype(np.int64) * self.n_items + items
        idx, found = self._find(keys)
        if not found.any():
            return np.zeros(keys.shape)
        elapsed = self.user_clock[users] - np.where(found, self._clock[idx], 0)
        return np.where(found, self._level[idx] * self.decay**elapsed, 0.0)

    def expose(self, users: np.ndarray, slates: np.ndarray) -> None:
        """Record one request per row: the user's clock ticks, each shown item's count gains 1.

        Rows of one batch are simultaneous: a pair shown twice in a batch counts once.
        """
        users = np.asarray(users)
        level = self.level(users[:, None], slates)
        np.add.at(self.user_clock, users, 1)
        keys = (users[:, None].astype(np.int64) * self.n_items + slates).ravel()
        keys, first = np.unique(keys, return_index=True)
        new_level = level.ravel()[first] * self.decay + 1.0  # this request decays, then adds
        new_clock = self.user_clock[keys // self.n_items]
        idx, found = self._find(keys)
        self._level[idx[found]] = new_level[found]
        self._clock[idx[found]] = new_clock[found]
        fresh = ~found
        if fresh.any():
            merged = np.concatenate([self._keys, keys[fresh]])
            order = np.argsort(merged, kind="stable")
            self._keys = merged[order]
            self._level = np.concatenate([self._level, new_level[fresh]])[order]
            self._clock = np.concatenate([self._clock, new_clock[fresh]])[order]
