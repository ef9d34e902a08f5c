"""The mlflow "model from code" of every registered policy: mlflow stores this file, not a pickle.

Loading runs this file, which hands mlflow a :class:`PolicyModel`; ``load_context`` reads the
policy bundle (``policy.json`` + ``arrays.npz``, see ``recsys.registry.model``) and ``predict``
serves slates or ``action_dist`` (see ``recsys.registry.mlflow_io.predict_policy``). The
environment that loads it needs the ``recsys`` distribution.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class PolicyModel(PythonModel):
    """Slates with propensities, or OBP's action distribution, for a frame of requests."""

    def load_context(self, context: Any) -> None:
        from recsys.registry.model import RegisteredPolicy

        self.model = RegisteredPolicy.load(context.artifacts["policy"])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> Any:
        from recsys.registry.mlflow_io import predict_policy

        return predict_policy(self.model, model_input, params)


mlflow.models.set_model(PolicyModel())
