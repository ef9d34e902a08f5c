"""Consistent checkpoints of streaming state: statistics, Kafka offsets, and the cluster they mean.

Exactly-once recovery stands on one rule: the offsets that produced a state are stored *with* that
state, in one unit that is either complete or absent. A checkpoint directory holds one ``.npz``
file per part (each shard's statistics, each joiner's open state) and a ``MANIFEST.json`` written
last and atomically; a directory without a manifest is an interrupted write and is never read.
The manifest records a SHA-256 per file, the Kafka cluster id and partition counts the offsets
belong to, the event schema version and the snapshot id of every statistics part.

Offsets are the *next* offset to read per ``(topic, partition)``, the form
``EventConsumer.positions()`` returns; restoring means loading the parts and seeking there. Offsets
mean nothing on another cluster or after partitions were added (keys hash to other partitions), so
:meth:`Checkpoint.check_compatible` refuses both with an error that says what to do.

Layout under the store's root (a local path or any fsspec URI)::

    ckpt-000000000007/stats-shard-0.npz
    ckpt-000000000007/state-joiner-0.npz
    ckpt-000000000007/MANIFEST.json
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.persistence import decode_npz, encode_npz
from recsys.bandits.protocol import Statistics, stats_from_arrays
from recsys.events import SCHEMA_VERSION
from recsys.storage import PathLike, join, read_bytes, resolve, write_bytes_atomic

FORMAT = "recsys.checkpoint/1"
MANIFEST = "MANIFEST.json"
STATE_FORMAT = "recsys.checkpoint.state/1"
_DIR = re.compile(r"^ckpt-(\d{12})$")
_PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Offsets = dict[tuple[str, int], int]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read as asked (the message says why and what to do)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to another Kafka cluster or partition layout than the configured one."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint's files do not match its manifest (truncated, edited or missing)."""


