"""The training split as tensors, built once per run and shared by every objective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recsys.validation import message


@dataclass(frozen=True, eq=False)
class TrainTensors:
    """The training split as tensors, built once per run."""

    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    n_users: int
    n_items: int
    propensity: torch.Tensor | None = None
    propensity_matrix: torch.Tensor | None = None
    noise: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.users.shape[0]
        if self.users.ndim != 1 or self.items.shape != (n,) or self.labels.shape != (n,):
            shapes = [tuple(t.shape) for t in (self.users, self.items, self.labels)]
            raise ValueError(message("users, items, labels", "1-d tensors of one length",
                                     f"shapes {shapes}"))
        if n == 0:
            raise ValueError("the training split is empty")
        if self.users.dtype != torch.long or self.items.dtype != torch.long:
            raise ValueError(message("users, items", "long (int64) tensors",
                                     f"{self.users.dtype}, {self.items.dtype}"))
        for name, ids, bound in (("users", self.users, self.n_users), ("items", self.items,
                                                                        self.n_items)):
            if int(ids.min()) < 0 or int(ids.max()) >= bound:
                raise ValueError(message(name, f"ids in [0, {bound})",
                                         f"ids in [{int(ids.min())}, {int(ids.max())}]"))
        if self.propensity is not None:
            if self.propensity.shape != (n,):
                raise ValueError(message("propensity", f"shape ({n},)",
                                         f"shape {tuple(self.propensity.shape)}"))
            if not bool(((self.propensity > 0) & (self.propensity <= 1)).all()):
                raise ValueError(message("propensity", "values in (0, 1]", "a value outside"))
        if self.propensity_matrix is not None and self.propensity_matrix.shape != (
            self.n_users,
            self.n_items,
        ):
            raise ValueError(message("propensity_matrix", f"shape ({self.n_users}, {self.n_items})",
                                     f"shape {tuple(self.propensity_matrix.shape)}"))
        if self.noise is not None and (self.noise.shape != (n,) or self.noise.dtype != torch.bool):
            raise ValueError(message("noise", f"a bool tensor of shape ({n},)",
                                     f"{self.noise.dtype} of shape {tuple(self.noise.shape)}"))

    @property
    def n_rows(self) -> int:
        """Number of training rows."""
        return int(self.users.shape[0])

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        propensity: np.ndarray | None = None,
        propensity_matrix: np.ndarray | None = None,
        device: str | torch.device = "cpu",
    ) -> TrainTensors:
        """Tensors of ``dataset.train``; propensity from the argument, else the frame's column,
        else looked up in the (argument's or dataset's) propensity matrix."""
        train = dataset.train
        users = torch.tensor(train["user_id"].to_numpy(), dtype=torch.long)
        items = torch.tensor(train["item_id"].to_numpy(), dtype=torch.long)
        labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
        matrix = propensity_matrix if propensity_matrix is not None else dataset.propensity_matrix
        matrix_t = None if matrix is None else torch.as_tensor(np.asarray(matrix),
                                                               dtype=torch.float32)
        if propensity is not None:
            prop_t = torch.as_tensor(np.asarray(propensity), dtype=torch.float32)
        elif "propensity" in train.columns:
            prop_t = torch.tensor(train["propensity"].to_numpy(), dtype=torch.float32)
        elif matrix_t is not None:
            prop_t = matrix_t[users, items]
        else:
            prop_t = None
        noise = (
            torch.tensor(train["noise"].to_numpy(), dtype=torch.bool)
            if "noise" in train.columns
            else None
        )

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return cls(
            users=users.to(device),
            items=items.to(device),
            labels=labels.to(device),
            n_users=int(dataset.n_users),
            n_items=int(dataset.n_items),
            propensity=move(prop_t),
            propensity_matrix=move(matrix_t),
            noise=move(noise),
        )
