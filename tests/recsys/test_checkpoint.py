"""Checkpoints: statistics, state and offsets in one unit that is complete or absent."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest

from recsys.bandits import DenseStats, GraphStats
from recsys.checkpoint import (
    MANIFEST,
    Checkpoint,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointStore,
)

TOPICS = {"recsys.impressions": 3, "recsys.feedback": 3}


def _checkpoint(seed: int = 0) -> Checkpoint:
    rng = np.random.default_rng(seed)
    items = np.arange(20)
    whole = DenseStats.empty(items, 4, centred=True)
    whole.learn(rng.normal(size=(200, 4)), rng.integers(0, 20, 200), rng.random(200))
    graph = GraphStats.empty(items, 3, [0, 1, 2, 2], [1, 2, 3, 4])
    graph.learn(([[0, 2]], [[0.5, 0.5]]), [1], [1.0])
    shards = whole.split(2)
    return Checkpoint(
        stats={"shard-0": shards[0], "shard-1": shards[1], "graph": graph},
        offsets={("recsys.impressions", p): 100 * p + seed for p in range(3)}
        | {("recsys.feedback", 1): 7},
        cluster_id="cluster-A",
        partitions=dict(TOPICS),
        state={"joiner-0": {"open_request_ids": np.array([5, 9, 11]),
                            "deadline_ms": np.array([10, 20, 30])}},
        meta={"policy": {"class": "DiagLinTS", "params": {"v": 1.0}}},
    )


@pytest.mark.parametrize("root", ["local", "memory"])
def test_round_trip_restores_statistics_offsets_and_state(root: str, tmp_path) -> None:
    uri = str(tmp_path / "ckpt") if root == "local" else f"memory://ckpt-{tmp_path.name}"
    store = CheckpointStore(uri)
    original = _checkpoint()
    checkpoint_id = store.write(original)
    assert store.list() == [checkpoint_id]
    back = store.latest()
    assert back is not None and back.checkpoint_id == checkpoint_id
    assert back.offsets == original.offsets
    assert back.cluster_id == "cluster-A" and back.partitions == TOPICS
    assert back.snapshot_id == original.snapshot_id
    for name, stats in original.stats.items():
        assert type(back.stats[name]) is type(stats) and back.stats[name].allclose(stats)
    np.testing.assert_array_equal(back.state["joiner-0"]["deadline_ms"], [10, 20, 30])
    assert back.meta == original.meta
    assert back.created_ms is not None and back.schema_version == original.schema_version


def test_newest_complete_checkpoint_wins_and_a_missing_manifest_means_absent(tmp_path) -> None:
    store = CheckpointStore(tmp_path, keep=10)
    first = store.write(_checkpoint(1))
    second = store.write(_checkpoint(2))
    assert store.list() == [first, second]
    # an interrupted write: every part there, the manifest never written
    third = store.write(_checkpoint(3), prune=False)
    (tmp_path / third / MANIFEST).unlink()
    assert store.list() == [first, second]
    latest = store.latest()
    assert latest is not None and latest.checkpoint_id == second
    assert latest.offsets[("recsys.impressions", 0)] == 2
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        store.read(third)
    # the next write takes a new number, never the interrupted one's
    fourth = store.write(_checkpoint(4), prune=False)
    assert fourth > third and store.latest().checkpoint_id == fourth
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_prune_keeps_the_newest_and_removes_interrupted_writes(tmp_path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    ids = [store.write(_checkpoint(i), prune=False) for i in range(4)]
    (tmp_path / ids[1] / MANIFEST).unlink()  # an old interrupted write
    removed = store.prune()
    assert removed == [ids[0], ids[1]]
    assert store.list() == ids[2:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ids[2:]
    store.write(_checkpoint(9))  # write prunes by default
    assert len(store.list()) == 2


def test_restore_refuses_another_cluster_or_partition_count(tmp_path) -> None:
    store = CheckpointStore(tmp_path)
    store.write(_checkpoint())
    assert store.restore("cluster-A", TOPICS) is not None
    with pytest.raises(CheckpointMismatchError,
                       match="taken on Kafka cluster 'cluster-A', but the configured cluster "
                             "is 'cluster-B'"):
        store.restore("cluster-B", TOPICS)
    with pytest.raises(CheckpointMismatchError,
                       match=r"'recsys\.feedback' had 3 partitions; it now has 6"):
        store.restore("cluster-A", {"recsys.impressions": 3, "recsys.feedback": 6})
    with pytest.raises(CheckpointMismatchError, match="which the cluster does not have"):
        store.restore("cluster-A", {"recsys.impressions": 3})
    assert CheckpointStore(tmp_path / "empty").restore("cluster-B", TOPICS) is None


def test_corrupt_parts_are_detected_and_skipped_for_an_older_cut(tmp_path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    good = store.write(_checkpoint(1))
    bad = store.write(_checkpoint(2))
    part = tmp_path / bad / "stats-shard-1.npz"
    data = bytearray(part.read_bytes())
    data[-10] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="does not match the manifest"):
        store.read(bad)
    with pytest.warns(RuntimeWarning, match="skipping corrupt checkpoint"):
        latest = store.latest()
    assert latest is not None and latest.checkpoint_id == good
    part.unlink()
    with pytest.raises(CheckpointCorruptError, match="listed in the manifest but missing"):
        store.read(bad)


def test_invalid_checkpoints_are_refused_before_anything_is_written(tmp_path) -> None:
    store = CheckpointStore(tmp_path)
    ckpt = _checkpoint()
    ckpt.offsets[("recsys.impressions", 3)] = 5
    with pytest.raises(CheckpointError, match=r"recsys.impressions\[3\]: the topic has 3"):
        store.write(ckpt)
    ckpt = _checkpoint()
    ckpt.offsets[("recsys.rewards", 0)] = 5
    with pytest.raises(CheckpointError, match="no count for it"):
        store.write(ckpt)
    ckpt = _checkpoint()
    ckpt.cluster_id = ""
    with pytest.raises(CheckpointError, match="cluster_id is empty"):
        store.write(ckpt)
    ckpt = _checkpoint()
    ckpt.stats["../escape"] = ckpt.stats.pop("graph")
    with pytest.raises(CheckpointError, match=r"part name '\.\./escape'"):
        store.write(ckpt)
    assert store.list() == [] and not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="keep must be a positive integer"):
        CheckpointStore(tmp_path, keep=0)


def test_manifest_is_plain_json_naming_what_the_checkpoint_holds(tmp_path) -> None:
    store = CheckpointStore(f"memory://manifest-{tmp_path.name}")
    ckpt = _checkpoint()
    checkpoint_id = store.write(ckpt)
    fs = fsspec.filesystem("memory")
    manifest = json.loads(fs.cat(f"/manifest-{tmp_path.name}/{checkpoint_id}/{MANIFEST}"))
    assert manifest["kafka"]["cluster_id"] == "cluster-A"
    assert ["recsys.feedback", 1, 7] in manifest["kafka"]["offsets"]
    assert manifest["snapshot_id"] == ckpt.snapshot_id
    assert set(manifest["files"]) == {"stats/shard-0", "stats/shard-1", "stats/graph",
                                      "state/joiner-0"}
