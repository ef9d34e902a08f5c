"""Bandit snapshots in the registry: a streaming checkpoint registered as a policy model version.

:func:`register_checkpoint` reads one checkpoint of the streaming pipeline straight from its store
(``recsys`` never imports ``streaming``), merges its shards' statistics into one, puts a policy
on them and logs that as a bandit policy model (``recsys.registry.bandit_model``) in an mlflow run
named ``snapshot-<checkpoint id>``, registered as a version of ``stream.registered_model``. The
stream calls it on a schedule (``stream.register_every_s``, ``streaming.registrar``);
``recsys models register --checkpoint ID`` calls it on demand.

Which policy. The ``policy_spec`` argument, else the spec the pipeline stored in the checkpoint's
``meta["policy"]`` (the policy serving ran while the statistics were learned), else serving's
default learning policy, ``default_policies(settings)["diag_lin_ts"]``. The run and the version
say which one was used (``recsys.policy_source``: argument, checkpoint or serving default).

Lineage. Run and version carry ``recsys.checkpoint_id``, ``recsys.kafka_offsets`` (JSON
``{topic: {partition: next offset}}``), ``recsys.kafka_cluster_id``, ``recsys.code_version``,
``recsys.policy_spec`` (JSON), ``recsys.snapshot_id`` (JSON ``{part: snapshot id}``),
``recsys.n_items`` and, when the checkpoint's meta records it, ``recsys.events``.

Idempotence. A version of the same model with the same checkpoint id, Kafka cluster, statistics
(snapshot ids) and policy spec is the same model: registering it again returns that version
(``created`` False) instead of a duplicate. Another policy spec on the same checkpoint is another
model, so it gets a new version. Two registrations of one checkpoint racing each other may both
create a version (the registry has no unique constraint to stop them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from recsys.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from recsys.config import Settings
from recsys.registry.lineage import code_version
from recsys.validation import message

SNAPSHOT_KIND = "bandit-snapshot"
"""The ``recsys.kind`` tag of a snapshot's run."""

TAG = "recsys."
_IDENTITY = ("checkpoint_id", "kafka_cluster_id", "snapshot_id", "policy_spec")
"""The lineage tags that make two registrations the same model (module docs: idempotence)."""


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered snapshot: ``models:/NAME/VERSION``, its run, and the checkpoint behind it.

    ``created`` is False when the checkpoint was registered already and that version was returned.
    """

    name: str
    version: str
    uri: str
    run_id: str | None
    checkpoint_id: str
    created: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what the stream's registrar reports)."""
        return asdict(self)


def read_checkpoint(store: CheckpointStore, checkpoint_id: str | None = None) -> Checkpoint:
    """Checkpoint ``checkpoint_id`` of ``store`` (None: the newest); an absent id is a
    CheckpointError that says which ids the store holds."""
    ids = store.list()
    if not ids:
        raise CheckpointError(
            f"no complete checkpoint in {store.uri}: `recsys stream` writes them there "
            "(stream.checkpoint_uri); on an embedded broker they are in a folder below it "
            "named by the cluster id, so pass that location")
    if checkpoint_id is None:
        checkpoint = store.latest()
        if checkpoint is None:
            raise CheckpointError(f"no intact checkpoint in {store.uri} (all are corrupt)")
        return checkpoint
    if checkpoint_id not in ids:
        held = ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}"
        raise CheckpointError(message("checkpoint_id", f"one of the checkpoints in {store.uri} "
                                      f"({held})", repr(checkpoint_id),
                                      "`recsys checkpoints list` shows them"))
    return store.read(checkpoint_id)


def choose_policy_spec(settings: Settings, checkpoint: Checkpoint,
                       policy_spec: Mapping[str, Any] | str | None = None
                       ) -> tuple[dict[str, Any], str]:
    """The policy spec to register and where it came from: the argument, else the checkpoint's
    ``meta["policy"]``, else serving's default learning policy (module docs)."""
    if policy_spec is not None:
        spec, source = policy_spec, "argument"
    elif checkpoint.meta.get("policy") is not None:
        spec, source = checkpoint.meta["policy"], "checkpoint"
    else:
        from recsys.serving.service import default_policies

        spec, source = default_policies(settings)["diag_lin_ts"], "serving default"
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise ValueError(message("policy_spec", "a policy spec as JSON text",
                                     f"text that does not parse ({err})")) from None
    if not isinstance(spec, Mapping):
        raise TypeError(message("policy_spec", "a policy spec mapping (recsys.bandits."
                                "policy_spec form)", type(spec).__name__))
    return dict(spec), source


