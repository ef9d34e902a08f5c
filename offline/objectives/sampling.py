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
    offsets = torch.zeros(batch, k, dtype=torch.long)
    for step in range(k):
        top = (degree - k + step).clamp_min(0)
        draw = (torch.rand(batch, generator=generator, dtype=torch.float64) * (top + 1)).long()
        draw = torch.minimum(draw, top)
        taken = (offsets[:, :step] == draw.unsqueeze(1)).any(dim=1)
        offsets[:, step] = torch.where(taken, top, draw)
    short = degree < k
    if not bool(short.any()):
        return offsets
    with_replacement = (
        torch.rand(batch, k, generator=generator, dtype=torch.float64) * degree.unsqueeze(1)
    ).long()
    with_replacement = torch.minimum(with_replacement, (degree - 1).clamp_min(0).unsqueeze(1))
    return torch.where((degree >= k).unsqueeze(1), offsets, with_replacement)
