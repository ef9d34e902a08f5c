"""What every registered policy loads back as, and its on-disk form (JSON + npz, never pickle).

Three kinds share one form:

* ``"bandit"``: a ``recsys.bandits`` policy: its spec (``policy_spec``: class + hyperparameters)
  and its statistics snapshot (``Statistics.to_arrays``), any layout (dense, graph, full).
* ``"scores"``: an offline model turned into a policy (:class:`LinearScorePolicy`: vectors,
  biases, user table, exploration rule).
* ``"baseline"``: a built-in :class:`LinearScorePolicy` (uniform, popularity), named in
  ``meta["baseline"]``.

A :class:`RegisteredPolicy` reads its contexts from a :class:`~recsys.policies.RequestBatch`:
a bandit takes the dense contexts (layouts ``dense``/``full``) or the soft cluster memberships
(``graph``); a scored policy takes the user ids (mode ``user``), the dense contexts (``dense``)
or only the batch size (``none``).

On disk (:meth:`RegisteredPolicy.save`): ``policy.json`` (format version, kind, spec, meta, the
array names and the statistics' own metadata) and ``arrays.npz`` (plain numeric and fixed-width
string arrays, read with ``allow_pickle=False``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.base import BasePolicy
from recsys.bandits.protocol import stats_from_arrays
from recsys.bandits.slates import Slate
from recsys.bandits.spec import policy_from_spec, policy_spec
from recsys.policies.batch import RequestBatch
from recsys.policies.linear import LinearScorePolicy
from recsys.validation import message

FORMAT = "recsys.registry.policy"
FORMAT_VERSION = 1
"""Bumped when the on-disk layout changes; :meth:`RegisteredPolicy.load` refuses others."""
KINDS = ("bandit", "scores", "baseline")
POLICY_FILE = "policy.json"
ARRAYS_FILE = "arrays.npz"
SPEC_VERSION = 1


def _json_safe(value: Any, name: str) -> Any:
    """``value`` as plain JSON (numpy scalars and tuples converted), or a clear ValueError."""
    try:
        return json.loads(json.dumps(value, default=_plain, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(message(name, "JSON-safe values (str, finite numbers, bool, None, lists "
                                 "and dicts of them)", f"{err}")) from None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{value!r} of type {type(value).__name__} is not JSON-safe")


def scores_spec(policy: LinearScorePolicy) -> dict[str, Any]:
    """The JSON spec of a :class:`LinearScorePolicy`: class, hyperparameters, context mode."""
    _, meta = policy.to_arrays()
    return {"class": meta["class"], "params": meta["params"], "spec_version": SPEC_VERSION,
            "context_mode": meta["context_mode"]}


@dataclass(eq=False)
class RegisteredPolicy:
    """A policy as the registry stores it: kind, policy, JSON spec and lineage ``meta``.

    ``name``/``version`` are set when it was loaded from the registry (``models:/NAME/VERSION``).
    It satisfies the comparison's candidate interface: ``item_ids_`` and
    ``action_dist(batch, k)`` on a :class:`RequestBatch`.
    """

    kind: str
    policy: Any
    spec: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(message("kind", f"one of {list(KINDS)}", repr(self.kind)))
        expected = BasePolicy if self.kind == "bandit" else LinearScorePolicy
        if not isinstance(self.policy, expected):
            raise TypeError(message("policy", f"a {expected.__name__} for kind {self.kind!r}",
                                    type(self.policy).__name__))
        self.spec = _json_safe(self.spec, "spec")
        self.meta = _json_safe(dict(self.meta), "meta")

    @property
    def item_ids_(self) -> NDArray[np.int64]:
        """The policy's items, in ``action_dist`` column order."""
        return self.policy.item_ids_

    @property
    def layout(self) -> str:
        """What the policy scores from: a statistics layout (bandit) or a context mode."""
        if self.kind == "bandit":
            return str(self.policy.stats_.layout)
        return str(self.policy.context_mode_)

    def contexts(self, batch: RequestBatch) -> Any:
        """The part of ``batch`` the policy scores (see the module doc)."""
        if not isinstance(batch, RequestBatch):
            raise TypeError(message("batch", "a recsys.policies.RequestBatch",
                                    type(batch).__name__,
                                    "build one with RequestBatch.of(...) or .from_frame(...)"))
        layout = self.layout
        if layout == "graph":
            if batch.clusters is None:
                raise ValueError(message("batch.clusters", "soft cluster memberships for a "
                                         "graph-layout bandit", "none",
                                         "these logs/requests carry no cluster context"))
            return batch.clusters
        if layout in ("dense", "full"):
            if batch.dense is None:
                raise ValueError(message("batch.dense", f"[n, d] dense contexts for {self.kind} "
                                         f"layout {layout!r}", "none",
                                         "these logs/requests carry no dense context"))
            return batch.dense
        if layout == "user":
            return batch.user_ids
        return batch

    def recommend(self, batch: RequestBatch, k: int = 1) -> Slate:
        """Slates with propensities for the requests of ``batch``."""
        return self.policy.recommend(self.contexts(batch), k)

    def action_dist(self, batch: RequestBatch, k: int = 1) -> NDArray[np.float64]:
        """OBP's ``[n, n_items, k]`` distribution for the requests of ``batch``."""
        return self.policy.action_dist(self.contexts(batch), k)

    def reseed(self, seed: int) -> None:
        """Restart the policy's random stream from ``seed`` (reproducible slates)."""
        self.policy.set_params(random_state=int(seed))

    # ------------------------------------------------------------------ on disk
    def _arrays(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        if self.kind == "bandit":
            arrays, stats_meta = self.policy.stats_.to_arrays()
            return arrays, _json_safe(stats_meta, "stats meta")
        arrays, _ = self.policy.to_arrays()
        return arrays, {}

    def save(self, directory: str | Path) -> Path:
        """Write ``policy.json`` and ``arrays.npz`` into ``directory`` (created); returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays, stats_meta = self._arrays()
        bad = [n for n, a in arrays.items() if np.asarray(a).dtype.kind not in "biufU"]
        if bad:
            raise ValueError(message("arrays", "numeric or fixed-width string arrays",
                                     f"other dtypes for {bad}"))
        with open(directory / ARRAYS_FILE, "wb") as handle:
            np.savez(handle, **arrays)
        document = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                    "spec": self.spec, "meta": self.meta, "arrays": sorted(arrays),
                    "stats_meta": stats_meta}
        (directory / POLICY_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RegisteredPolicy:
        """Read what :meth:`save` wrote; refuses other formats, versions, kinds and pickles."""
        directory = Path(directory)
        where = directory / POLICY_FILE
        try:
            document = json.loads(where.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(message(str(where), "a registered policy's policy.json",
                                            "no such file")) from None
        except json.JSONDecodeError as err:
            raise ValueError(message(str(where), "JSON", f"text that does not parse ({err})")
                             ) from None
        if not isinstance(document, Mapping) or document.get("format") != FORMAT:
            raise ValueError(message(str(where), f"format {FORMAT!r}",
                                     repr(document.get("format") if isinstance(document, Mapping)
                                          else type(document).__name__)))
        if document.get("format_version") != FORMAT_VERSION:
            raise ValueError(message(f"{where}: format_version", FORMAT_VERSION,
                                     repr(document.get("format_version")),
                                     "it was written by another version of recsys"))
        kind = document.get("kind")
        if kind not in KINDS:
            raise ValueError(message(f"{where}: kind", f"one of {list(KINDS)}", repr(kind)))
        arrays = _read_arrays(directory / ARRAYS_FILE, document.get("arrays", []))
        spec = document.get("spec")
        if not isinstance(spec, Mapping):
            raise ValueError(message(f"{where}: spec", "a mapping", type(spec).__name__))
        if kind == "bandit":
            stats = stats_from_arrays(arrays, dict(document.get("stats_meta") or {}))
            policy: Any = policy_from_spec(dict(spec)).use(stats)
        else:
            if spec.get("class") != LinearScorePolicy.__name__:
                raise ValueError(message(f"{where}: spec.class", repr(LinearScorePolicy.__name__),
                                         repr(spec.get("class"))))
            from recsys.policies.linear import FORMAT as SCORES_FORMAT

            policy = LinearScorePolicy.from_arrays(arrays, {
                "format": SCORES_FORMAT, "params": spec.get("params", {}),
                "context_mode": spec.get("context_mode")})
        return cls(kind=kind, policy=policy, spec=dict(spec), meta=dict(document.get("meta", {})))


def _read_arrays(path: Path, names: list[str]) -> dict[str, NDArray[Any]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted(set(names) - set(npz.files))
            if missing:
                raise ValueError(message(str(path), f"the arrays {sorted(names)}",
                                         f"{sorted(npz.files)} (missing {missing})"))
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise FileNotFoundError(message(str(path), "the policy's arrays", "no such file")
                                ) from None
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(message(str(path), "a readable .npz file", str(err))) from None
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(message(str(path), "plain arrays", "pickled objects",
                                     "they are never loaded")) from None
        raise


def bandit_model(policy: BasePolicy, meta: Mapping[str, Any] | None = None) -> RegisteredPolicy:
    """A bandit policy with statistics (``init``/``use`` done) as a registered policy."""
    if not isinstance(policy, BasePolicy):
        raise TypeError(message("policy", "a recsys.bandits policy", type(policy).__name__))
    policy._stats()  # NotFittedError for a policy without statistics
    return RegisteredPolicy("bandit", policy, policy_spec(policy), dict(meta or {}))


def scored_model(policy: LinearScorePolicy, meta: Mapping[str, Any] | None = None
                 ) -> RegisteredPolicy:
    """An offline model turned into a policy (a fitted :class:`LinearScorePolicy`)."""
    if not isinstance(policy, LinearScorePolicy):
        raise TypeError(message("policy", "a LinearScorePolicy", type(policy).__name__))
    return RegisteredPolicy("scores", policy, scores_spec(policy), dict(meta or {}))


def baseline_model(name: str, policy: LinearScorePolicy,
                   meta: Mapping[str, Any] | None = None) -> RegisteredPolicy:
    """A built-in baseline (``uniform``, ``popularity``, ...) named ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(message("name", "a non-empty baseline name", repr(name)))
    if not isinstance(policy, LinearScorePolicy):
        raise TypeError(message("policy", "a LinearScorePolicy", type(policy).__name__))
    return RegisteredPolicy("baseline", policy, scores_spec(policy),
                            {**dict(meta or {}), "baseline": name})
