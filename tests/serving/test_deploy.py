"""The Serve app builder a RayService imports (``recsys.serving.deploy:build``).

Unit checks (no Ray): it passes Ray Serve's own builder rules and returns the ``Recommender``
with ``recsys serve``'s replica count and options, bound to the stream's shard names in
``ray.namespace``; it refuses what a deployment cannot work with. Integration (real Ray, Serve
and Kafka): the RayService's own ``serveConfigV2`` deployed through the Serve controller, as
KubeRay deploys it, answers 503 until a pipeline's named shards appear and then serves a slate;
a replica started before the stream's topics exist starts unready instead of failing.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from recsys.config import ConfigError, load_settings
from recsys.serving import deploy
from recsys.serving.server import deployment_options

REPO_ROOT = Path(__file__).resolve().parents[2]
RAYSERVICE = REPO_ROOT / "infra" / "kuberay" / "rayservice-serve.yaml"


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    """A recsys TOML with these ``[section]`` tables (string, number and bool values)."""
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def bound(app: Any) -> tuple[Any, dict[str, Any]]:
    """The deployment an Application binds and the replica config it passes."""
    deployment = app._bound_deployment
    (config,) = deployment.init_args
    return deployment, config


def uniform_spec() -> dict[str, Any]:
    from recsys.bandits import EpsilonGreedy, policy_spec

    return {"uniform": policy_spec(EpsilonGreedy(epsilon=1.0, centred=True))}


# -- unit: no Ray ---------------------------------------------------------------------------------

def test_build_binds_the_recommender_to_the_streams_named_shards(tmp_path, monkeypatch) -> None:
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from recsys.serving.app import Recommender

    monkeypatch.delenv("RECSYS_CONFIG", raising=False)
    path = write_config(tmp_path / "recsys.toml",
                        kafka={"bootstrap": "kafka-a:9092,kafka-b:9092", "client": "confluent"},
                        stream={"shards": 3}, ray={"namespace": "prod"},
                        serve={"replicas": 4, "max_queued_requests": 50, "retry_after_s": 2})
    app = call_user_app_builder_with_args_if_necessary(deploy.build, {"config": str(path)})
    assert isinstance(app, Application)
    deployment, config = bound(app)
    assert deployment.func_or_class is Recommender.func_or_class
    settings = load_settings(path)
    options = deployment_options(settings.serve)
    assert deployment.num_replicas == 4
    assert deployment.ray_actor_options == options["ray_actor_options"]
    assert deployment.max_ongoing_requests == options["max_ongoing_requests"] == 4 * 50 + 256
    assert deployment.max_queued_requests == options["max_queued_requests"]
    assert deployment._deployment_config.backpressure_config.retry_after_s == 2
    assert config["shard_names"] == ["recsys-shard-0", "recsys-shard-1", "recsys-shard-2"]
    assert config["shard_namespace"] == "prod"
    assert config["bootstrap"] == "kafka-a:9092,kafka-b:9092"
    assert config["client_options"] == {"client": "confluent"}
    assert config["serve"]["replicas"] == 4 and config["serve"]["max_queued_requests"] == 50


def test_build_reads_recsys_config_and_variables_without_args(tmp_path, monkeypatch) -> None:
    path = write_config(tmp_path / "recsys.toml", kafka={"bootstrap": "k:9092"})
    monkeypatch.setenv("RECSYS_CONFIG", str(path))
    monkeypatch.setenv("RECSYS_STREAM_SHARDS", "2")
    deployment, config = bound(deploy.build({}))
    assert config["shard_names"] == ["recsys-shard-0", "recsys-shard-1"]
    assert config["shard_namespace"] == "recsys"  # the default every recsys driver joins
    assert deployment.num_replicas == 1


def test_build_refuses_what_a_deployment_cannot_serve_with(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RECSYS_CONFIG", raising=False)
    monkeypatch.delenv("RECSYS_KAFKA_BOOTSTRAP", raising=False)
    good = write_config(tmp_path / "good.toml", kafka={"bootstrap": "k:9092"})
    with pytest.raises(ValueError, match=r"^args: expected only \['config'\], got \['confg'\]"):
        deploy.build({"confg": str(good)})
    with pytest.raises(ConfigError, match="an existing TOML file"):
        deploy.build({"config": str(tmp_path / "missing.toml")})
    embedded = write_config(tmp_path / "embedded.toml", stream={"shards": 1})
    with pytest.raises(ValueError, match=r"^kafka\.bootstrap: expected the Kafka cluster"):
        deploy.build({"config": str(embedded)})
    anonymous = write_config(tmp_path / "anonymous.toml", kafka={"bootstrap": "k:9092"},
                             ray={"namespace": ""})
    with pytest.raises(ValueError, match=r"^ray\.namespace: expected the Ray namespace"):
        deploy.build({"config": str(anonymous)})


def test_recsys_serve_and_recsys_stream_name_shards_as_the_builder_looks_them_up() -> None:
    from streaming.live import SHARD_NAME_PREFIX

    assert SHARD_NAME_PREFIX == deploy.SHARD_NAME_PREFIX
    source = (REPO_ROOT / "streaming" / "stream_cli.py").read_text()
    assert "shard_name_prefix=SHARD_NAME_PREFIX" in source  # the stream names its shards


# -- integration: real Ray Serve, Kafka and pipeline ----------------------------------------------

def get(url: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(url, timeout=10)
    return response.status_code, response.json()


def wait_for(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    """Poll ``check()`` until it returns something truthy; fail saying ``what`` never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.2)


