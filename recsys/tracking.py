"""Where runs and models are recorded: mlflow configured from ``Settings``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from recsys.config import Settings

_STORE_SETUP_LOGGERS = ("mlflow.store.db.utils", "alembic")
"""They announce creating and migrating the sqlite store at INFO on every fresh data directory."""


@contextmanager
def _quiet_store_setup() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _STORE_SETUP_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def configure_mlflow(settings: Settings) -> str:
    """Point mlflow at the configured store and make sure the experiment exists.

    With the defaults this is a sqlite file and an artifact folder under the data directory, so
    nothing needs a server. Returns the experiment id.
    """
    import mlflow

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with _quiet_store_setup():
        experiment = mlflow.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is None:
        artifact_location = (
            None if settings.mlflow.tracking_uri else settings.mlflow_artifact_location
        )
        experiment_id = mlflow.create_experiment(
            settings.mlflow.experiment, artifact_location=artifact_location
        )
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def mlflow_ui_command(settings: Settings) -> str:
    """The command that opens the mlflow UI on this store."""
    if settings.mlflow.tracking_uri and not settings.mlflow.tracking_uri.startswith("sqlite"):
        return f"open {settings.mlflow.tracking_uri}"
    return f".venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri} --port 5000"
