"""The mlflow "model from code" for offline torch models: mlflow stores this file, not a pickle.

Loading runs this file, which hands mlflow a :class:`TorchScoringModel`; ``load_context`` rebuilds
the torch model from the logged JSON config and safetensors weights and reads the id maps (see
``offline.registry``). The environment that loads it needs the ``recsys`` distribution (it
provides ``offline``).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TorchScoringModel(PythonModel):
    """Scores raw ``user_id``/``item_id`` pairs, or ranks each user's top ``k`` items when there
    is no item_id; both return a table (``offline.registry.score_frame``)."""

    def load_context(self, context: Any) -> None:
        from offline.registry import IdMaps, read_model

        self.model = read_model(context.artifacts["config"], context.artifacts["weights"])
        self.ids = IdMaps.read(context.artifacts["id_maps"])
        self.ids.check(self.model.n_users, self.model.n_items)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        from offline.registry import score_frame

        return score_frame(self.model, self.ids, model_input, params)


mlflow.models.set_model(TorchScoringModel())
