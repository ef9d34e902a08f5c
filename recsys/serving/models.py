"""Serving arms that follow a registered model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``).

A ``serve.policies`` value may be a model URI instead of a policy spec. The replica resolves it
to one version (an alias through ``MlflowClient.get_model_version_by_alias``), loads that version
with ``recsys.registry.load_policy_model`` and serves it:

* a ``"bandit"`` model serves its **spec** (``model.spec``: the scoring rule and its
  hyperparameters) on the replica's **live** shard statistics, like a spec arm: the registered
  snapshot's statistics only record what the bandit knew when it was registered, the stream
  keeps learning, and serving older statistics would throw that learning away;
* a ``"scores"`` or ``"baseline"`` model serves its own fixed policy, scoring the request's user
  id (user mode) or dense context (the request's, else the user-feature table's row).

Decisions:

* **Off the request path.** :class:`ModelWatcher` re-resolves every arm every
  ``serve.model_refresh_s`` in a background thread; a new version is loaded and made ready there
  and then swapped in as one reference, so a request sees the old model or the new one, never a
  half-loaded one, and never waits for a load.
* **A failure keeps what serves.** A resolve or load failure keeps the old model, is counted on
  ``/metrics`` (``recsys_serve_model_checks_total{result="error"}``) and shown in ``/health``.
* **An arm that never loaded does not stop the replica.** The replica starts and serves its
  other arms; ``/health`` lists the arm as not ready with the reason and its requests get a 503
  with the same reason, until the URI resolves (so an alias created after deployment, by a first
  promotion, is picked up without a restart).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from recsys.bandits import BasePolicy, DiagLinTS, policy_from_spec
from recsys.registry.uris import MODEL_URI_PREFIX, parse_model_uri
from recsys.validation import message

_log = logging.getLogger(__name__)

def check_serving_policy(name: str, policy: BasePolicy) -> None:
    """Refuse a policy that cannot log a propensity > 0 for every shown item."""
    if isinstance(policy, DiagLinTS) and (policy.n_mc_draws == 0
                                          or policy.exploration_floor <= 0):
        raise ValueError(f"policies.{name}: a Thompson-sampling policy that serves must log "
                         f"propensities: set n_mc_draws > 0 and exploration_floor > 0 (got "
                         f"{policy.n_mc_draws} and {policy.exploration_floor})")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One registered version, loaded and ready to serve (swapped in as a whole).

    ``base`` is set for a bandit model: its spec's policy, unfitted, which the replica puts on
    every live snapshot; for other kinds ``model`` scores by itself.
    """

    name: str
    version: int
    kind: str
    model: Any
    base: BasePolicy | None
    loaded_at: float


def serving_form(arm: str, name: str, version: int, model: Any,
                 rng: np.random.Generator) -> LoadedModel:
    """What the replica serves of a loaded ``RegisteredPolicy``: a bandit's spec policy on the
    replica's generator, or the model itself (its policy drawing from the replica's generator)."""
    kind = str(getattr(model, "kind", ""))
    if kind == "bandit":
        base = policy_from_spec(model.spec)
        check_serving_policy(arm, base)
        base.set_params(random_state=rng)
        return LoadedModel(name, version, kind, model, base, time.time())
    if kind not in ("scores", "baseline"):
        raise ValueError(message("kind", "'bandit', 'scores' or 'baseline'", repr(kind),
                                 f"{name}/{version} is not a policy model of recsys.registry"))
    policy = getattr(model, "policy", None)
    if policy is not None and hasattr(policy, "set_params"):
        policy.set_params(random_state=rng)  # one stream per replica, as the spec arms share
    return LoadedModel(name, version, kind, model, None, time.time())


