"""The mlflow "model from code" for offline torch models: mlflow stores this file, not a pickle.

Loading runs this file, which hands mlflow a :class:`TorchScoringModel`; ``load_context`` rebuilds
the torch model from the logged JSON config and safetensors weights (see ``offline.registry``).
The environment that loads it needs the ``recsys`` distribution (it provides ``offline``).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TorchScoringModel(PythonModel):
    """Scores ``user_id``/``item_id`` pairs, or each user's top ``k`` items when no item_id."""

    def load_context(self, context: Any) -> None:
        from offline.registry import read_model

        self.model = read_model(context.artifacts["config"], context.artifacts["weights"])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> Any:
        from offline.registry import score_frame

        return score_frame(self.model, model_input, params)


mlflow.models.set_model(TorchScoringModel())
