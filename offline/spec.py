"""The training specification: the ``[train]`` table of a config file, validated.

One specification is one experiment cell: data source and split, propensity estimator, model,
objective, optimiser, seeds and scale-out. ``recsys train --config FILE`` reads it from FILE's
``[train]`` table; ``recsys reproduce`` builds grids of them from the shipped configs.

``TrainSpec.from_table`` checks everything that can be checked without the data: keys, ranges,
and the names of the data source, propensity estimator, model and objective and their
hyperparameters against the registries, so a typo is reported before Ray starts, with the closest
names. Messages follow ``recsys.validation`` (``train.objective.name: expected ..., got ...``).

```toml
[train]
name = "coat-mf-ips"          # mlflow run name and registered model name
seeds = [0, 1, 2, 3, 4]
num_workers = 1               # Ray Train workers
use_gpu = "auto"              # true, false or "auto" (a GPU when Ray sees one)
[train.data]
source = "coat"               # offline.sources.SOURCES ("table": any Parquet/CSV) or a
                              # recsys.datasets entry point name
[train.propensity]
estimator = "shipped"         # see offline.propensity.PROPENSITY_ESTIMATORS, or "none"
clip = 0.0
[train.model]
name = "mf"                   # see offline.models.MODELS; other keys are its hyperparameters
dim = 16
[train.objective]
name = "ips"                  # see offline.objectives.OBJECTIVES; other keys: hyperparameters
[train.optimizer]
lr = 0.01
epochs = 100
monitor = "valid_snips_mse"   # early stopping on this validation metric
[train.policy]                # the policy form registered next to the model (offline.policy_form)
exploration = "softmax"       # "greedy", "epsilon_greedy" or "softmax" (Plackett-Luce)
temperature = 1.0             # softmax over score / temperature
epsilon = 0.0                 # uniform slate with this probability
registered_model = "coat-mf-ips-policy"   # default: "<name>-policy"
```
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from recsys.validation import did_you_mean, message

UseGpu = bool | Literal["auto"]


class SpecError(ValueError):
    """A training specification that cannot be run; the message names the key and the fix."""


def _split(table: Mapping[str, Any], where: str, required: str) -> tuple[str, dict[str, Any]]:
    """``table``'s ``required`` name and the rest of its keys (the component's hyperparameters)."""
    if not isinstance(table, Mapping):
        raise SpecError(message(where, "a table", type(table).__name__))
    if required not in table:
        raise SpecError(message(f"{where}.{required}", "a name", "nothing",
                                f"[{where}] needs `{required}`"))
    params = {k: v for k, v in table.items() if k != required}
    return str(table[required]), params


def _check_keys(where: str, keys: Collection[str], known: Collection[str]) -> None:
    """Refuse keys that are not ``known``, naming the closest known ones."""
    unknown = sorted(set(keys) - set(known))
    if unknown:
        hints = filter(None, (did_you_mean(key, known) for key in unknown))
        raise SpecError(message(where, f"keys among {', '.join(sorted(known)) or 'none'}",
                                f"unknown keys {unknown}", "; ".join(hints) or None))


def _init_parameters(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` takes by name."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name for name, parameter in inspect.signature(cls).parameters.items()
            if parameter.kind in kinds}


def _check_name(where: str, name: str, known: Collection[str], what: str) -> None:
    if name not in known:
        raise SpecError(message(where, f"{what} ({', '.join(known)})", repr(name),
                                did_you_mean(name, known)))


@dataclass(frozen=True)
class Component:
    """A named component (data source, estimator, model, objective) with its parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    """AdamW and the epoch loop with early stopping."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int | str = 256
    """Rows per step; ``"full"`` (or 0): every train row in one step, whatever the data set's
    size (with several workers, each takes an equal share of it)."""
    epochs: int = 50
    patience: int = 10
    """Stop after this many evaluations (not epochs) in a row without improvement of
    ``monitor`` (0: never stop); see ``eval_schedule`` for when evaluations happen."""
    monitor: str = "valid_loss"
    """A validation metric (``valid_...``); ``mse``/``mae``/``loss`` are minimised, others
    maximised."""
    eval_every: int = 1
    eval_schedule: str = "geometric"
    """When the validation metric is computed: ``"every"``: after every ``eval_every``-th epoch;
    ``"geometric"``: also after epochs 1, 2, 4, 8, … below ``eval_every`` (so a model that is
    best in its first epochs is seen), then every ``eval_every``-th. The last epoch is always
    evaluated."""
    l2: float = 0.0
    """Explicit L2 penalty l2·Σ‖θ‖² / n_train added to the loss (Schnabel et al.'s MF
    regulariser; AdamW's decoupled ``weight_decay`` is a different thing)."""
    l2_bias_scale: float = 1.0
    """The L2 penalty's factor on bias terms relative to the factor tables."""
    refit: bool = False
    """After early stopping, retrain on train ∪ valid for the best epoch count (the validation
    rows are training data too; only the epoch count comes from them)."""

    def __post_init__(self) -> None:
        if not (self.batch_size == "full" or (isinstance(self.batch_size, int)
                                               and not isinstance(self.batch_size, bool)
                                               and self.batch_size >= 0)):
            raise SpecError(message("train.optimizer.batch_size",
                                    'an integer >= 1, or "full" (or 0) for all train rows',
                                    repr(self.batch_size)))
        if self.eval_schedule not in ("every", "geometric"):
            raise SpecError(message("train.optimizer.eval_schedule", '"every" or "geometric"',
                                    repr(self.eval_schedule)))
        for name in ("epochs", "eval_every"):
            if getattr(self, name) < 1:
                raise SpecError(message(f"train.optimizer.{name}", "an integer >= 1",
                                        getattr(self, name)))
        if not self.lr > 0:
            raise SpecError(message("train.optimizer.lr", "a number > 0", self.lr))
        for name in ("weight_decay", "patience", "l2", "l2_bias_scale"):
            if not getattr(self, name) >= 0:
                raise SpecError(message(f"train.optimizer.{name}", "a number >= 0",
                                        getattr(self, name)))
        if not self.monitor.startswith("valid_"):
            raise SpecError(message("train.optimizer.monitor",
                                    "a validation metric (valid_...)", repr(self.monitor)))

    @property
    def maximise(self) -> bool:
        return not any(part in self.monitor for part in ("mse", "mae", "loss"))


@dataclass(frozen=True)
class PolicySpec:
    """The policy form of the trained model: its scores with an exploration rule (the
    hyperparameters of ``recsys.policies.LinearScorePolicy``), registered as its own model."""

    exploration: str = "softmax"
    epsilon: float = 0.0
    temperature: float = 1.0
    n_mc_draws: int = 1000
    """Plackett-Luce draws for Monte Carlo propensities (softmax slates beyond exact forms)."""
    registered_model: str | None = None
    """The registered model name (None: ``<train.name>-policy``)."""
    register: bool = True
    """Register the policy form at all."""

    def policy_params(self) -> dict[str, Any]:
        """The ``LinearScorePolicy`` hyperparameters."""
        return {"exploration": self.exploration, "epsilon": self.epsilon,
                "temperature": self.temperature, "n_mc_draws": self.n_mc_draws}

    def check(self) -> None:
        """Raise ``SpecError`` for hyperparameters the policy would refuse."""
        from recsys.policies.linear import LinearScorePolicy

        if self.registered_model is not None and (
                not isinstance(self.registered_model, str) or not self.registered_model):
            raise SpecError(message("train.policy.registered_model", "a non-empty name",
                                    repr(self.registered_model)))
        try:
            LinearScorePolicy(**self.policy_params()).check_params()
        except (TypeError, ValueError) as exc:
            raise SpecError(f"train.policy.{exc}") from None


@dataclass(frozen=True)
class TrainSpec:
    """A whole training specification (see the module docstring for the TOML form)."""

    name: str
    data: Component
    model: Component
    objective: Component
    propensity: Component = field(default_factory=lambda: Component("none"))
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    seeds: tuple[int, ...] = (0,)
    num_workers: int = 1
    use_gpu: UseGpu = "auto"
    register: bool = True
    export_user_features: str | None = None
    """Write the model's user embeddings here as the serving app's user-feature table."""
    export_online: str | None = None
    """Write the bandits' hand-off (clusters, graph with warm-start prior, user table) to this
    directory (``offline.export_online``)."""
    clip: float = 0.0
    """Propensities below this are clipped to it (0: no clipping)."""
    policy: PolicySpec = field(default_factory=PolicySpec)
    """The policy form registered next to the model."""

    @property
    def policy_model_name(self) -> str:
        """The registered model name of the policy form."""
        return self.policy.registered_model or f"{self.name}-policy"

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SpecError(message("train.name", "a non-empty string", repr(self.name)))
        if self.num_workers < 1:
            raise SpecError(message("train.num_workers", "an integer >= 1", self.num_workers))
        if not self.seeds:
            raise SpecError(message("train.seeds", "at least one seed", "[]"))
        if self.use_gpu not in (True, False, "auto"):
            raise SpecError(message("train.use_gpu", 'true, false or "auto"', repr(self.use_gpu)))
        if not 0.0 <= self.clip < 1.0:
            raise SpecError(message("train.propensity.clip", "a number in [0, 1)", self.clip))

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> TrainSpec:
        """Validate a ``[train]`` table (as parsed from TOML)."""
        table = copy.deepcopy(dict(table))
        known = {"name", "seeds", "num_workers", "use_gpu", "register", "export_user_features",
                 "export_online", "data", "propensity", "model", "objective", "optimizer", "policy"}
        _check_keys("train", table, known)
        for section in ("data", "model", "objective"):
            if section not in table:
                raise SpecError(message(f"train.{section}", "a table", "none",
                                        f"add a [train.{section}] table"))
        data = Component(*_split(table["data"], "train.data", "source"))
        model = Component(*_split(table["model"], "train.model", "name"))
        objective = Component(*_split(table["objective"], "train.objective", "name"))
        propensity_table = dict(table.get("propensity", {"estimator": "none"}))
        clip = float(propensity_table.pop("clip", 0.0))
        propensity = Component(*_split(propensity_table, "train.propensity", "estimator"))
        optimizer_table = table.get("optimizer", {})
        _check_keys("train.optimizer", optimizer_table, {f.name for f in fields(OptimizerSpec)})
        policy_table = table.get("policy", {})
        if not isinstance(policy_table, Mapping):
            raise SpecError(message("train.policy", "a table", type(policy_table).__name__))
        _check_keys("train.policy", policy_table, {f.name for f in fields(PolicySpec)})
        seeds = table.get("seeds", [0])
        if isinstance(seeds, int):
            seeds = [seeds]
        try:
            spec = cls(
                name=str(table.get("name", f"{data.name}-{model.name}-{objective.name}")),
                data=data,
                model=model,
                objective=objective,
                propensity=propensity,
                optimizer=OptimizerSpec(**optimizer_table),
                seeds=tuple(int(s) for s in seeds),
                num_workers=int(table.get("num_workers", 1)),
                use_gpu=table.get("use_gpu", "auto"),
                register=bool(table.get("register", True)),
                export_user_features=table.get("export_user_features"),
                export_online=table.get("export_online"),
                clip=clip,
                policy=PolicySpec(**policy_table),
            )
        except TypeError as exc:
            raise SpecError(f"train: {exc}") from exc
        spec.check_components()
        spec.policy.check()
        return spec

    def check_components(self) -> None:
        """The named components exist and take the given hyperparameters (the registries are
        imported here, as ``offline.sources`` imports this module)."""
        from offline.models import MODELS
        from offline.objectives import OBJECTIVES, make_objective
        from offline.propensity import PROPENSITY_ESTIMATORS, make_propensity
        from offline.sources import source_names

        _check_name("train.data.source", self.data.name, source_names(), "a data source")
        _check_name("train.propensity.estimator", self.propensity.name,
                    ["none", *PROPENSITY_ESTIMATORS], "a propensity estimator or none")
        if self.propensity.name != "none":
            _check_keys("train.propensity", self.propensity.params,
                        _init_parameters(PROPENSITY_ESTIMATORS[self.propensity.name]))
            try:
                make_propensity(self.propensity.name, **self.propensity.params)
            except (TypeError, ValueError) as exc:
                raise SpecError(f"train.propensity: {exc}") from None
        else:
            _check_keys("train.propensity", self.propensity.params, ("clip",))
        _check_name("train.model.name", self.model.name, MODELS, "a model")
        model = MODELS[self.model.name]
        data_derived = {"n_users", "n_items", *getattr(model, "array_names", ())}
        _check_keys("train.model", self.model.params, _init_parameters(model) - data_derived)
        _check_name("train.objective.name", self.objective.name, OBJECTIVES, "an objective")
        _check_keys("train.objective", self.objective.params,
                    OBJECTIVES[self.objective.name]().get_params())
        try:
            make_objective(self.objective.name, **self.objective.params)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"train.objective: {exc}") from None

    def to_table(self) -> dict[str, Any]:
        """The TOML-shaped table back (``from_table(to_table())`` is this spec)."""
        propensity = {"estimator": self.propensity.name, **self.propensity.params}
        if self.clip:
            propensity["clip"] = self.clip
        table: dict[str, Any] = {
            "name": self.name,
            "seeds": list(self.seeds),
            "num_workers": self.num_workers,
            "use_gpu": self.use_gpu,
            "register": self.register,
            "data": {"source": self.data.name, **self.data.params},
            "propensity": propensity,
            "model": {"name": self.model.name, **self.model.params},
            "objective": {"name": self.objective.name, **self.objective.params},
            "optimizer": asdict(self.optimizer),
            "policy": {k: v for k, v in asdict(self.policy).items() if v is not None},
        }
        if self.export_user_features:
            table["export_user_features"] = self.export_user_features
        if self.export_online:
            table["export_online"] = self.export_online
        return table

    def flat_params(self) -> dict[str, Any]:
        """Every hyperparameter as ``section.key`` (what mlflow logs as params)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), inner)
            else:
                out[prefix] = value

        walk("", self.to_table())
        return out

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrainSpec:
        """A copy with dotted keys replaced, e.g. ``{"data.noise_ratio": 0.3}``."""
        table = self.to_table()
        for key, value in overrides.items():
            node = table
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return TrainSpec.from_table(table)