class ModelMetrics:
    """``recsys_serve_model_version{policy}`` (the version served, 0 before the first),
    ``recsys_serve_model_switches_total{policy}`` and ``recsys_serve_model_checks_total{policy,
    result}`` (``unchanged``, ``new``, ``error``: a failed resolve or load)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.version = Gauge("recsys_serve_model_version", "Registered model version served "
                             "per policy (0: none yet)", ["policy"], registry=registry)
        self.switches = Counter("recsys_serve_model_switches", "Model versions swapped in per "
                                "policy (the first load included)", ["policy"], registry=registry)
        self.checks = Counter("recsys_serve_model_checks", "Registry look-ups per policy by "
                              "result (unchanged, new, error)", ["policy", "result"],
                              registry=registry)


def _default_loader(uri: str) -> Any:
    from recsys.registry import load_policy_model

    return load_policy_model(uri)


class ModelArm:
    """The registry side of one arm: which version its URI names now, and loading it.

    :meth:`poll` resolves the URI and, when the version differs from the one served, loads the
    new one; the caller installs it (:meth:`accept`) or reports why it cannot (:meth:`fail`).
    """

    def __init__(self, arm: str, uri: str, *, tracking_uri: str | None,
                 rng: np.random.Generator, metrics: ModelMetrics | None = None,
                 loader: Callable[[str], Any] | None = None) -> None:
        self.arm = arm
        self.ref = parse_model_uri(uri, f"policies.{arm}")
        self.tracking_uri = tracking_uri
        self.rng = rng
        self.metrics = metrics
        self.loader = loader or _default_loader
        self.current: LoadedModel | None = None
        self.error = ""
        self.checked = False
        self.switches = 0
        self._client: Any = None

    def _registry(self) -> Any:
        if self._client is None:
            import mlflow
            from mlflow import MlflowClient

            if self.tracking_uri and mlflow.get_tracking_uri() != self.tracking_uri:
                mlflow.set_tracking_uri(self.tracking_uri)  # the loader reads mlflow's own
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def resolve(self) -> int:
        """The version the URI names now (``MlflowException`` when it names none)."""
        client = self._registry()
        if self.ref.alias is not None:
            return int(client.get_model_version_by_alias(self.ref.name, self.ref.alias).version)
        return int(client.get_model_version(self.ref.name, str(self.ref.version)).version)

    def poll(self) -> LoadedModel | None:
        """A newly loaded model when the URI now names another version (None: unchanged, or a
        failure, kept in :attr:`error` and counted)."""
        try:
            version = self.resolve()
            if self.current is not None and self.current.version == version:
                self._count("unchanged")
                self.error = ""
                return None
            model = self.loader(f"{MODEL_URI_PREFIX}{self.ref.name}/{version}")
            loaded = serving_form(self.arm, self.ref.name, version, model, self.rng)
        except Exception as exc:  # any failure keeps the model that serves
            self.fail(f"{self.ref.uri}: {_reason(exc)}")
            return None
        finally:
            self.checked = True
        self._count("new")
        return loaded

    def accept(self, loaded: LoadedModel) -> None:
        """Record that ``loaded`` now serves."""
        self.current = loaded
        self.error = ""
        self.switches += 1
        if self.metrics is not None:
            self.metrics.version.labels(self.arm).set(loaded.version)
            self.metrics.switches.labels(self.arm).inc()

    def drop(self, reason: str) -> None:
        """Stop serving the current model (it no longer fits what the replica serves with)."""
        self.current = None
        if self.metrics is not None:
            self.metrics.version.labels(self.arm).set(0)
        self.fail(reason)

    def fail(self, reason: str) -> None:
        """Record a failed check (the current model, if any, keeps serving)."""
        self.error = reason
        self._count("error")

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.checks.labels(self.arm, result).inc()

    def state(self) -> dict[str, Any]:
        """The arm as ``/health`` shows it."""
        current = self.current
        return {"uri": self.ref.uri, "ready": current is not None,
                "model_name": self.ref.name,
                "model_version": None if current is None else current.version,
                "kind": None if current is None else current.kind,
                "switches": self.switches, "error": self.error or None}


def _reason(exc: BaseException) -> str:
    """A one-line reason: mlflow's message without its stack, or the exception's text."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:500]


class ModelWatcher:
    """Calls ``check()`` every ``interval_s`` in a daemon thread (the first call at once)."""

    def __init__(self, check: Callable[[], None], interval_s: float) -> None:
        self.check = check
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.check()
            except Exception:  # a bug, not a registry failure (arms record those): keep watching
                _log.exception("the model watcher's check failed")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