@dataclass(eq=False)
class Checkpoint:
    """One consistent cut: statistics parts, other array state, and the offsets behind them.

    ``partitions`` maps every topic the offsets name to its partition count when the checkpoint
    was taken. ``state`` holds non-statistics array state by owner (e.g. a joiner's open
    impressions); ``meta`` is JSON-safe free-form context (policy spec, config digest, ...).
    ``checkpoint_id`` and ``created_ms`` are set when the checkpoint is written or read.
    """

    stats: dict[str, Statistics]
    offsets: Offsets
    cluster_id: str
    partitions: dict[str, int]
    state: dict[str, dict[str, NDArray[Any]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    checkpoint_id: str | None = None
    created_ms: int | None = None

    @property
    def snapshot_id(self) -> dict[str, str]:
        """The identity of the statistics: each part's ``snapshot_id`` by part name."""
        return {name: stats.snapshot_id for name, stats in sorted(self.stats.items())}

    def validate(self) -> None:
        """Raise CheckpointError unless names, offsets and partition counts are consistent."""
        if not self.cluster_id:
            raise CheckpointError("cluster_id is empty: record the Kafka cluster id the offsets "
                                  "belong to (AdminClient describe_cluster)")
        for name in [*self.stats, *self.state]:
            if not _PART_NAME.match(name):
                raise CheckpointError(f"part name {name!r}: use letters, digits, '_', '.', '-'")
        clash = set(self.stats) & set(self.state)
        if clash:
            raise CheckpointError(f"part names used for both stats and state: {sorted(clash)}")
        for (topic, partition), offset in self.offsets.items():
            if topic not in self.partitions:
                raise CheckpointError(f"offsets name topic {topic!r} but partitions has no count "
                                      "for it")
            if not 0 <= int(partition) < int(self.partitions[topic]):
                raise CheckpointError(f"offset for {topic}[{partition}]: the topic has "
                                      f"{self.partitions[topic]} partitions")
            if int(offset) < 0:
                raise CheckpointError(f"offset for {topic}[{partition}] is {offset}; offsets are "
                                      ">= 0")

    def check_compatible(self, cluster_id: str, partitions: Mapping[str, int]) -> None:
        """Refuse to restore onto another cluster or another partition count of a topic."""
        where = f"checkpoint {self.checkpoint_id or '(unwritten)'}"
        if cluster_id != self.cluster_id:
            raise CheckpointMismatchError(
                f"{where} was taken on Kafka cluster {self.cluster_id!r}, but the configured "
                f"cluster is {cluster_id!r}: its offsets mean nothing there. Point "
                "kafka.bootstrap at the original cluster, or start from an empty checkpoint "
                "directory (the state will be rebuilt from the topics)"
            )
        for topic, count in sorted(self.partitions.items()):
            now = partitions.get(topic)
            if now is None:
                raise CheckpointMismatchError(
                    f"{where} has offsets for topic {topic!r}, which the cluster does not have "
                    "(was it deleted or renamed?)"
                )
            if int(now) != int(count):
                raise CheckpointMismatchError(
                    f"{where} was taken when {topic!r} had {count} partitions; it now has {now}. "
                    "Keys hash to different partitions after a change, so the offsets cannot "
                    "be reused: start from an empty checkpoint directory"
                )


class CheckpointStore:
    """Numbered checkpoints under one root (a local path or fsspec URI), newest wins.

    ``write`` stores the parts, then the manifest, atomically; ``latest`` reads the newest
    complete checkpoint; ``prune`` keeps the newest ``keep`` and removes interrupted writes.
    """

    def __init__(self, uri: PathLike, *, filesystem: Any = None, keep: int = 3) -> None:
        if int(keep) != keep or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}")
        self.uri = str(uri)
        self.keep = int(keep)
        self._fs, self._root = resolve(uri, filesystem)

    # ------------------------------------------------------------------ listing
    def _sequences(self) -> dict[int, bool]:
        """Every checkpoint directory's number, and whether it is complete (has a manifest)."""
        if not self._fs.exists(self._root):
            return {}
        found: dict[int, bool] = {}
        for entry in self._fs.ls(self._root, detail=False):
            match = _DIR.match(entry.rstrip("/").rsplit("/", 1)[-1])
            if match:
                found[int(match.group(1))] = self._fs.exists(join(entry, MANIFEST))
        return found

    def list(self) -> list[str]:
        """Ids of the complete checkpoints, oldest first."""
        return [_dir_name(seq) for seq, complete in sorted(self._sequences().items()) if complete]

    # ------------------------------------------------------------------ writing
    def write(self, checkpoint: Checkpoint, *, prune: bool = True) -> str:
        """Write ``checkpoint`` as the next number; returns its id. The manifest goes last."""
        checkpoint.validate()
        seq = max(self._sequences(), default=-1) + 1
        checkpoint_id = _dir_name(seq)
        directory = join(self._root, checkpoint_id)
        files: dict[str, dict[str, Any]] = {}
        for name, stats in sorted(checkpoint.stats.items()):
            arrays, meta = stats.to_arrays()
            files[f"stats/{name}"] = self._write_part(directory, f"stats-{name}.npz", meta, arrays)
        for name, arrays in sorted(checkpoint.state.items()):
            files[f"state/{name}"] = self._write_part(
                directory, f"state-{name}.npz", {"format": STATE_FORMAT}, arrays)
        created_ms = int(time.time() * 1000)
        manifest = {
            "format": FORMAT,
            "checkpoint_id": checkpoint_id,
            "created_ms": created_ms,
            "schema_version": checkpoint.schema_version,
            "kafka": {
                "cluster_id": checkpoint.cluster_id,
                "partitions": {t: int(n) for t, n in sorted(checkpoint.partitions.items())},
                "offsets": [[t, int(p), int(o)]
                            for (t, p), o in sorted(checkpoint.offsets.items())],
            },
            "snapshot_id": checkpoint.snapshot_id,
            "files": files,
            "meta": checkpoint.meta,
        }
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        write_bytes_atomic(self._fs, join(directory, MANIFEST), body)
        checkpoint.checkpoint_id, checkpoint.created_ms = checkpoint_id, created_ms
        if prune:
            self.prune()
        return checkpoint_id

    def _write_part(
        self, directory: str, filename: str, meta: dict[str, Any], arrays: dict[str, NDArray[Any]]
    ) -> dict[str, Any]:
        data = encode_npz(meta, {k: np.asarray(v) for k, v in arrays.items()})
        write_bytes_atomic(self._fs, join(directory, filename), data)
        return {"path": filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    # ------------------------------------------------------------------ reading
    def read(self, checkpoint_id: str) -> Checkpoint:
        """Read one complete checkpoint, verifying every file against the manifest."""
        directory = join(self._root, checkpoint_id)
        try:
            manifest = json.loads(read_bytes(self._fs, join(directory, MANIFEST)))
        except FileNotFoundError:
            raise CheckpointError(f"{self.uri}: {checkpoint_id} is not a complete checkpoint "
                                  "(no manifest)") from None
        except ValueError as exc:
            raise CheckpointCorruptError(f"{checkpoint_id}: unreadable manifest ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"{checkpoint_id}: manifest format {manifest.get('format')!r}, "
                                  f"expected {FORMAT!r}")
        stats: dict[str, Statistics] = {}
        state: dict[str, dict[str, NDArray[Any]]] = {}
        for key, entry in manifest["files"].items():
            kind, name = key.split("/", 1)
            meta, arrays = self._read_part(directory, checkpoint_id, entry)
            if kind == "stats":
                stats[name] = stats_from_arrays(arrays, meta)
            else:
                state[name] = arrays
        for name, expected in manifest["snapshot_id"].items():
            if stats[name].snapshot_id != expected:
                raise CheckpointCorruptError(f"{checkpoint_id}: part {name} holds snapshot "
                                             f"{stats[name].snapshot_id}, manifest says {expected}")
        kafka = manifest["kafka"]
        return Checkpoint(
            stats=stats,
            offsets={(t, int(p)): int(o) for t, p, o in kafka["offsets"]},
            cluster_id=kafka["cluster_id"],
            partitions={t: int(n) for t, n in kafka["partitions"].items()},
            state=state,
            meta=manifest.get("meta", {}),
            schema_version=int(manifest["schema_version"]),
            checkpoint_id=checkpoint_id,
            created_ms=int(manifest["created_ms"]),
        )

    def _read_part(
        self, directory: str, checkpoint_id: str, entry: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        where = f"{checkpoint_id}/{entry['path']}"
        try:
            data = read_bytes(self._fs, join(directory, entry["path"]))
        except FileNotFoundError:
            raise CheckpointCorruptError(f"{where}: listed in the manifest but missing") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointCorruptError(f"{where}: content does not match the manifest's "
                                         "size and SHA-256 (truncated or modified)")
        return decode_npz(data, where=where)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint that reads back intact, or None if there is none.

        A corrupt newest checkpoint is skipped with a warning (an older consistent cut replays
        more events but loses none).
        """
        for checkpoint_id in reversed(self.list()):
            try:
                return self.read(checkpoint_id)
            except CheckpointCorruptError as exc:
                warnings.warn(f"skipping corrupt checkpoint: {exc}", RuntimeWarning, stacklevel=2)
        return None

    def restore(self, cluster_id: str, partitions: Mapping[str, int]) -> Checkpoint | None:
        """:meth:`latest`, refused (CheckpointMismatchError) if it belongs elsewhere."""
        checkpoint = self.latest()
        if checkpoint is not None:
            checkpoint.check_compatible(cluster_id, partitions)
        return checkpoint

    # ------------------------------------------------------------------ pruning
    def prune(self, keep: int | None = None) -> list[str]:
        """Remove all but the newest ``keep`` complete checkpoints and older interrupted writes.

        An incomplete directory newer than the newest complete one may be a write in progress
        and is left alone. Returns the removed ids.
        """
        keep = self.keep if keep is None else int(keep)
        sequences = self._sequences()
        complete = sorted(seq for seq, ok in sequences.items() if ok)
        kept = set(complete[-keep:]) if keep > 0 else set()
        newest = complete[-1] if complete else -1
        removed = []
        for seq in sorted(sequences):
            if seq in kept or (not sequences[seq] and seq > newest):
                continue
            self._fs.rm(join(self._root, _dir_name(seq)), recursive=True)
            removed.append(_dir_name(seq))
        return removed


def _dir_name(seq: int) -> str:
    return f"ckpt-{seq:012d}"
