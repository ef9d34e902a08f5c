"""The serving app for declarative deployments: a Ray Serve app builder that a KubeRay RayService's
``serveConfigV2`` names by import path (``recsys.serving.deploy:build``, ``args: {config: ...}``).

The app scores with the shards of the ``recsys stream`` driver on the same Ray cluster, found by
name: the stream names them ``SHARD_NAME_PREFIX + index`` (``stream.shards`` of them) in the Ray
namespace ``ray.namespace``, which every recsys driver joins (``recsys.ray_runtime``). The builder
reads the same recsys TOML as the stream, so both agree on the names, the Kafka cluster and the
topics. A replica that starts before the shards exist (the app deploys while the stream is still
starting, or recovering) answers 503 on ``/recommend`` and ``/health/ready`` until they appear:
it looks them up again on every refresh (``recsys.serving.snapshots``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recsys.config import Settings, load_settings
from recsys.validation import message

if TYPE_CHECKING:
    from ray.serve import Application

    from recsys.serving.service import ServiceConfig

SHARD_NAME_PREFIX = "recsys-shard-"
"""The Ray names of the stream's shards are this and the shard's index (``recsys stream`` and
``recsys serve`` both name them so)."""

ARGS = ("config",)
"""What ``build`` accepts in ``args``."""


def shard_names(settings: Settings) -> list[str]:
    """The Ray names of the ``stream.shards`` shards that ``recsys stream`` starts, in order."""
    return [f"{SHARD_NAME_PREFIX}{i}" for i in range(settings.stream.shards)]


def service_config(settings: Settings) -> ServiceConfig:
    """The replicas' configuration for the stream that runs with ``settings``: its Kafka cluster
    (``kafka.bootstrap``, which must be set: a deployed app cannot reach a broker embedded in
    another command), its named shards and the ``[serve]`` settings."""
    from recsys.serving.service import ServiceConfig

    if not settings.kafka.bootstrap:
        raise ValueError(message(
            "kafka.bootstrap", "the Kafka cluster the stream uses", "none",
            "set it in the config file or RECSYS_KAFKA_BOOTSTRAP (a deployed app cannot use "
            "an embedded or detached broker)"))
    if not settings.ray.namespace:
        raise ValueError(message(
            "ray.namespace", "the Ray namespace the stream's shards live in", "an empty name",
            "leave it unset (\"recsys\") or set the namespace the stream runs in"))
    return ServiceConfig.from_settings(
        settings, bootstrap=settings.kafka.bootstrap, shard_names=shard_names(settings),
        shard_namespace=settings.ray.namespace, client_options=settings.kafka.client_options())


def build(args: dict[str, Any]) -> Application:
    """Ray Serve app builder: ``{"config": "/etc/recsys/recsys.toml"}`` (without it:
    ``$RECSYS_CONFIG``, then ``./recsys.toml``; ``RECSYS_*`` variables override as for every
    command) → the ``Recommender`` app with ``serve.replicas`` replicas and the deployment options
    of ``recsys serve``, scoring with the shards of the ``recsys stream`` on the same cluster."""
    from recsys.serving.server import recommender_app

    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise ValueError(message("args", f"only {list(ARGS)}", f"{unknown}",
                                 "the other settings come from the recsys config file"))
    settings = load_settings(args.get("config"))
    return recommender_app(service_config(settings), settings.serve.replicas)
