"""A streaming checkpoint registered as a bandit policy version: merged shards, the chosen policy
spec, lineage tags, idempotence; on a real mlflow store (sqlite in tmp_path)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.bandits import DenseStats, DiagLinUCB, EpsilonGreedy, merge_parts, policy_spec
from recsys.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from recsys.config import Settings, StreamSettings
from recsys.policies import RequestBatch
from recsys.registry.snapshots import choose_policy_spec, register_checkpoint
from recsys.serving.service import default_policies

N_ITEMS, DIM = 12, 3
UCB = policy_spec(DiagLinUCB(alpha=0.7))


def _settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data",
                    stream=StreamSettings(checkpoint_uri=str(tmp_path / "ckpt"), dim=DIM))


def _write(store: CheckpointStore, seed: int, meta: dict | None = None) -> Checkpoint:
    """A checkpoint of two shards that learned a little, as the pipeline writes one."""
    rng = np.random.default_rng(seed)
    stats = DenseStats.empty(np.arange(N_ITEMS), DIM)
    stats.learn(rng.normal(size=(40, DIM)), rng.integers(0, N_ITEMS, 40), rng.random(40))
    shards = stats.split(2)
    checkpoint = Checkpoint(
        stats={f"shard-{i}": part for i, part in enumerate(shards)},
        offsets={("imps", 0): 40 + seed, ("imps", 1): 38, ("fbs", 0): 9, ("fbs", 1): 7},
        cluster_id="cluster-a", partitions={"imps": 2, "fbs": 2}, meta=dict(meta or {}))
    store.write(checkpoint)
    return checkpoint


def test_a_checkpoint_registers_once_with_its_lineage_and_loads_back_as_the_policy(
        tmp_path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from recsys.registry import load_policy_model

    settings = _settings(tmp_path)
    store = CheckpointStore(settings.checkpoint_uri, keep=5)
    older = _write(store, 0)
    newest = _write(store, 1, meta={"policy": UCB, "events": 123})

    first = register_checkpoint(settings)  # the newest; its meta names the policy
    assert (first.name, first.version, first.created) == ("recsys-bandit", "1", True)
    assert first.uri == "models:/recsys-bandit/1"
    assert first.checkpoint_id == newest.checkpoint_id

    client = MlflowClient()
    version = client.get_model_version("recsys-bandit", "1")
    tags = version.tags
    assert tags["recsys.checkpoint_id"] == newest.checkpoint_id
    assert json.loads(tags["recsys.kafka_offsets"]) == {"fbs": {"0": 9, "1": 7},
                                                        "imps": {"0": 41, "1": 38}}
    assert tags["recsys.kafka_cluster_id"] == "cluster-a"
    assert json.loads(tags["recsys.policy_spec"]) == UCB
    assert tags["recsys.policy_source"] == "checkpoint"
    assert json.loads(tags["recsys.snapshot_id"]) == newest.snapshot_id
    assert tags["recsys.n_items"] == str(N_ITEMS) and tags["recsys.events"] == "123"
    assert tags["recsys.code_version"]
    assert newest.checkpoint_id in version.description
    run = mlflow.get_run(first.run_id)
    assert run.info.run_name == f"snapshot-{newest.checkpoint_id}"
    assert run.data.tags["recsys.kind"] == "bandit-snapshot"
    assert run.data.tags["recsys.checkpoint_id"] == newest.checkpoint_id

    loaded = load_policy_model(first.uri)
    merged = merge_parts(list(newest.stats.values()))
    assert loaded.kind == "bandit" and loaded.spec == UCB
    assert loaded.policy.stats_.allclose(merged, rtol=0, atol=0)
    expected = DiagLinUCB(alpha=0.7).use(merged)
    batch = RequestBatch.of(user_ids=[str(i) for i in range(5)],
                            dense=np.random.default_rng(9).normal(size=(5, DIM)))
    np.testing.assert_array_equal(loaded.action_dist(batch, 3),
                                  expected.action_dist(batch.dense, 3))

    again = register_checkpoint(settings, newest.checkpoint_id)  # nothing new: the same version
    assert (again.version, again.created, again.run_id) == ("1", False, first.run_id)

    greedy = policy_spec(EpsilonGreedy(epsilon=0.1))  # another policy is another model
    other = register_checkpoint(settings, policy_spec=json.dumps(greedy))
    assert (other.version, other.created) == ("2", True)
    assert client.get_model_version("recsys-bandit", "2").tags["recsys.policy_source"] == \
        "argument"

    old = register_checkpoint(settings, older.checkpoint_id, name="bandit-b")
    assert (old.name, old.version, old.checkpoint_id) == ("bandit-b", "1", older.checkpoint_id)
    assert json.loads(client.get_model_version("bandit-b", "1").tags["recsys.policy_spec"]) == \
        default_policies(settings)["diag_lin_ts"]  # no spec given or stored: serving's default
    assert len(client.search_model_versions("name='recsys-bandit'")) == 2


def test_the_policy_spec_is_the_argument_else_the_checkpoints_else_serving_default(
        tmp_path) -> None:
    settings = _settings(tmp_path)
    store = CheckpointStore(settings.checkpoint_uri)
    plain, stored = _write(store, 0), _write(store, 1, meta={"policy": UCB})
    default = default_policies(settings)["diag_lin_ts"]
    assert choose_policy_spec(settings, plain) == (default, "serving default")
    assert choose_policy_spec(settings, stored) == (UCB, "checkpoint")
    assert choose_policy_spec(settings, stored, json.dumps(default)) == (default, "argument")
    with pytest.raises(ValueError, match=r"^policy_spec: expected a policy spec as JSON text"):
        choose_policy_spec(settings, plain, "{not json")
    with pytest.raises(TypeError, match=r"^policy_spec: expected a policy spec mapping"):
        choose_policy_spec(settings, plain, "[1, 2]")


def test_what_cannot_be_registered_is_refused_before_mlflow_is_touched(tmp_path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*ckpt"):
        register_checkpoint(settings)
    store = CheckpointStore(settings.checkpoint_uri)
    written = _write(store, 0)
    with pytest.raises(CheckpointError, match=rf"^checkpoint_id: expected one of the checkpoints "
                                              rf"in .* \({written.checkpoint_id}\), got 'nope'"):
        register_checkpoint(settings, "nope")
    with pytest.raises(ValueError, match=r"policy spec from the argument does not fit .*lam"):
        register_checkpoint(settings, policy_spec=policy_spec(DiagLinUCB(lam=5.0)))
    with pytest.raises(ValueError, match=r"^name: expected a registered model name"):
        register_checkpoint(settings, name=" ")
    assert not (settings.data_dir / "mlflow.db").exists()
