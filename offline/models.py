"""Torch scoring models for the offline pipeline: biased matrix factorisation and a two-tower net.

Every model scores (user, item) pairs with ``forward``, all items for a batch of users with
``score_all`` (full ranking), exposes ``user_embeddings`` (the context the online bandits can use)
and rebuilds from ``config()`` plus its state dict: feature arrays are buffers, never config.
Initialisation draws from torch's global generator, so callers seed with ``torch.manual_seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys.schema import write_user_features
from recsys.validation import check_scalar, message


def _index(values: Any, device: torch.device) -> Tensor:
    """Ids as a long tensor on ``device`` (accepts tensors, numpy arrays and sequences)."""
    if isinstance(values, np.ndarray) and not values.flags.writeable:
        values = values.copy()  # read-only views (e.g. from polars) cannot back a tensor
    return torch.as_tensor(values, dtype=torch.long, device=device)


class BiasedMF(nn.Module):
    """ŷ = μ + b_u + b_i + ⟨p_u, q_i⟩ (Koren et al.), the standard explicit/implicit baseline."""

    array_names: tuple[str, ...] = ()

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        init_std: float = 0.1,
        global_bias: float = 0.0,
    ) -> None:
        super().__init__()
        for name, size in (("n_users", n_users), ("n_items", n_items), ("dim", dim)):
            if size < 1:
                raise ValueError(message(name, "an integer >= 1", size))
        check_scalar(init_std, "init_std", 0.0, low_open=True)
        self.n_users, self.n_items, self.dim = int(n_users), int(n_items), int(dim)
        self.init_std, self.initial_global_bias = float(init_std), float(global_bias)
        self.user_factors = nn.Embedding(self.n_users, self.dim)
        self.item_factors = nn.Embedding(self.n_items, self.dim)
        self.user_bias = nn.Embedding(self.n_users, 1)
        self.item_bias = nn.Embedding(self.n_items, 1)
        self.global_bias = nn.Parameter(torch.zeros(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Factors ~ N(0, init_std²), biases zero, μ at its configured starting value."""
        nn.init.normal_(self.user_factors.weight, std=self.init_std)
        nn.init.normal_(self.item_factors.weight, std=self.init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.global_bias.fill_(self.initial_global_bias)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of the pairs (users[b], items[b]): shape [B]; with items of shape [B, C], each
        user's C candidates: shape [B, C] (``score_candidates``)."""
        device = self.global_bias.device
        users, items = _index(users, device), _index(items, device)
        if items.dim() == 2 and users.dim() == 1:
            return self.score_candidates(users, items)
        dot = (self.user_factors(users) * self.item_factors(items)).sum(-1)
        return (
            self.global_bias
            + self.user_bias(users).squeeze(-1)
            + self.item_bias(items).squeeze(-1)
            + dot
        )

    def score_candidates(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of each user's own candidate items: users [B], items [B, C] -> [B, C] (one
        lookup per user, not per candidate: PLD scores a pool of candidates per user)."""
        device = self.global_bias.device
        users, items = _index(users, device), _index(items, device)
        dot = (self.item_factors(items) * self.user_factors(users).unsqueeze(1)).sum(-1)
        return self.global_bias + self.user_bias(users) + self.item_bias(items).squeeze(-1) + dot

    def score_all(self, users: Tensor) -> Tensor:
        """Scores of every item for each user: shape [B, n_items]."""
        users = _index(users, self.global_bias.device)
        return (
            self.global_bias
            + self.user_bias(users)
            + self.item_bias.weight.squeeze(-1)
            + self.user_factors(users) @ self.item_factors.weight.T
        )

    def user_embeddings(self) -> Tensor:
        """p_u for every user: shape [n_users, dim]."""
        return self.user_factors.weight

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able): ``BiasedMF(**config)`` rebuilds the architecture."""
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "dim": self.dim,
            "init_std": self.init_std,
            "global_bias": self.initial_global_bias,
        }


def _features(values: Any, name: str) -> Tensor:
    """A 2-D finite float32 feature tensor, or a ValueError that says what is wrong."""
    array = values.detach().cpu() if isinstance(values, Tensor) else torch.as_tensor(
        np.asarray(values, dtype=np.float32)
    )
    array = array.to(torch.float32)
    if array.ndim != 2 or array.shape[0] < 1:
        raise ValueError(
            message(name, "a 2-d (rows, features) array", f"shape {tuple(array.shape)}")
        )
    if not torch.isfinite(array).all():
        raise ValueError(
            message(name, "finite values", "NaN or infinite values", "impute or drop them first")
        )
    return array.contiguous()


def _tower(n_in: int, hidden: Sequence[int], dim: int) -> nn.Sequential | None:
    """An MLP n_in → hidden… → dim with ReLUs between layers (None when there are no features)."""
    if n_in == 0:
        return None
    layers: list[nn.Module] = []
    width = n_in
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        width = int(size)
    layers.append(nn.Linear(width, dim))
    return nn.Sequential(*layers)


