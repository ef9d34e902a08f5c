"""Training objectives: how a batch is sampled, which loss the trainer backpropagates, and any
auxiliary model the objective updates itself.

Rating task (observed rows with labels; batches are shuffled observed rows):

- ``naive``, ``ips``, ``snips`` (Schnabel et al. 2016);
- ``dr_jl`` (Wang et al. 2019): loss (1/|D|) Σ_D [ê + o·(e − ê)/p] over the batch's observed rows
  plus ``ratio``·B unobserved pairs drawn uniformly (exactly, never an observed pair), each part
  weighted by the population it stands for (N observed rows, U·I − N unobserved pairs) when
  ``population_weights`` (default; a plain mean over the batch's pairs otherwise, which on Coat
  over-weights the observed rows about 11-fold and trained worse: MAE 1.13 vs 0.99); ê is the
  pointwise loss of the prediction against the imputation model's output (its imputed label,
  through σ for ``bce``); the imputation model, a re-initialised copy of the prediction model, is
  fitted in ``after_step`` with its own Adam on Σ_observed (ê − e)²/p, as in the common
  implementations;
- ``kbips`` / ``kbdr`` (Li et al., ICLR 2024, random-centre kernel balancing). Followed from the
  authors' released code (github.com/haoxuanli-pku/ICLR24-Kernel-Balancing, ``MF_KBIPS_Gau`` /
  ``MF_KBDR_Gau``): weights w = σ(weight model(u, i)) · 1/p with the weight model a model like the
  prediction model; per step ``ratio`` (G = 5) · B pairs drawn uniformly from all user-item pairs
  and J = 3 centres drawn among them; Gaussian kernels on fixed user⊕item embeddings; weight loss
  mean(w log w) + γ·hinge(|violation| − C) (C = 1e-5, γ = 1) with its own Adam; the prediction
  model trained with mean(w·loss) (KBIPS) or the DR form with w in place of 1/p, the imputation
  model fitted on Σ_observed (ê − e)²·w (KBDR; a plain mean over the batch's pairs, since the KB
  weights are normalised per observed row, mean ≈ 1, unlike 1/p). Choices where the code could not
  be followed or was judged a bug: the weight model is a re-initialised copy of the prediction
  model (the code uses a separate sigmoid MF); the kernel embeddings are a rank-``embedding_dim``
  truncated SVD of the train label matrix (the code loads pretrained MF embeddings from files),
  each pair's feature is the user's and the item's rows concatenated; the kernel bandwidth defaults
  to the median heuristic (the code's γ = 0.1 on min-max scaled features divided by their width
  makes every kernel ≈ 1); the hinge is applied per centre, Σ_j max(|v_j| − C, 0), as in the
  paper's constraint (the code hinges the sum over centres); the weight model is updated after the
  prediction step (``after_step``) instead of before it. Adaptive centres (AKB) are not done.

Implicit task (positives only; negatives drawn exactly uniformly among the user's non-positives):

- ``bce``, ``bpr``; ``tce`` (T-CE, Wang et al. WSDM 2021: drop the largest-loss share of each
  batch, growing linearly to ``max_drop_rate`` over ``num_gradual`` global steps); ``rce`` (R-CE:
  losses weighted by detached σ(s)^β, or (1 − σ(s))^β for negatives, or σ(s_pos − s_neg)^β on BPR);
- ``pld`` (Zhang et al. WWW 2025, as in the released code): ``warmup_epochs`` of plain BPR, then
  user-uniform batches with a pool of ``k`` of the user's train positives, one shared negative,
  personal losses without gradient, one candidate drawn with softmax(−ℓ/τ) and a BPR step on it;
  ``pld_bce`` scores candidates by −log σ(s) and takes a BCE step.

Every epoch has ⌈N / batch_size⌉ steps in total; rank r of W takes steps r, r + W, ...; all
randomness comes from the generator passed to ``setup`` (one seed, then one stream per epoch and
rank), so an epoch can be replayed and ranks agree on the shuffle.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from offline import losses as L

Batch = dict[str, torch.Tensor]


# -- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainTensors:
    """The training split as tensors, built once per run."""

    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    n_users: int
    n_items: int
    propensity: torch.Tensor | None = None
    propensity_matrix: torch.Tensor | None = None
    noise: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.users.shape[0]
        if self.users.ndim != 1 or self.items.shape != (n,) or self.labels.shape != (n,):
            raise ValueError("users, items and labels must be 1-d tensors of the same length")
        if n == 0:
            raise ValueError("the training split is empty")
        if self.users.dtype != torch.long or self.items.dtype != torch.long:
            raise ValueError("users and items must be long tensors")
        for name, ids, bound in (("users", self.users, self.n_users), ("items", self.items,
                                                                        self.n_items)):
            if int(ids.min()) < 0 or int(ids.max()) >= bound:
                raise ValueError(f"{name} must lie in [0, {bound})")
        if self.propensity is not None:
            if self.propensity.shape != (n,):
                raise ValueError(f"propensity must have shape ({n},)")
            if not bool(((self.propensity > 0) & (self.propensity <= 1)).all()):
                raise ValueError("propensity must lie in (0, 1]")
        if self.propensity_matrix is not None and self.propensity_matrix.shape != (
            self.n_users,
            self.n_items,
        ):
            raise ValueError(f"propensity_matrix must have shape ({self.n_users}, {self.n_items})")
        if self.noise is not None and (self.noise.shape != (n,) or self.noise.dtype != torch.bool):
            raise ValueError(f"noise must be a bool tensor of shape ({n},)")

    @property
    def n_rows(self) -> int:
        """Number of training rows."""
        return int(self.users.shape[0])

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        propensity: np.ndarray | None = None,
        propensity_matrix: np.ndarray | None = None,
        device: str | torch.device = "cpu",
    ) -> TrainTensors:
        """Tensors of ``dataset.train``; propensity from the argument, else the frame's column,
        else looked up in the (argument's or dataset's) propensity matrix."""
        train = dataset.train
        users = torch.tensor(train["user_id"].to_numpy(), dtype=torch.long)
        items = torch.tensor(train["item_id"].to_numpy(), dtype=torch.long)
        labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
        matrix = propensity_matrix if propensity_matrix is not None else dataset.propensity_matrix
        matrix_t = None if matrix is None else torch.as_tensor(np.asarray(matrix),
                                                               dtype=torch.float32)
        if propensity is not None:
            prop_t = torch.as_tensor(np.asarray(propensity), dtype=torch.float32)
        elif "propensity" in train.columns:
            prop_t = torch.tensor(train["propensity"].to_numpy(), dtype=torch.float32)
        elif matrix_t is not None:
            prop_t = matrix_t[users, items]
        else:
            prop_t = None
        noise = (
            torch.tensor(train["noise"].to_numpy(), dtype=torch.bool)
            if "noise" in train.columns
            else None
        )

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return cls(
            users=users.to(device),
            items=items.to(device),
            labels=labels.to(device),
            n_users=int(dataset.n_users),
            n_items=int(dataset.n_items),
            propensity=move(prop_t),
            propensity_matrix=move(matrix_t),
            noise=move(noise),
        )


# -- sampling helpers (CPU, vectorised) -----------------------------------------------------------


class _ComplementSampler:
    """Exactly uniform draws of keys outside a sorted key set (no rejection loop).

    With sorted unique keys k_0 < k_1 < ... (per segment), the r-th key not in the set is
    r + #{j : k_j − j ≤ r}; ``searchsorted`` on the non-decreasing k_j − j finds that count.
    """

    def __init__(self, keys: torch.Tensor, segment: int, n_owners: int) -> None:
        self.keys = torch.unique(keys)
        self.segment = segment
        owner = self.keys // segment
        self.count = torch.bincount(owner, minlength=n_owners)
        self.start = torch.cumsum(self.count, 0) - self.count
        local = torch.arange(self.keys.numel()) - self.start[owner]
        self.adjusted = owner * segment + (self.keys % segment - local)

    def contains(self, keys: torch.Tensor) -> torch.Tensor:
        """Whether each key is in the set."""
        pos = torch.searchsorted(self.keys, keys).clamp_max(max(self.keys.numel() - 1, 0))
        return self.keys[pos] == keys

    def free(self, owners: torch.Tensor) -> torch.Tensor:
        """How many keys of each owner's segment lie outside the set."""
        return self.segment - self.count[owners]

    def sample(self, owners: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One key per owner, uniform over the owner's segment minus the set (offset returned)."""
        free = self.free(owners)
        rank = (torch.rand(owners.shape, generator=generator, dtype=torch.float64) * free).long()
        rank = torch.minimum(rank, free - 1)
        pos = torch.searchsorted(self.adjusted, owners * self.segment + rank, right=True)
        return rank + pos - self.start[owners]


def _floyd_pools(
    degree: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """(B, k) offsets into each user's positives: k distinct ones (Floyd's algorithm, vectorised
    over users) when the user has >= k, else k drawn with replacement."""
    batch = degree.shape[0]
    offsets = torch.zeros(batch, k, dtype=torch.long)
    for step in range(k):
        top = (degree - k + step).clamp_min(0)
        draw = (torch.rand(batch, generator=generator, dtype=torch.float64) * (top + 1)).long()
        draw = torch.minimum(draw, top)
        taken = (offsets[:, :step] == draw.unsqueeze(1)).any(dim=1)
        offsets[:, step] = torch.where(taken, top, draw)
    short = degree < k
    if not bool(short.any()):
        return offsets
    with_replacement = (
        torch.rand(batch, k, generator=generator, dtype=torch.float64) * degree.unsqueeze(1)
    ).long()
    with_replacement = torch.minimum(with_replacement, (degree - 1).clamp_min(0).unsqueeze(1))
    return torch.where((degree >= k).unsqueeze(1), offsets, with_replacement)


def _score_pairs(model: nn.Module, *pairs: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    """Scores of several (users, items) groups in ONE forward call (data-parallel wrappers expect
    one forward per backward), each reshaped like its users."""
    users = torch.cat([u.reshape(-1) for u, _ in pairs])
    items = torch.cat([i.reshape(-1) for _, i in pairs])
    scores = model(users, items).split([u.numel() for u, _ in pairs])
    return [chunk.reshape(u.shape) for chunk, (u, _) in zip(scores, pairs, strict=True)]


def _score_pool(
    model: nn.Module, users: torch.Tensor, pool_items: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) scores of each user's candidate pool and (B,) of its shared negative in one
    forward call; one user lookup per user when the model has ``score_candidates``."""
    if hasattr(_unwrap(model), "score_candidates"):  # its forward takes [B, C] candidates
        scores = model(users, torch.cat([pool_items, negatives.unsqueeze(1)], 1))
        return scores[:, :-1], scores[:, -1]
    pool, negative = _score_pairs(
        model, (users.unsqueeze(1).expand_as(pool_items), pool_items), (users, negatives)
    )
    return pool, negative


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a data-parallel wrapper (DDP keeps it in ``.module``)."""
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def _fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with re-initialised parameters (seeded, global RNG untouched)."""
    clone = copy.deepcopy(_unwrap(model))
    devices = sorted({p.device.index or 0 for p in clone.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if hasattr(clone, "reset_parameters"):
            clone.reset_parameters()
        else:
            for module in clone.modules():
                if module is not clone and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    clone.train()
    return clone


def _device_of(model: nn.Module, data: TrainTensors) -> torch.device:
    """The device batches should live on: the data's."""
    return data.users.device


# -- base -----------------------------------------------------------------------------------------


class Objective(abc.ABC):
    """Sampling + loss + auxiliary updates of one training objective."""

    name: ClassVar[str]
    task: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **hyperparameters: Any) -> None:
        unknown = sorted(set(hyperparameters) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown hyperparameter(s) {unknown}; "
                f"known: {sorted(self.defaults) or 'none'}"
            )
        self.hyperparameters: dict[str, Any] = {**self.defaults, **hyperparameters}
        self._validate(self.hyperparameters)
        self.data_: TrainTensors | None = None
        self._reset_stats()

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters (JSON-able), for logging."""
        return dict(self.hyperparameters)

    def _validate(self, hp: dict[str, Any]) -> None:
        """Raise ``ValueError`` for a hyperparameter out of range."""
        return None

    @staticmethod
    def _require(condition: bool, message: str) -> None:
        if not condition:
            raise ValueError(message)

    # -- setup and batches ------------------------------------------------------------------------

    def setup(self, model: nn.Module, data: TrainTensors, generator: torch.Generator) -> None:
        """Bind the training data, draw the run's seed, build samplers and auxiliary models."""
        self.data_ = data
        self.seed_ = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.device_ = _device_of(model, data)
        self._users_cpu = data.users.cpu()
        self._items_cpu = data.items.cpu()
        self._reset_stats()
        self._setup(model, data)

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        """Objective-specific setup."""
        return None

    def _generator(self, epoch: int, rank: int, stream: int) -> torch.Generator:
        """An independent, replayable random stream for (epoch, rank, stream)."""
        entropy = [self.seed_, stream, epoch + 2, rank + 2]  # epoch, rank >= -1 (shared streams)
        state = np.random.SeedSequence(entropy).generate_state(2)
        seed = (int(state[0]) << 31 ^ int(state[1])) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def _n_rows(self) -> int:
        return self._check_setup().n_rows

    def _check_setup(self) -> TrainTensors:
        if self.data_ is None:
            raise RuntimeError(f"{self.name}: call setup(model, data, generator) first")
        return self.data_

    def n_steps(self, batch_size: int, rank: int = 0, world_size: int = 1) -> int:
        """Steps rank ``rank`` takes in one epoch (the total over ranks is ⌈N / batch_size⌉)."""
        total = math.ceil(self._n_rows() / batch_size)
        return len(range(rank, total, world_size))

    def batches(
        self, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """This rank's batches of one epoch, reproducible from the setup generator."""
        self._check_setup()
        self._require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        self._require(world_size >= 1 and 0 <= rank < world_size,
                      f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        n = self._n_rows()
        total = math.ceil(n / batch_size)
        order = torch.randperm(n, generator=self._generator(epoch, -1, 0))
        sampler = self._generator(epoch, rank, 1)
        for step in range(rank, total, world_size):
            rows = order[step * batch_size : (step + 1) * batch_size]
            batch = self._make_batch(rows, epoch, sampler, batch_size)
            batch["step"] = torch.tensor(epoch * total + step)
            yield {key: value.to(self.device_) for key, value in batch.items()}

    @abc.abstractmethod
    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        """The batch for these shuffled train rows (CPU tensors; ``batch_size`` is the nominal
        size, for objectives that draw their own examples)."""

    # -- training ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        """The loss the trainer backpropagates through the model."""

    def after_step(self, model: nn.Module, batch: Batch, epoch: int) -> None:
        """Auxiliary updates with the objective's own optimizer (default: none)."""
        return None

    def auxiliary_modules(self) -> dict[str, nn.Module]:
        """Modules the objective trains itself (e.g. the imputation model)."""
        return {}

    # -- statistics -------------------------------------------------------------------------------

    def _reset_stats(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._last: dict[str, float] = {}

    def _add(self, key: str, value: torch.Tensor | float) -> None:
        value = value.detach().double() if isinstance(value, torch.Tensor) else value
        self._sums[key] = self._sums.get(key, 0.0) + value

    def _record_trained(self, rows: torch.Tensor, key: str = "") -> None:
        """Count the train rows that received a gradient step (and how many are noise)."""
        self._add(f"n_trained{key}", float(rows.numel()))
        if self.data_ is not None and self.data_.noise is not None:
            self._add(f"n_noisy{key}", self.data_.noise[rows].sum())

    def _record_loss(self, loss: torch.Tensor) -> None:
        self._add("loss_sum", loss)
        self._add("n_steps", 1.0)

    def epoch_stats(self) -> dict[str, float]:
        """Statistics of the epoch just finished (then reset): mean loss, rows trained,
        ``noisy_share`` (share of trained positives that are truly noisy) when noise is known."""
        sums = {key: float(value) for key, value in self._sums.items()}
        stats: dict[str, float] = dict(self._last)
        if sums.get("n_steps"):
            stats["loss"] = sums["loss_sum"] / sums["n_steps"]
            stats["steps"] = sums["n_steps"]
        for key in ("", "_pool"):
            trained = sums.get(f"n_trained{key}", 0.0)
            if trained:
                stats[f"n_trained{key}"] = trained
                if f"n_noisy{key}" in sums:
                    stats[f"noisy_share{key}"] = sums[f"n_noisy{key}"] / trained
        for key, value in sums.items():
            if key.startswith("mean_"):
                stats[key[5:]] = value / max(sums.get("n_steps", 1.0), 1.0)
        self._reset_stats()
        return stats


# -- rating task ----------------------------------------------------------------------------------


class _RatingObjective(Objective):
    """Observed rows with labels, pointwise loss (``squared`` for ratings, ``bce`` for logits)."""

    task = "rating"
    needs_propensity: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {"pointwise_loss": "squared", "clip": None}

    def _validate(self, hp: dict[str, Any]) -> None:
        self._require(
            hp["pointwise_loss"] in L.POINTWISE_LOSSES,
            f"{self.name}: pointwise_loss must be one of {L.POINTWISE_LOSSES}, "
            f"got {hp['pointwise_loss']!r}",
        )
        clip = hp["clip"]
        self._require(clip is None or 0 < clip <= 1,
                      f"{self.name}: clip (the smallest propensity) must be in (0, 1] or None")
        if "imputation_lr" in hp:
            self._require(hp["imputation_lr"] > 0, f"{self.name}: imputation_lr must be > 0")

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        if self.hyperparameters["pointwise_loss"] == "bce":
            self._require(bool(((data.labels == 0) | (data.labels == 1)).all()),
                          f"{self.name}: pointwise_loss='bce' needs 0/1 labels")
        self.inverse_propensity_: torch.Tensor | None = None
        if data.propensity is not None:
            self.inverse_propensity_ = L.inverse_propensity(
                data.propensity, self.hyperparameters["clip"]
            ).cpu()
        elif self.needs_propensity:
            raise ValueError(
                f"{self.name} needs propensities: give TrainTensors a propensity (per row) or a "
                "propensity_matrix (fit one with offline.propensity, or use naive)"
            )
        self._labels_cpu = data.labels.cpu()

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        batch = {
            "rows": rows,
            "users": self._users_cpu[rows],
            "items": self._items_cpu[rows],
            "labels": self._labels_cpu[rows],
        }
        if self.inverse_propensity_ is not None:
            batch["inverse_propensity"] = self.inverse_propensity_[rows]
        return batch

    def _errors(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        prediction = model(batch["users"], batch["items"])
        return L.pointwise_loss(self.hyperparameters["pointwise_loss"], prediction,
                                batch["labels"])

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        value = self._loss(model, batch)
        self._record_trained(batch["rows"])
        self._record_loss(value)
        return value

    @abc.abstractmethod
    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...


class Naive(_RatingObjective):
    """Mean pointwise loss over observed rows (biased under MNAR observation)."""

    name = "naive"

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return L.naive_loss(self._errors(model, batch))


class IPS(_RatingObjective):
    """Σ loss/p over the batch / batch size (Schnabel et al. 2016)."""

    name = "ips"
    needs_propensity = True

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        errors = self._errors(model, batch)
        return (errors * batch["inverse_propensity"]).sum() / errors.numel()


class SNIPS(_RatingObjective):
    """Σ loss/p / Σ 1/p over the batch (self-normalised IPS)."""

    name = "snips"
    needs_propensity = True

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        errors = self._errors(model, batch)
        weights = batch["inverse_propensity"]
        return (errors * weights).sum() / weights.sum()


class _DoublyRobust(_RatingObjective):
    """Shared DR machinery: sampled pairs, an imputation model and its update."""

    needs_propensity = True

    def _imputed(self, prediction: torch.Tensor, imputation: torch.Tensor) -> torch.Tensor:
        """ê: the prediction's loss against the imputed label."""
        if self.hyperparameters["pointwise_loss"] == "bce":
            return L.bce_with_logits(prediction, torch.sigmoid(imputation))
        return L.squared_error(prediction, imputation)

    def _setup_imputation(self, model: nn.Module) -> None:
        hp = self.hyperparameters
        self.imputation_ = _fresh_copy(model, self.seed_ % (2**31) + 1)
        self.imputation_optimizer_ = torch.optim.Adam(
            self.imputation_.parameters(), lr=hp["imputation_lr"],
            weight_decay=hp["imputation_weight_decay"],
        )

    def _dr_loss(self, model: nn.Module, batch: Batch, weights: torch.Tensor) -> torch.Tensor:
        users, items = batch["users"], batch["items"]
        sampled = (batch["sampled_users"], batch["sampled_items"])
        prediction, sampled_prediction = _score_pairs(model, (users, items), sampled)
        errors = L.pointwise_loss(self.hyperparameters["pointwise_loss"], prediction,
                                  batch["labels"])
        with torch.no_grad():
            imputed_observed_label, imputed_sampled_label = _score_pairs(
                self.imputation_, (users, items), sampled
            )
        populations: tuple[float | None, float | None] = (None, None)
        if self.hyperparameters.get("population_weights", False):
            data = self._check_setup()
            populations = (data.n_rows, data.n_users * data.n_items - data.n_rows)
        return L.doubly_robust_loss(
            errors,
            self._imputed(prediction, imputed_observed_label),
            self._imputed(sampled_prediction, imputed_sampled_label),
            weights,
            *populations,
        )

    def _update_imputation(self, model: nn.Module, batch: Batch, weights: torch.Tensor) -> None:
        users, items = batch["users"], batch["items"]
        with torch.no_grad():
            prediction = model(users, items)
            errors = L.pointwise_loss(self.hyperparameters["pointwise_loss"], prediction,
                                      batch["labels"])
        imputed = self._imputed(prediction, self.imputation_(users, items))
        loss = ((imputed - errors) ** 2 * weights).sum()
        self.imputation_optimizer_.zero_grad()
        loss.backward()
        self.imputation_optimizer_.step()
        self._add("mean_imputation_loss", loss)

    def auxiliary_modules(self) -> dict[str, nn.Module]:
        return {"imputation": self.imputation_} if hasattr(self, "imputation_") else {}


class DRJL(_DoublyRobust):
    """Doubly robust joint learning (Wang et al. 2019) with uniformly sampled unobserved pairs."""

    name = "dr_jl"
    defaults: ClassVar[dict[str, Any]] = {
        **_RatingObjective.defaults,
        "ratio": 1.0,
        "population_weights": True,
        "imputation_lr": 0.01,
        "imputation_weight_decay": 0.0,
    }

    def _validate(self, hp: dict[str, Any]) -> None:
        super()._validate(hp)
        self._require(hp["ratio"] > 0, f"{self.name}: ratio (unobserved per observed) must be > 0")

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        super()._setup(model, data)
        n_pairs = data.n_users * data.n_items
        self._observed = _ComplementSampler(self._users_cpu * data.n_items + self._items_cpu,
                                            segment=n_pairs, n_owners=1)
        self._require(int(self._observed.free(torch.zeros(1, dtype=torch.long))) > 0,
                      f"{self.name}: every user-item pair is observed; nothing to impute")
        self._setup_imputation(model)

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        batch = super()._make_batch(rows, epoch, generator, batch_size)
        n_sampled = max(1, round(self.hyperparameters["ratio"] * rows.numel()))
        keys = self._observed.sample(torch.zeros(n_sampled, dtype=torch.long), generator)
        n_items = self._check_setup().n_items
        batch["sampled_users"], batch["sampled_items"] = keys // n_items, keys % n_items
        return batch

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self._dr_loss(model, batch, batch["inverse_propensity"])

    def after_step(self, model: nn.Module, batch: Batch, epoch: int) -> None:
        self._update_imputation(model, batch, batch["inverse_propensity"])


class _KernelBalancing(_DoublyRobust):
    """Random-centre kernel balancing weights (Li et al., ICLR 2024); see the module docstring."""

    defaults: ClassVar[dict[str, Any]] = {
        **_RatingObjective.defaults,
        "ratio": 5,
        "n_centres": 3,
        "tolerance": 1e-5,
        "balance_gamma": 1.0,
        "kernel_gamma": None,
        "embedding_dim": 4,
        "weight_lr": 0.01,
        "weight_weight_decay": 0.0,
    }

    def _validate(self, hp: dict[str, Any]) -> None:
        super()._validate(hp)
        for key in ("ratio", "n_centres", "embedding_dim"):
            self._require(isinstance(hp[key], int) and hp[key] >= 1,
                          f"{self.name}: {key} must be an integer >= 1, got {hp[key]!r}")
        self._require(hp["tolerance"] >= 0, f"{self.name}: tolerance (C) must be >= 0")
        self._require(hp["balance_gamma"] >= 0, f"{self.name}: balance_gamma must be >= 0")
        self._require(hp["kernel_gamma"] is None or hp["kernel_gamma"] > 0,
                      f"{self.name}: kernel_gamma must be > 0 or None (median heuristic)")
        self._require(hp["weight_lr"] > 0, f"{self.name}: weight_lr must be > 0")

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        super()._setup(model, data)
        hp = self.hyperparameters
        self.weight_model_ = _fresh_copy(model, self.seed_ % (2**31) + 2)
        self.weight_optimizer_ = torch.optim.Adam(
            self.weight_model_.parameters(), lr=hp["weight_lr"],
            weight_decay=hp["weight_weight_decay"],
        )
        self.user_features_, self.item_features_ = self._embeddings(data)
        gamma = hp["kernel_gamma"]
        if gamma is None:
            probe = self._generator(-1, -1, 3)
            users = torch.randint(data.n_users, (256,), generator=probe)
            items = torch.randint(data.n_items, (256,), generator=probe)
            distances = torch.cdist(*(2 * [self._features(users, items)])).pow(2)
            median = float(distances[~torch.eye(256, dtype=torch.bool)].median())
            gamma = 1.0 / median if median > 0 else 1.0
        self.kernel_gamma_ = gamma

    def _embeddings(self, data: TrainTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed user and item embeddings: a truncated SVD of the train label matrix."""
        rank = min(self.hyperparameters["embedding_dim"], data.n_users, data.n_items)
        matrix = torch.sparse_coo_tensor(
            torch.stack([self._users_cpu, self._items_cpu]), self._labels_cpu.double(),
            (data.n_users, data.n_items), check_invariants=True,
        ).coalesce()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_ % (2**31) + 3)
            u, s, v = torch.svd_lowrank(matrix, q=rank, niter=4)
        scale = s.sqrt()
        return (u * scale).float(), (v * scale).float()

    def _features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.user_features_[users.cpu()], self.item_features_[items.cpu()]],
                         dim=1).to(self.device_)

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        batch = super()._make_batch(rows, epoch, generator, batch_size)
        data = self._check_setup()
        n_sampled = self.hyperparameters["ratio"] * rows.numel()
        keys = torch.randint(data.n_users * data.n_items, (n_sampled,), generator=generator)
        batch["sampled_users"], batch["sampled_items"] = keys // data.n_items, keys % data.n_items
        batch["centres"] = torch.randint(n_sampled, (self.hyperparameters["n_centres"],),
                                         generator=generator)
        return batch

    def _weights(self, batch: Batch) -> torch.Tensor:
        """w = σ(weight model) · 1/p at the batch's observed rows (with gradient)."""
        correction = torch.sigmoid(self.weight_model_(batch["users"], batch["items"]))
        return correction * batch["inverse_propensity"]

    def _update_weights(self, batch: Batch) -> torch.Tensor:
        hp = self.hyperparameters
        sampled = self._features(batch["sampled_users"], batch["sampled_items"])
        centres = sampled[batch["centres"]]
        observed = self._features(batch["users"], batch["items"])
        kernel_observed = L.gaussian_kernel(centres, observed, self.kernel_gamma_)
        kernel_all = L.gaussian_kernel(centres, sampled, self.kernel_gamma_)
        weights = self._weights(batch)
        loss = L.kernel_balancing_loss(weights, kernel_observed, kernel_all,
                                       hp["balance_gamma"], hp["tolerance"])
        self.weight_optimizer_.zero_grad()
        loss.backward()
        self.weight_optimizer_.step()
        with torch.no_grad():
            violation = L.kernel_balance_violation(weights, kernel_observed, kernel_all)
        self._add("mean_weight_loss", loss)
        self._add("mean_balance_violation", violation.abs().max())
        self._add("mean_weight_mean", weights.mean())
        with torch.no_grad():
            return self._weights(batch)

    def auxiliary_modules(self) -> dict[str, nn.Module]:
        modules = super().auxiliary_modules()
        if hasattr(self, "weight_model_"):
            modules["weight"] = self.weight_model_
        return modules


class KBIPS(_KernelBalancing):
    """IPS with kernel-balanced weights: mean(w · loss)."""

    name = "kbips"

    def _setup_imputation(self, model: nn.Module) -> None:
        """KBIPS has no imputation model."""

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            weights = self._weights(batch)
        return (self._errors(model, batch) * weights).mean()

    def after_step(self, model: nn.Module, batch: Batch, epoch: int) -> None:
        self._update_weights(batch)


class KBDR(_KernelBalancing):
    """DR with kernel-balanced weights in place of 1/p."""

    name = "kbdr"
    defaults: ClassVar[dict[str, Any]] = {
        **_KernelBalancing.defaults,
        "imputation_lr": 0.01,
        "imputation_weight_decay": 0.0,
    }

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        super()._setup(model, data)
        self._setup_imputation(model)

    def _loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            weights = self._weights(batch)
        return self._dr_loss(model, batch, weights)

    def after_step(self, model: nn.Module, batch: Batch, epoch: int) -> None:
        weights = self._update_weights(batch)
        self._update_imputation(model, batch, weights)


# -- implicit task --------------------------------------------------------------------------------


class _ImplicitObjective(Objective):
    """Positives-only train rows; negatives uniform over each user's non-positive items."""

    task = "implicit"

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        self._require(
            bool((data.labels == 1).all()),
            f"{self.name} trains on positives only (all labels 1.0); drop the non-positive rows "
            "or use a rating-task objective with pointwise_loss='bce'",
        )
        self._positives = _ComplementSampler(self._users_cpu * data.n_items + self._items_cpu,
                                             segment=data.n_items, n_owners=data.n_users)
        users_with_positives = torch.unique(self._users_cpu)
        full = self._positives.free(users_with_positives) == 0
        if bool(full.any()):
            raise ValueError(
                f"{self.name}: user(s) {users_with_positives[full][:5].tolist()} have every item "
                "as a positive; no negative can be sampled for them"
            )
        order = torch.argsort(self._users_cpu, stable=True)
        degree = torch.bincount(self._users_cpu, minlength=data.n_users)
        self._user_rows = order
        self._user_items = self._items_cpu[order]
        self._user_start = torch.cumsum(degree, 0) - degree
        self._user_degree = degree
        self._active_users = users_with_positives

    def sample_negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One item per entry of ``users``, uniform over that user's non-positive items."""
        return self._positives.sample(users.reshape(-1), generator).reshape(users.shape)

    def _triples(self, rows: torch.Tensor, generator: torch.Generator) -> Batch:
        users = self._users_cpu[rows]
        return {
            "rows": rows,
            "users": users,
            "pos_items": self._items_cpu[rows],
            "neg_items": self.sample_negatives(users, generator),
        }

    def _scores(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of (user, positive) (B,) and (user, negative) (B,) or (B, n)."""
        users, negatives = batch["users"], batch["neg_items"]
        negative_users = users if negatives.ndim == 1 else users.unsqueeze(1).expand_as(negatives)
        positive, negative = _score_pairs(
            model, (users, batch["pos_items"]), (negative_users, negatives)
        )
        return positive, negative

    def _finish(self, value: torch.Tensor, trained_rows: torch.Tensor) -> torch.Tensor:
        self._record_trained(trained_rows)
        self._record_loss(value)
        return value


class _PairwiseOrPointwise(_ImplicitObjective):
    """Objectives with a ``base`` loss: ``"bpr"`` (one negative) or ``"bce"`` (``n_negatives``)."""

    fixed_base: ClassVar[str | None] = None

    def _base(self) -> str:
        return self.fixed_base or self.hyperparameters["base"]

    def _validate(self, hp: dict[str, Any]) -> None:
        if "base" in hp:
            self._require(hp["base"] in ("bpr", "bce"),
                          f"{self.name}: base must be 'bpr' or 'bce', got {hp['base']!r}")
        if "n_negatives" in hp:
            self._require(isinstance(hp["n_negatives"], int) and hp["n_negatives"] >= 1,
                          f"{self.name}: n_negatives must be an integer >= 1")

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        if self._base() == "bpr":
            return self._triples(rows, generator)
        users = self._users_cpu[rows]
        n = self.hyperparameters.get("n_negatives", 1)
        return {
            "rows": rows,
            "users": users,
            "pos_items": self._items_cpu[rows],
            "neg_items": self.sample_negatives(users.unsqueeze(1).expand(-1, n), generator),
        }

    def _pointwise(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of positives then negatives, flattened."""
        positive, negative = self._scores(model, batch)
        logits = torch.cat([positive, negative.reshape(-1)])
        labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative.reshape(-1))])
        return logits, labels


class BCE(_PairwiseOrPointwise):
    """BCE on each positive and ``n_negatives`` sampled negatives."""

    name = "bce"
    fixed_base = "bce"
    defaults: ClassVar[dict[str, Any]] = {"n_negatives": 1}

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        logits, labels = self._pointwise(model, batch)
        return self._finish(L.bce_with_logits(logits, labels).mean(), batch["rows"])


class RelIPS(_PairwiseOrPointwise):
    """Unbiased pointwise loss for clicks under exposure bias (Saito et al., WSDM 2020, Rel-MF):
    a click at exposure propensity θ counts as relevance 1/θ, so the loss of a positive is
    (1/θ)·(−log σ(s)) + (1 − 1/θ)·(−log(1 − σ(s))); sampled non-clicked pairs are plain negatives.
    Naive BCE treats every unclicked pair as irrelevant and so learns exposure × relevance."""

    name = "rel_ips"
    fixed_base = "bce"
    defaults: ClassVar[dict[str, Any]] = {"n_negatives": 1, "clip": 0.05}

    def _validate(self, hp: dict[str, Any]) -> None:
        super()._validate(hp)
        self._require(0 < hp["clip"] <= 1, f"{self.name}: clip must be in (0, 1]")

    def _setup(self, model: nn.Module, data: TrainTensors) -> None:
        super()._setup(model, data)
        if data.propensity is None:
            raise ValueError(f"{self.name} needs the exposure propensity of each click: set "
                             "[train.propensity] (e.g. estimator = \"popularity\")")
        self._inverse = L.inverse_propensity(data.propensity.cpu(), self.hyperparameters["clip"])

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        positive, negative = self._scores(model, batch)
        weight = self._inverse[batch["rows"]].to(positive.device, positive.dtype)
        ones, zeros = torch.ones_like(positive), torch.zeros_like(positive)
        positive_loss = (weight * L.bce_with_logits(positive, ones)
                         + (1 - weight) * L.bce_with_logits(positive, zeros))
        negative_loss = L.bce_with_logits(negative.reshape(-1), torch.zeros_like(
            negative.reshape(-1)))
        value = torch.cat([positive_loss, negative_loss]).mean()
        return self._finish(value, batch["rows"])


class BPR(_PairwiseOrPointwise):
    """−log σ(s_pos − s_neg) with one uniform negative per positive."""

    name = "bpr"
    fixed_base = "bpr"

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        positive, negative = self._scores(model, batch)
        return self._finish(L.bpr_loss(positive, negative).mean(), batch["rows"])


class TCE(_PairwiseOrPointwise):
    """Truncated loss (T-CE): drop the drop_rate(t) share of largest losses in each batch."""

    name = "tce"
    defaults: ClassVar[dict[str, Any]] = {
        "base": "bpr",
        "max_drop_rate": 0.2,
        "num_gradual": 30000,
        "n_negatives": 1,
    }

    def _validate(self, hp: dict[str, Any]) -> None:
        super()._validate(hp)
        self._require(0 <= hp["max_drop_rate"] < 1, f"{self.name}: max_drop_rate must be in [0, 1)")
        self._require(isinstance(hp["num_gradual"], int) and hp["num_gradual"] >= 0,
                      f"{self.name}: num_gradual must be an integer >= 0")

    def drop_rate(self, step: int) -> float:
        """The drop rate at global step ``step``."""
        hp = self.hyperparameters
        return L.drop_rate_schedule(step, hp["max_drop_rate"], hp["num_gradual"])

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        rate = self.drop_rate(int(batch["step"]))
        self._last["drop_rate"] = rate
        if self._base() == "bpr":
            positive, negative = self._scores(model, batch)
            value, keep = L.truncated_loss(L.bpr_loss(positive, negative), rate)
            return self._finish(value, batch["rows"][keep])
        logits, labels = self._pointwise(model, batch)
        value, keep = L.truncated_loss(L.bce_with_logits(logits, labels), rate)
        n_positive = batch["rows"].numel()
        return self._finish(value, batch["rows"][keep[:n_positive]])


class RCE(_PairwiseOrPointwise):
    """Reweighted loss (R-CE): losses weighted by the detached predicted agreement to the β."""

    name = "rce"
    defaults: ClassVar[dict[str, Any]] = {"base": "bpr", "beta": 0.25, "n_negatives": 1}

    def _validate(self, hp: dict[str, Any]) -> None:
        super()._validate(hp)
        self._require(hp["beta"] >= 0, f"{self.name}: beta must be >= 0")

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        beta = self.hyperparameters["beta"]
        if self._base() == "bpr":
            positive, negative = self._scores(model, batch)
            value = L.reweighted_bpr(positive, negative, beta).mean()
        else:
            logits, labels = self._pointwise(model, batch)
            value = L.reweighted_bce(logits, labels, beta).mean()
        return self._finish(value, batch["rows"])


class PLD(_ImplicitObjective):
    """Personalised loss-distribution denoising (Zhang et al. WWW 2025), as in the released code."""

    name = "pld"
    defaults: ClassVar[dict[str, Any]] = {"warmup_epochs": 5, "k": 5, "tau": 0.1}

    def _validate(self, hp: dict[str, Any]) -> None:
        self._require(isinstance(hp["warmup_epochs"], int) and hp["warmup_epochs"] >= 0,
                      f"{self.name}: warmup_epochs must be an integer >= 0")
        self._require(isinstance(hp["k"], int) and hp["k"] >= 1,
                      f"{self.name}: k (the candidate pool size) must be an integer >= 1")
        self._require(hp["tau"] > 0, f"{self.name}: tau (the temperature) must be > 0")

    def _warming_up(self, epoch: int) -> bool:
        return epoch < self.hyperparameters["warmup_epochs"]

    def _make_batch(
        self, rows: torch.Tensor, epoch: int, generator: torch.Generator, batch_size: int
    ) -> Batch:
        if self._warming_up(epoch):
            return self._triples(rows, generator)
        size, k = batch_size, self.hyperparameters["k"]
        pick = torch.randint(self._active_users.numel(), (size,), generator=generator)
        users = self._active_users[pick]
        offsets = _floyd_pools(self._user_degree[users], k, generator)
        # Positions in the user-sorted order: items come from one gather; the rows (for the
        # statistics and the chosen pair) only where needed.
        positions = self._user_start[users].unsqueeze(1) + offsets
        return {
            "users": users,
            "pool_positions": positions,
            "pool_items": self._user_items[positions],
            "neg_items": self.sample_negatives(users, generator),
            "uniforms": torch.rand(size, generator=generator, dtype=torch.float64),
        }

    def _candidate_losses(
        self, pool_scores: torch.Tensor, negative_scores: torch.Tensor
    ) -> torch.Tensor:
        return L.bpr_loss(pool_scores, negative_scores.unsqueeze(1))

    def _step_loss(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return L.bpr_loss(positive, negative).mean()

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        users, negatives = batch["users"], batch["neg_items"]
        if self._warming_up(epoch):
            value = self._step_loss(*_score_pairs(model, (users, batch["pos_items"]),
                                                  (users, negatives)))
            return self._finish(value, batch["rows"])
        positions, pool_items = batch["pool_positions"], batch["pool_items"]
        size = pool_items.shape[0]
        # Personal losses without gradient (one user lookup per user), then an ordinary step on
        # the chosen pair; scoring the pool with gradient instead costs more in the backward
        # pass (measured: tests/benchmarks/bench_offline.py) than this second, small forward.
        with torch.no_grad():
            pool_scores, negative_scores = _score_pool(model, users, pool_items, negatives)
            candidate_losses = self._candidate_losses(pool_scores, negative_scores)
            probabilities = L.pld_candidate_probabilities(candidate_losses,
                                                          self.hyperparameters["tau"])
            choice = L.choose_by_uniforms(probabilities, batch["uniforms"])
        index = torch.arange(size, device=choice.device)
        value = self._step_loss(*_score_pairs(model, (users, pool_items[index, choice]),
                                              (users, negatives)))
        chosen_rows = self._user_rows[positions[index.cpu(), choice.cpu()]]
        if self.data_ is not None and self.data_.noise is not None:
            self._record_trained(self._user_rows[positions.reshape(-1)], key="_pool")
        else:
            self._add("n_trained_pool", float(positions.numel()))
        return self._finish(value, chosen_rows)


class PLDBCE(PLD):
    """PLD with pointwise candidate losses −log σ(s) and a BCE step (positive + one negative)."""

    name = "pld_bce"

    def _candidate_losses(
        self, pool_scores: torch.Tensor, negative_scores: torch.Tensor
    ) -> torch.Tensor:
        return L.bce_with_logits(pool_scores, torch.ones_like(pool_scores))

    def _step_loss(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            L.bce_with_logits(positive, torch.ones_like(positive)),
            L.bce_with_logits(negative, torch.zeros_like(negative)),
        ]).mean()


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (Naive, IPS, SNIPS, DRJL, KBIPS, KBDR, BCE, RelIPS, BPR, TCE, RCE, PLD,
                PLDBCE)
}


def make_objective(name: str, **hyperparameters: Any) -> Objective:
    """The objective called ``name`` with these hyperparameters (validated)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](**hyperparameters)