def lineage(checkpoint: Checkpoint, spec: Mapping[str, Any], source: str, n_items: int
            ) -> dict[str, str]:
    """The lineage tags of a snapshot of ``checkpoint`` under ``spec`` (module docs)."""
    offsets: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(checkpoint.offsets.items()):
        offsets.setdefault(topic, {})[str(partition)] = int(offset)
    tags = {
        "checkpoint_id": str(checkpoint.checkpoint_id),
        "kafka_offsets": json.dumps(offsets, sort_keys=True),
        "kafka_cluster_id": checkpoint.cluster_id,
        "code_version": code_version(),
        "policy_spec": json.dumps(spec, sort_keys=True),
        "policy_source": source,
        "snapshot_id": json.dumps(checkpoint.snapshot_id, sort_keys=True),
        "n_items": str(int(n_items)),
    }
    if checkpoint.meta.get("events") is not None:
        tags["events"] = str(int(checkpoint.meta["events"]))
    return {TAG + key: value for key, value in tags.items()}


def find_registered(name: str, tags: Mapping[str, str]) -> Any | None:
    """The oldest version of ``name`` registered from the same checkpoint, cluster, statistics
    and policy spec as ``tags`` say, or None (module docs: idempotence)."""
    from mlflow import MlflowClient

    key = TAG + "checkpoint_id"
    found = MlflowClient().search_model_versions(f"tags.`{key}` = '{tags[key]}'")
    same = [v for v in found if v.name == name
            and all(v.tags.get(TAG + k) == tags[TAG + k] for k in _IDENTITY)]
    return min(same, key=lambda v: int(v.version), default=None)


def _description(checkpoint: Checkpoint, spec: Mapping[str, Any], n_items: int, layout: str
                 ) -> str:
    taken = datetime.fromtimestamp((checkpoint.created_ms or 0) / 1000, UTC)
    records = sum(checkpoint.offsets.values())
    return (f"Online bandit snapshot: {spec.get('class')} on the {layout} statistics of "
            f"streaming checkpoint {checkpoint.checkpoint_id} ({n_items:,} items, "
            f"{len(checkpoint.stats)} shard(s)), taken {taken:%Y-%m-%d %H:%M:%S}Z on Kafka "
            f"cluster {checkpoint.cluster_id} at {records:,} records of "
            f"{', '.join(sorted({t for t, _ in checkpoint.offsets}))}.")


def register_checkpoint(
    settings: Settings,
    checkpoint_id: str | None = None,
    *,
    name: str | None = None,
    policy_spec: Mapping[str, Any] | str | None = None,
    store_uri: str | None = None,
) -> RegisteredVersion:
    """Register checkpoint ``checkpoint_id`` (None: the newest) of ``store_uri`` (None:
    ``settings.checkpoint_uri``) as a version of ``name`` (None: ``stream.registered_model``);
    an already registered checkpoint returns its version (module docs)."""
    from recsys.bandits import merge_parts, policy_from_spec

    name = settings.stream.registered_model if name is None else name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(message("name", "a registered model name", repr(name)))
    store = CheckpointStore(store_uri or settings.checkpoint_uri)
    checkpoint = read_checkpoint(store, checkpoint_id)
    spec, source = choose_policy_spec(settings, checkpoint, policy_spec)
    stats = merge_parts([checkpoint.stats[part] for part in sorted(checkpoint.stats)])
    try:
        policy = policy_from_spec(spec).use(stats)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"policy spec from the {source} does not fit checkpoint "
                         f"{checkpoint.checkpoint_id}: {exc}") from None
    tags = lineage(checkpoint, spec, source, stats.n_items)

    import mlflow

    from recsys.registry.mlflow_io import log_policy_model
    from recsys.registry.model import bandit_model
    from recsys.tracking import configure_mlflow

    configure_mlflow(settings)
    existing = find_registered(name, tags)
    if existing is not None:
        return RegisteredVersion(name, str(existing.version), f"models:/{name}/{existing.version}",
                                 existing.run_id, str(checkpoint.checkpoint_id), created=False)
    meta = {key.removeprefix(TAG): value for key, value in tags.items()}
    model = bandit_model(policy, meta=meta)
    run_tags = {**tags, TAG + "kind": SNAPSHOT_KIND}
    with mlflow.start_run(run_name=f"snapshot-{checkpoint.checkpoint_id}", tags=run_tags) as run:
        info = log_policy_model(
            model, registered_model_name=name, tags=tags,
            description=_description(checkpoint, spec, stats.n_items, stats.layout))
    version = str(info.registered_model_version)
    return RegisteredVersion(name, version, f"models:/{name}/{version}", run.info.run_id,
                             str(checkpoint.checkpoint_id))
