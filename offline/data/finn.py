"""FINN.no slate dataset (Eide et al. 2021): slates shown and clicks, as frames and a Dataset.

Layout of ``data.npz`` — confirmed from the dataset's own repository, finn-no/recsys_slates_dataset
(``data/transform_data_to_numpy.py``, which writes it; ``recsys_slates_dataset/dataset_torch.py``,
which reads it; the quickstart notebook ``examples/quickstart-finn-recsys-slate-data.ipynb``,
whose printed shapes and example are quoted here):

- ``userId`` (U,), ``click`` (U, T), ``click_idx`` (U, T), ``slate_lengths`` (U, T),
  ``slate`` (U, T, S), ``interaction_type`` (U, T); integers (int32 in the int32 release).
  The release has U = 2,277,645 users, T = 20 interactions, S = 25 slate positions.
- Item ids in ``slate`` and ``click``: 0 = padding (no item / no interaction), 1 = the
  "no click" item, which every slate shows, 2 = an unknown item (``<UNK>``); real items start at
  3 (``dataset_torch`` samples candidate items from 3 upwards).
- ``click[u, t]`` is the item clicked at interaction ``t`` (1 when the user clicked nothing, 0
  when the user had no interaction ``t``); ``click_idx`` its position in the slate;
  ``slate_lengths`` the number of non-padding entries; ``interaction_type`` 1 = search,
  2 = recommendation, 0 = undefined.

Here: a user's id is their row (``userId`` values are scrambled in the release and kept in
``FinnSlates.raw_user_ids``); real items (ids >= 3) are mapped to contiguous ids in sorted order
(``FinnSlates.item_ids[j]`` is the file's id of item ``j``). ``interaction`` (0..T-1) is the only
clock the data has, so splits are by interaction index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from offline.data.splits import split_by_time
from offline.dataset import Dataset
from recsys.validation import message

__all__ = ["FIRST_ITEM", "FinnSlates", "finn_dataset", "load_finn_slates"]

FIRST_ITEM = 3
"""Smallest id of a real item (0 padding, 1 no click, 2 unknown item)."""
_KEYS_2D = ("click", "click_idx", "slate_lengths", "interaction_type")


@dataclass(frozen=True, eq=False)
class FinnSlates:
    """The slates as frames: ``impressions`` (user_id, interaction, position, item_id, clicked,
    interaction_type; one row per real item shown) and ``clicks`` (the interaction contract,
    label 1.0, plus ``interaction``), with the id mappings."""

    impressions: pl.DataFrame
    clicks: pl.DataFrame
    raw_user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.raw_user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def _arrays(path: Path, max_users: int | None) -> dict[str, np.ndarray]:
    """The npz's arrays, checked for keys, integer dtypes and consistent shapes."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FINN.no data.npz not found")
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("userId", "slate", *_KEYS_2D) if k not in npz.files]
        if missing:
            raise ValueError(
                message(str(path), f"the arrays {missing} too", f"only {sorted(npz.files)}")
            )
        rows = slice(None) if max_users is None else slice(0, int(max_users))
        arrays = {k: npz[k][rows] for k in ("userId", "slate", *_KEYS_2D)}
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(message(f"{path}: {key}", "integers", f"dtype {array.dtype}"))
    slate = arrays["slate"]
    if slate.ndim != 3:
        raise ValueError(
            message(f"{path}: slate", "shape (users, interactions, positions)",
                    f"shape {slate.shape}")
        )
    users, steps, width = slate.shape
    if arrays["userId"].shape != (users,):
        raise ValueError(
            message(f"{path}: userId", f"shape ({users},)", f"shape {arrays['userId'].shape}")
        )
    for key in _KEYS_2D:
        if arrays[key].shape != (users, steps):
            raise ValueError(
                message(f"{path}: {key}", f"shape ({users}, {steps}) like slate",
                        f"shape {arrays[key].shape}")
            )
    if (slate < 0).any() or (arrays["click"] < 0).any():
        raise ValueError(message(f"{path}: slate, click", "item ids >= 0", "negative ids"))
    idx = arrays["click_idx"]
    if ((idx < 0) | (idx >= width)).any():
        raise ValueError(
            message(f"{path}: click_idx", f"slate positions in [0, {width})",
                    f"values in [{idx.min()}, {idx.max()}]")
        )
    lengths = arrays["slate_lengths"]
    if ((lengths < 0) | (lengths > width)).any():
        raise ValueError(
            message(f"{path}: slate_lengths", f"lengths in [0, {width}]",
                    f"values in [{lengths.min()}, {lengths.max()}]")
        )
    return arrays


def load_finn_slates(path: Path | str, max_users: int | None = None) -> FinnSlates:
    """``data.npz`` as frames (the first ``max_users`` users only, if given: the full release
    holds 1.1 billion slate cells). Clicks on the no-click or unknown item are not clicks on an
    item and are left out; an impression is ``clicked`` when its item is the interaction's click.
    """
    arrays = _arrays(Path(path), max_users)
    slate, click = arrays["slate"].astype(np.int64), arrays["click"].astype(np.int64)
    user, step, position = np.nonzero(slate >= FIRST_ITEM)
    shown = slate[user, step, position]
    click_user, click_step = np.nonzero(click >= FIRST_ITEM)
    clicked_item = click[click_user, click_step]
    item_ids = np.unique(np.concatenate([shown, clicked_item]))
    impressions = pl.DataFrame(
        {
            "user_id": user.astype(np.int64),
            "interaction": step.astype(np.int64),
            "position": position.astype(np.int64),
            "item_id": np.searchsorted(item_ids, shown).astype(np.int64),
            "clicked": shown == click[user, step],
            "interaction_type": arrays["interaction_type"][user, step].astype(np.int64),
        }
    )
    clicks = pl.DataFrame(
        {
            "user_id": click_user.astype(np.int64),
            "item_id": np.searchsorted(item_ids, clicked_item).astype(np.int64),
            "label": np.ones(click_user.size),
            "interaction": click_step.astype(np.int64),
        }
    )
    return FinnSlates(
        impressions=impressions,
        clicks=clicks,
        raw_user_ids=np.asarray(arrays["userId"]).astype(np.int64),
        item_ids=item_ids,
    )


def finn_dataset(
    path: Path | str,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    max_users: int | None = None,
) -> Dataset:
    """FINN.no clicks as implicit feedback, split in time: each user's earliest clicks (by
    interaction index) train, the latest test (repeat clicks on an item keep the first). ``seed``
    is recorded only: the split is deterministic."""
    slates = load_finn_slates(path, max_users)
    clicks = (
        slates.clicks.sort("user_id", "interaction")
        .unique(["user_id", "item_id"], keep="first", maintain_order=True)
    )
    if clicks.height == 0:
        raise ValueError(f"{path}: no clicks on real items (ids >= {FIRST_ITEM})")
    train, valid, test = (
        part.drop("interaction")
        for part in split_by_time(clicks, fractions, time_column="interaction", per_user=True)
    )
    return Dataset(
        name="finn_slates",
        task="implicit",
        n_users=slates.n_users,
        n_items=slates.n_items,
        item_ids=tuple(int(i) for i in slates.item_ids),
        train=train,
        valid=valid,
        test=test,
        lineage={
            "data_source": "finn",
            "split": "per_user_time_by_interaction",
            "seed": str(seed),
            "rows": str(clicks.height),
            "max_users": "all" if max_users is None else str(int(max_users)),
        },
    )