@pytest.mark.integration
def test_the_rayservice_config_serves_once_the_streams_shards_appear(
        kafka_bootstrap, ray_session, tmp_path) -> None:
    import ray
    from ray import serve
    from ray.serve import context
    from ray.serve.schema import ServeDeploySchema

    from recsys.serving.server import APP_NAME, stop_serving, wait_healthy
    from streaming.broker import free_port
    from streaming.pipeline import StreamPipeline
    from streaming.shards import dense_statistics
    from streaming.topics import ensure_topics, standard_topics

    n_items, dim, port = 20, 4, free_port()
    path = write_config(
        tmp_path / "recsys.toml",
        kafka={"bootstrap": kafka_bootstrap, "partitions": 1},
        ray={"namespace": ray.get_runtime_context().namespace},  # the test driver's
        stream={"learners": 1, "shards": 2, "joiners": 1, "n_items": n_items, "dim": dim,
                "checkpoint_interval_s": 3600.0},
        serve={"port": port, "policies": json.dumps(uniform_spec()), "traffic": "uniform=1"})
    settings = load_settings(path)
    # KubeRay PUTs serveConfigV2 to the dashboard, which starts Serve with its HTTP options and
    # has the controller import and call the builder in a Ray task: the same steps here.
    (service,) = [o for o in yaml.safe_load_all(RAYSERVICE.read_text())
                  if o["kind"] == "RayService"]
    spec = yaml.safe_load(service["spec"]["serveConfigV2"])
    spec["http_options"].update(host="127.0.0.1", port=port)
    (app,) = spec["applications"]
    app["args"]["config"] = str(path)
    config = ServeDeploySchema.model_validate(spec)
    ensure_topics(kafka_bootstrap, standard_topics(1), 1)
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options=config.http_options.model_dump(),
                proxy_location=config.proxy_location, grpc_options={"port": free_port()})
    pipeline = None
    try:
        context._get_global_client().deploy_apps(config)

        def running() -> bool:
            status = serve.status().applications.get(APP_NAME)
            assert status is None or status.status != "DEPLOY_FAILED", status.message
            return status is not None and status.status == "RUNNING"

        wait_for("the app was not RUNNING", running)
        # no shards yet: not ready, and no slate, each 503 saying why
        code, body = wait_for("/health/ready did not say the shards are missing",
                              lambda: (lambda a: a if "not found" in a[1]["detail"] else None)(
                                  get(f"{url}/health/ready")))
        assert code == 503 and "is the streaming pipeline running" in body["detail"], body
        request = {"user_id": "u1", "context": {"dense": [0.1] * dim}, "k": 3}
        refused = requests.post(f"{url}/recommend", json=request, timeout=10)
        assert refused.status_code == 503 and "no snapshot" in refused.json()["detail"]

        pipeline = StreamPipeline(kafka_bootstrap, settings.stream,
                                  dense_statistics(np.arange(n_items), dim),
                                  str(tmp_path / "checkpoints"),
                                  client_options=settings.kafka.client_options(),
                                  shard_name_prefix=deploy.SHARD_NAME_PREFIX)
        pipeline.start()
        health = wait_healthy(url, 60)
        assert health["ready"] and health["snapshot_id"].count("+") == 1  # both shards merged
        served = requests.post(f"{url}/recommend", json=request, timeout=10)
        assert served.status_code == 200, served.text
        slate = served.json()
        assert len(set(slate["items"])) == 3 and set(slate["items"]) <= set(range(n_items))
        assert all(0 < p <= 1 for p in slate["propensities"]), slate
    finally:
        stop_serving()
        if pipeline is not None:
            pipeline.stop(checkpoint=False)


@pytest.mark.integration
def test_a_replica_started_before_the_streams_topics_exist_is_unready_not_failed(
        kafka_bootstrap, ray_session, tmp_path) -> None:
    from recsys.serving.service import RecommenderService
    from streaming.topics import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    path = write_config(tmp_path / "recsys.toml", kafka={"bootstrap": kafka_bootstrap},
                        serve={"policies": json.dumps(uniform_spec()), "traffic": "uniform=1"})
    config = deploy.service_config(load_settings(path))
    config.impressions_topic, config.feedback_topic = f"test.imp.{suffix}", f"test.fb.{suffix}"
    service = RecommenderService(config, start=False)  # warm() used to raise KafkaTimeoutError
    try:
        state = service.kafka.state()
        assert not state.writable and f"test.imp.{suffix}" in state.detail, state
        assert not service.health().ready
        ensure_topics(kafka_bootstrap, {config.impressions_topic: 1, config.feedback_topic: 1})
        wait_for("Kafka did not turn writable once the topics existed",
                 lambda: service.kafka.check().writable)
    finally:
        service.close()
