"""The sparse exposure table behind fatigue agrees with a dense reference."""

from __future__ import annotations

import numpy as np

from simulators.exposure import ExposureTable


def test_sparse_table_matches_dense_bookkeeping():
    rng = np.random.default_rng(0)
    n_users, n_items, decay = 7, 9, 0.8
    table = ExposureTable(n_users, n_items, decay)
    dense = np.zeros((n_users, n_items))
    for _ in range(30):
        users = rng.choice(n_users, size=4, replace=False)  # distinct users within a batch
        slates = np.stack([rng.choice(n_items, size=3, replace=False) for _ in users])
        dense[users] *= decay  # each request of a user decays all its counts once
        dense[users[:, None], slates] += 1.0
        table.expose(users, slates)
        all_users = np.repeat(np.arange(n_users), n_items)
        all_items = np.tile(np.arange(n_items), n_users)
        np.testing.assert_allclose(
            table.level(all_users, all_items).reshape(n_users, n_items), dense, atol=1e-12
        )
    assert len(table) == int((dense > 0).sum())
