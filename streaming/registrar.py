"""Bandit snapshots registered from the stream on a schedule, off its hot path.

:class:`SnapshotRegistrar` (as the Ray actor :data:`SnapshotRegistrarActor`) does one job: it
registers a checkpoint the pipeline wrote as a model version (``recsys.registry.snapshots.
register_checkpoint``), in its own process, so mlflow never holds the driver's GIL or a step.
:class:`RegistrationSchedule` is the pipeline's side: after a checkpoint, when
``stream.register_every_s`` has passed since the last hand-over, it hands the checkpoint id to
the actor and returns at once. One registration runs at a time; a checkpoint that comes while one
is running is skipped (the next checkpoint is newer anyway). A failure, even the actor's death,
is logged and counted in :meth:`RegistrationSchedule.counters`, never raised into the stream; a
dead actor is replaced at the next hand-over. A checkpoint pruned before its turn
(``stream.checkpoints_keep``) is replaced by the newest one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import ray

from recsys.checkpoint import CheckpointStore
from recsys.config import Settings

log = logging.getLogger(__name__)


class SnapshotRegistrar:
    """Registers checkpoints of one store as versions of ``stream.registered_model``."""

    def __init__(self, settings: Settings, store_uri: str) -> None:
        import mlflow  # noqa: F401 - imported now (seconds), not at the first registration

        self.settings = settings
        self.store_uri = store_uri

    def register(self, checkpoint_id: str) -> dict[str, Any]:
        """Register ``checkpoint_id``, or the newest checkpoint if it was pruned meanwhile; the
        version as a dict with ``ok`` True, or ``ok`` False and the error (its traceback goes
        to this actor's log)."""
        from recsys.registry.snapshots import register_checkpoint

        try:
            held = CheckpointStore(self.store_uri).list()
            if checkpoint_id not in held and held and held[-1] > checkpoint_id:
                log.info("checkpoint %s was pruned before its registration; registering the "
                         "newest, %s", checkpoint_id, held[-1])
                checkpoint_id = held[-1]
            version = register_checkpoint(self.settings, checkpoint_id, store_uri=self.store_uri)
        except Exception as exc:  # reported to the schedule, which counts it
            log.error("registering checkpoint %s failed:\n%s", checkpoint_id,
                      traceback.format_exc())
            return {"ok": False, "checkpoint_id": checkpoint_id,
                    "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, **version.to_dict()}


SnapshotRegistrarActor = ray.remote(num_cpus=0)(SnapshotRegistrar)
"""``SnapshotRegistrar`` as a Ray actor."""


class RegistrationSchedule:
    """Hands checkpoints to a :class:`SnapshotRegistrarActor` every ``every_s`` seconds (default
    ``stream.register_every_s``), counted from its creation; never waits for mlflow (module
    docs). ``on_result`` is called with each finished registration's dict."""

    def __init__(self, settings: Settings, store_uri: str, *, every_s: float | None = None,
                 on_result: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        every_s = settings.stream.register_every_s if every_s is None else float(every_s)
        if not every_s > 0:
            raise ValueError(f"every_s: expected seconds > 0, got {every_s!r}; with 0 "
                             "(stream.register_every_s) snapshots are registered on demand only")
        # the actor runs in another process, maybe another directory: absolute paths only
        self.settings = dataclasses.replace(settings, data_dir=settings.data_dir.resolve())
        self.store_uri = store_uri
        self.every_s = every_s
        self.on_result = on_result
        # started now, so it has imported mlflow by the first hand-over
        self._actor: Any = SnapshotRegistrarActor.remote(self.settings, store_uri)
        self._pending: tuple[str, Any] | None = None
        self._last_handed = time.monotonic()
        self.handed = self.registered = self.existing = self.failed = self.skipped = 0
        self.last: dict[str, Any] | None = None
        self.last_error: str | None = None

    def after_checkpoint(self, checkpoint_id: str) -> bool:
        """Hand ``checkpoint_id`` over if the interval has passed and none is running; returns
        whether it was handed over. Never raises."""
        self.poll()
        if time.monotonic() - self._last_handed < self.every_s:
            return False
        if self._pending is not None:
            self.skipped += 1
            return False
        try:
            if self._actor is None:
                self._actor = SnapshotRegistrarActor.remote(self.settings, self.store_uri)
            self._pending = (checkpoint_id, self._actor.register.remote(checkpoint_id))
        except Exception as exc:  # Ray refused the call: counted, the stream goes on
            self._failed(checkpoint_id, f"{type(exc).__name__}: {exc}")
            self._actor = None
            return False
        self._last_handed = time.monotonic()
        self.handed += 1
        return True

    def poll(self, timeout_s: float = 0.0) -> None:
        """Collect the running registration if it finished (waiting up to ``timeout_s``)."""
        if self._pending is None:
            return
        checkpoint_id, ref = self._pending
        try:
            ready, _ = ray.wait([ref], timeout=timeout_s)
            if not ready:
                return
            result = ray.get(ref)
        except Exception as exc:  # the actor died (or Ray is going away): replace it next time
            self._pending, self._actor = None, None
            self._failed(checkpoint_id, f"{type(exc).__name__}: {exc}")
            return
        self._pending = None
        if not result.get("ok"):
            self._failed(checkpoint_id, str(result.get("error")))
        else:
            self.last = result
            if result.get("created", True):
                self.registered += 1
            else:
                self.existing += 1
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:  # a reporting callback must not stop the stream either
                log.exception("registration callback failed")

    def _failed(self, checkpoint_id: str, error: str) -> None:
        self.failed += 1
        self.last_error = f"{checkpoint_id}: {error}"
        log.warning("snapshot registration of checkpoint %s failed: %s", checkpoint_id, error)

    @property
    def running(self) -> bool:
        """Whether a registration is in progress."""
        return self._pending is not None

    def counters(self) -> dict[str, Any]:
        """Hand-overs, versions created, already registered, failures, skipped checkpoints, the
        last version's URI and the last error."""
        self.poll()
        return {"handed": self.handed, "registered": self.registered, "existing": self.existing,
                "failed": self.failed, "skipped": self.skipped, "running": self.running,
                "last_uri": None if self.last is None else self.last.get("uri"),
                "last_error": self.last_error}

    def close(self, timeout_s: float = 60.0) -> None:
        """Wait up to ``timeout_s`` for the running registration, then end the actor."""
        self.poll(timeout_s)
        if self._pending is not None:
            log.warning("snapshot registration of checkpoint %s still running after %.0f s; "
                        "abandoned", self._pending[0], timeout_s)
            self._pending = None
        if self._actor is not None:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(self._actor, no_restart=True)
            self._actor = None


def schedule_for(settings: Settings, store_uri: str, **options: Any
                 ) -> RegistrationSchedule | None:
    """A :class:`RegistrationSchedule` for ``store_uri`` when ``stream.register_every_s`` > 0,
    else None (snapshots are then registered on demand only)."""
    if settings.stream.register_every_s <= 0:
        return None
    return RegistrationSchedule(settings, store_uri, **options)


def served_policy_spec(settings: Settings) -> dict[str, Any] | None:
    """The spec of the policy serving learns with, for the checkpoint's ``meta["policy"]``: of the
    ``[serve]`` policies given as specs, the one with the largest traffic share that is not a
    uniform control (ε-greedy with ε = 1). None when there is none (a model URI, say)."""
    serve = settings.serve
    if serve.policies:
        try:
            policies = json.loads(serve.policies)
        except json.JSONDecodeError:
            return None
    else:
        from recsys.serving.service import default_policies

        policies = default_policies(settings)
    if not isinstance(policies, Mapping):
        return None
    from recsys.config import parse_traffic

    try:
        traffic = parse_traffic(serve.traffic)
    except ValueError:
        traffic = {}
    learning = [(name, spec) for name, spec in policies.items()
                if isinstance(spec, Mapping) and not _uniform(spec)]
    if not learning:
        return None
    return dict(max(learning, key=lambda item: traffic.get(item[0], 0.0))[1])


def _uniform(spec: Mapping[str, Any]) -> bool:
    params = spec.get("params")
    return (spec.get("class") == "EpsilonGreedy" and isinstance(params, Mapping)
            and params.get("epsilon") == 1.0)