class TwoTower(nn.Module):
    """score = ⟨u, v⟩ + b_i, u = MLP(user features) (+ id embedding), v likewise for items.

    Feature arrays are buffers (saved with the weights), so the model rebuilds from ``config()``
    and its state dict. A side with zero feature columns is embedded by id alone.
    """

    array_names: tuple[str, ...] = ("user_features", "item_features")

    def __init__(
        self,
        user_features: Any,
        item_features: Any,
        dim: int = 32,
        hidden: Sequence[int] = (64,),
        use_ids: bool = True,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        users = _features(user_features, "user_features")
        items = _features(item_features, "item_features")
        if dim < 1:
            raise ValueError(message("dim", "an integer >= 1", dim))
        if any(int(h) < 1 for h in hidden):
            raise ValueError(message("hidden", "layer sizes >= 1", hidden))
        if not use_ids and (users.shape[1] == 0 or items.shape[1] == 0):
            raise ValueError(
                message("use_ids", "True when a side has no features (nothing to embed)", False)
            )
        check_scalar(init_std, "init_std", 0.0, low_open=True)
        self.dim, self.hidden = int(dim), tuple(int(h) for h in hidden)
        self.use_ids, self.init_std = bool(use_ids), float(init_std)
        self.n_users, self.n_items = users.shape[0], items.shape[0]
        self.register_buffer("user_features", users)
        self.register_buffer("item_features", items)
        self.user_tower = _tower(users.shape[1], self.hidden, self.dim)
        self.item_tower = _tower(items.shape[1], self.hidden, self.dim)
        self.user_ids = nn.Embedding(self.n_users, self.dim) if self.use_ids else None
        self.item_ids = nn.Embedding(self.n_items, self.dim) if self.use_ids else None
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear layers by torch's default, id embeddings ~ N(0, init_std²), item bias zero."""
        for tower in (self.user_tower, self.item_tower):
            for layer in tower or ():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        for table in (self.user_ids, self.item_ids):
            if table is not None:
                nn.init.normal_(table.weight, std=self.init_std)
        nn.init.zeros_(self.item_bias)

    def _side(self, features: Tensor, tower: nn.Module | None, ids: nn.Embedding | None,
              index: Tensor | None) -> Tensor:
        """Tower output plus id embedding, for the rows ``index`` (all rows when None)."""
        rows = features if index is None else features[index]
        out = tower(rows) if tower is not None else None
        if ids is not None:
            emb = ids.weight if index is None else ids(index)
            out = emb if out is None else out + emb
        assert out is not None
        return out

    def user_vectors(self, users: Tensor | None = None) -> Tensor:
        """u for the given users (all users when None): shape [B, dim]."""
        index = None if users is None else _index(users, self.item_bias.device)
        return self._side(self.user_features, self.user_tower, self.user_ids, index)

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        """v for the given items (all items when None): shape [B, dim]."""
        index = None if items is None else _index(items, self.item_bias.device)
        return self._side(self.item_features, self.item_tower, self.item_ids, index)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of the pairs (users[b], items[b]): shape [B]; with items of shape [B, C], each
        user's C candidates: shape [B, C] (``score_candidates``)."""
        items = _index(items, self.item_bias.device)
        if items.dim() == 2 and _index(users, self.item_bias.device).dim() == 1:
            return self.score_candidates(users, items)
        u, v = self.user_vectors(users), self.item_vectors(items)
        return (u * v).sum(-1) + self.item_bias[items]

    def score_candidates(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of each user's own candidate items: users [B], items [B, C] -> [B, C]."""
        items = _index(items, self.item_bias.device)
        u = self.user_vectors(users)
        v = self.item_vectors(items.reshape(-1)).reshape(*items.shape, -1)
        return torch.bmm(v, u.unsqueeze(-1)).squeeze(-1) + self.item_bias[items]

    def score_all(self, users: Tensor) -> Tensor:
        """Scores of every item for each user: shape [B, n_items]."""
        return self.user_vectors(users) @ self.item_vectors().T + self.item_bias

    def user_embeddings(self) -> Tensor:
        """u for every user: shape [n_users, dim]."""
        return self.user_vectors()

    def config(self) -> dict[str, Any]:
        """Constructor arguments except the feature arrays (they are buffers in the state dict)."""
        return {
            "dim": self.dim,
            "hidden": list(self.hidden),
            "use_ids": self.use_ids,
            "init_std": self.init_std,
        }


MODELS: dict[str, type[nn.Module]] = {"mf": BiasedMF, "two_tower": TwoTower}


def model_name(model: nn.Module) -> str:
    """The ``MODELS`` key of ``model``'s class (raise if it is not one of ours)."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(
        message("model", f"an instance of a registered model {sorted(MODELS)}",
                type(model).__name__)
    )


def build_model(name: str, config: dict[str, Any], **arrays: Any) -> nn.Module:
    """``MODELS[name](**config, **arrays)``, with errors that name what is missing."""
    if name not in MODELS:
        raise ValueError(message("name", f"a model among {sorted(MODELS)}", repr(name)))
    cls = MODELS[name]
    wanted = set(cls.array_names)  # type: ignore[attr-defined]
    if set(arrays) != wanted:
        raise ValueError(
            message("arrays", f"the arrays model {name!r} takes, {sorted(wanted)}", sorted(arrays))
        )
    return cls(**config, **arrays)


def export_user_features(model: nn.Module, path: str | Path, user_ids: Sequence[str]) -> Path:
    """Write the user embeddings as the serving app's user-feature table
    (``recsys.schema.USER_FEATURES``; ``user_ids``: the raw id of every model user, in model
    order), so online bandits can use them as contexts."""
    with torch.no_grad():
        matrix = model.user_embeddings().detach().to("cpu", torch.float32).numpy()
    write_user_features(path, user_ids, matrix)
    return Path(path)
