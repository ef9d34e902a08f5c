"""The training specification: the ``[train]`` table of a config file, validated.

One specification is one experiment cell: data source and split, propensity estimator, model,
objective, optimiser, seeds and scale-out. ``recsys train --config FILE`` reads it from FILE's
``[train]`` table; ``recsys reproduce`` builds grids of them from the shipped configs.

```toml
[train]
name = "coat-mf-ips"          # mlflow run name and registered model name
seeds = [0, 1, 2, 3, 4]
num_workers = 1               # Ray Train workers
use_gpu = "auto"              # true, false or "auto" (a GPU when Ray sees one)
[train.data]
source = "coat"               # see offline.sources.SOURCES
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
```
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

UseGpu = bool | Literal["auto"]


class SpecError(ValueError):
    """A training specification that cannot be run; the message names the key and the fix."""


def _split(table: Mapping[str, Any], where: str, required: str) -> tuple[str, dict[str, Any]]:
    """``table``'s ``required`` name and the rest of its keys (the component's hyperparameters)."""
    if not isinstance(table, Mapping):
        raise SpecError(f"[{where}] must be a table, got {type(table).__name__}")
    if required not in table:
        raise SpecError(f"[{where}] needs `{required}`")
    params = {k: v for k, v in table.items() if k != required}
    return str(table[required]), params


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
    batch_size: int = 256
    epochs: int = 50
    patience: int = 10
    """Stop after this many evaluations without improvement of ``monitor`` (0: never stop)."""
    monitor: str = "valid_loss"
    """A validation metric (``valid_...``); ``mse``/``mae``/``loss`` are minimised, others
    maximised."""
    eval_every: int = 1
    l2: float = 0.0
    """Explicit L2 penalty l2·Σ‖θ‖² / n_train added to the loss (Schnabel et al.'s MF
    regulariser; AdamW's decoupled ``weight_decay`` is a different thing)."""
    l2_bias_scale: float = 1.0
    """The L2 penalty's factor on bias terms relative to the factor tables."""
    refit: bool = False
    """After early stopping, retrain on train ∪ valid for the best epoch count (the validation
    rows are training data too; only the epoch count comes from them)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "eval_every"):
            if getattr(self, name) < 1:
                raise SpecError(f"[train.optimizer] `{name}` must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.patience < 0 or self.l2 < 0 or (
            self.l2_bias_scale < 0
        ):
            raise SpecError("[train.optimizer] needs lr > 0 and weight_decay, patience, l2, "
                            "l2_bias_scale >= 0")
        if not self.monitor.startswith("valid_"):
            raise SpecError(
                f"[train.optimizer] monitor must be a validation metric (valid_...), "
                f"got {self.monitor!r}"
            )

    @property
    def maximise(self) -> bool:
        return not any(part in self.monitor for part in ("mse", "mae", "loss"))


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
    clip: float = 0.0
    """Propensities below this are clipped to it (0: no clipping)."""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SpecError("[train] needs a non-empty `name`")
        if self.num_workers < 1:
            raise SpecError("[train] num_workers must be >= 1")
        if not self.seeds:
            raise SpecError("[train] seeds must list at least one seed")
        if self.use_gpu not in (True, False, "auto"):
            raise SpecError('[train] use_gpu must be true, false or "auto"')
        if not 0.0 <= self.clip < 1.0:
            raise SpecError("[train.propensity] clip must be in [0, 1)")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> TrainSpec:
        """Validate a ``[train]`` table (as parsed from TOML)."""
        table = copy.deepcopy(dict(table))
        known = {"name", "seeds", "num_workers", "use_gpu", "register", "export_user_features",
                 "data", "propensity", "model", "objective", "optimizer"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise SpecError(f"[train] unknown keys {unknown}; known: {sorted(known)}")
        for section in ("data", "model", "objective"):
            if section not in table:
                raise SpecError(f"[train] needs a [train.{section}] table")
        data = Component(*_split(table["data"], "train.data", "source"))
        model = Component(*_split(table["model"], "train.model", "name"))
        objective = Component(*_split(table["objective"], "train.objective", "name"))
        propensity_table = dict(table.get("propensity", {"estimator": "none"}))
        clip = float(propensity_table.pop("clip", 0.0))
        propensity = Component(*_split(propensity_table, "train.propensity", "estimator"))
        optimizer_table = table.get("optimizer", {})
        names = {f.name for f in fields(OptimizerSpec)}
        bad = sorted(set(optimizer_table) - names)
        if bad:
            raise SpecError(f"[train.optimizer] unknown keys {bad}; known: {sorted(names)}")
        seeds = table.get("seeds", [0])
        if isinstance(seeds, int):
            seeds = [seeds]
        try:
            return cls(
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
                clip=clip,
            )
        except TypeError as exc:
            raise SpecError(f"[train] {exc}") from exc

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
        }
        if self.export_user_features:
            table["export_user_features"] = self.export_user_features
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
