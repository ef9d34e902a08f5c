"""The Open Bandit Dataset (ZOZOTOWN, Saito et al.) in the project's log-frame layout.

``recsys.obd`` reads and validates the files; this module adds the lake schema's names
(``recsys.schema``) for what OBD has: ``request_id`` (the row number as text), ``reward`` (OBD's
``click`` as a float), ``propensity`` and ``policy_name``, so ``recsys.ope``'s frame adapter reads
it without a ``columns`` override. OBD has no dense context (its user features are hashed
categoricals; see ``user_context``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.obd import USER_FEATURES
from recsys.obd import load_obd as read_obd


def obd_dir(shared_data: Path | str) -> Path:
    """The ``obd`` folder inside the shared data folder."""
    return Path(shared_data) / "obd"


def load_obd(
    shared_data: Path | str, policy: str = "random", campaign: str = "all"
) -> pl.DataFrame:
    """One logging policy's logs (one row per shown item, position 0-based), with the lake
    schema's ``request_id``, ``reward``, ``propensity`` and ``policy_name`` added."""
    frame = read_obd(obd_dir(shared_data), policy, campaign)
    return frame.with_columns(
        pl.int_range(pl.len()).cast(pl.String).alias("request_id"),
        pl.col("click").cast(pl.Float64).alias("reward"),
        pl.col("propensity_score").alias("propensity"),
        pl.lit(f"obd_{policy}").alias("policy_name"),
    )


def user_context(frame: pl.DataFrame) -> np.ndarray:
    """One-hot encoding of the hashed user features: the context a reward model can use."""
    return frame.select(USER_FEATURES).to_dummies().to_numpy().astype(float)


def choice_data(frame: pl.DataFrame) -> dict[str, np.ndarray | int]:
    """OBD rows as slate-choice logs for ``SlateChoiceModel``: each row is a slate of one item at
    its position; users are the distinct combinations of the hashed user features."""
    user_index = frame.select(
        pl.concat_str(list(USER_FEATURES), separator="|").rank("dense") - 1
    ).to_series()
    return {
        "user_index": user_index.to_numpy().astype(np.int64),
        "slates": frame["item_id"].to_numpy().astype(np.int64)[:, None],
        "positions": frame["position"].to_numpy().astype(np.int64)[:, None],
        "clicked": np.where(frame["reward"].to_numpy() > 0, 0, -1),
        "n_users": int(user_index.max()) + 1,
    }
