"""Exactly uniform, vectorised draws on CPU: keys outside a set (negatives, unobserved pairs) and
distinct subsets of each user's positives (PLD's candidate pools)."""

from __future__ import annotations

import torch


class ComplementSampler:
    """Exactly uniform draws of keys outside a sorted key set (no rejection loop).

    With sorted unique keys k_0 < k_1 < ... (per segment), the r-th key not in the set is
    r + #{j : k_j − j ≤ r}; ``searchsorted`` on the non-decreasing k_j − j finds that count.
    """

    def __init__(self, keys: torch.Tensor, segment: int, n_owners: int) -> None:
        self.keys = torch.unique(keys)
        self.segment = segment
        owner = self.keys // segment
        self.count = torch.bincount(owner, minlength=n_owners)
        self.start = torch.cumsum(self.count, 0) - self.count
        local = torch.arange(self.keys.numel()) - self.start[owner]
        self.adjusted = owner * segment + (self.keys % segment - local)

    def free(self, owners: torch.Tensor) -> torch.Tensor:
        """How many keys of each owner's segment lie outside the set."""
        return self.segment - self.count[owners]

    def sample(self, owners: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One key per owner, uniform over the owner's segment minus the set (offset returned)."""
        free = self.free(owners)
        rank = (torch.rand(owners.shape, generator=generator, dtype=torch.float64) * free).long()
        rank = torch.minimum(rank, free - 1)
        pos = torch.searchsorted(self.adjusted, owners * self.segment + rank, right=True)
        return rank + pos - self.start[owners]


def floyd_pools(degree: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """(B, k) offsets into each user's positives: k distinct ones (Floyd's algorithm, vectorised
    over users) when the user has >= k, else k drawn with replacement."""
    batch = degree.shape[0]
    # Step s draws uniformly from 0..top_s with top_s = degree − k + s; every step's draw at once
    # (one (k, B) call yields the same stream as k calls of B), only the collision fix-up loops.
    tops = (degree.unsqueeze(0) - k + torch.arange(k).unsqueeze(1)).clamp_min(0)
    uniforms = torch.rand(k, batch, generator=generator, dtype=torch.float64)
    draws = torch.minimum((uniforms * (tops + 1)).long(), tops)
    offsets = torch.empty(batch, k, dtype=torch.long)
    offsets[:, 0] = draws[0]
    for step in range(1, k):
        taken = (offsets[:, :step] == draws[step].unsqueeze(1)).any(dim=1)
        offsets[:, step] = torch.where(taken, tops[step], draws[step])
    short = degree < k
    if not bool(short.any()):
        return offsets
    with_replacement = (
        torch.rand(batch, k, generator=generator, dtype=torch.float64) * degree.unsqueeze(1)
    ).long()
    with_replacement = torch.minimum(with_replacement, (degree - 1).clamp_min(0).unsqueeze(1))
    return torch.where((degree >= k).unsqueeze(1), offsets, with_replacement)
