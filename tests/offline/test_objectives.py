"""Objectives: batching and rank splits, negatives, PLD pools and choices, T-CE truncation, the
IPS/SNIPS/DR identities, auxiliary updates, and PLD learning on noisy data."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from sklearn.base import clone
from torch import nn

from offline import losses as L
from offline.dataset import Dataset, interactions_frame
from offline.objectives import OBJECTIVES, Objective, TrainTensors, make_objective
from offline.objectives.rating import squash

# one torch thread per test, restored after it (seeded results, no oversubscription)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATING = ("naive", "ips", "snips", "dr_jl", "kbips", "kbdr")
ROW_BATCHED_IMPLICIT = ("bce", "rel_ips", "bpr", "tce", "rce")


class Dot(nn.Module):
    """A tiny embedding dot-product model with ``reset_parameters``."""

    def __init__(self, n_users: int, n_items: int, dim: int = 8) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users) * self.item(items)).sum(-1)


def random_data(
    n_users: int = 30, n_items: int = 40, n: int = 301, implicit: bool = False, seed: int = 0
) -> TrainTensors:
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randperm(n_users * n_items, generator=gen)[:n]
    labels = torch.ones(n) if implicit else torch.randint(1, 6, (n,), generator=gen).float()
    return TrainTensors(
        users=keys // n_items,
        items=keys % n_items,
        labels=labels,
        n_users=n_users,
        n_items=n_items,
        propensity=torch.rand(n, generator=gen) * 0.5 + 0.05,  # rel_ips needs it on clicks
        noise=torch.rand(n, generator=gen) < 0.2,
    )


def ready(name: str, data: TrainTensors, seed: int = 0, **hp: object) -> tuple[Objective, Dot]:
    objective = make_objective(name, **hp)
    model = Dot(data.n_users, data.n_items)
    objective.setup(model, data, torch.Generator().manual_seed(seed))
    return objective, model


def train(objective: Objective, model: nn.Module, epochs: int, batch_size: int,
          lr: float = 0.02) -> list[dict[str, float]]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        for batch in objective.batches(epoch, batch_size):
            loss = objective.loss(model, batch, epoch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            objective.after_step(model, batch, epoch)
        history.append(objective.epoch_stats())
    return history


def keys_of(users: torch.Tensor, items: torch.Tensor, n_items: int) -> set[int]:
    return set((users.reshape(-1) * n_items + items.reshape(-1)).tolist())


# -- errors ---------------------------------------------------------------------------------------


def test_registry_and_unknown_names() -> None:
    assert set(OBJECTIVES) == {*RATING, *ROW_BATCHED_IMPLICIT, "pld", "pld_bce", "dr_clicks"}
    for name, cls in OBJECTIVES.items():
        assert cls.name == name and cls.task in ("rating", "implicit")
    with pytest.raises(ValueError, match=r"^objective: expected one of .*'bpr'.*got 'plD'"):
        make_objective("plD")
    with pytest.raises(ValueError, match=r"^temperature: expected a hyperparameter of pld .*'tau'"):
        make_objective("pld", temperature=0.1)


NON_DEFAULT = {
    "pointwise_loss": "bce", "clip": 0.1, "ratio": 2, "population_weights": False,
    "imputation_lr": 0.5, "imputation_weight_decay": 0.1, "imputation_link": "identity",
    "n_centres": 4, "tolerance": 0.01,
    "balance_gamma": 2.0, "kernel_gamma": 0.3, "embedding_dim": 6, "weight_lr": 0.2,
    "weight_weight_decay": 0.01, "n_negatives": 3, "base": "bce", "max_drop_rate": 0.4,
    "num_gradual": 7, "beta": 0.5, "warmup_epochs": 2, "k": 3, "tau": 0.7,
    "propensity": "per_pair", "imputation": "relevance",
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_hyperparameters_are_init_arguments_and_clone_keeps_them(name: str) -> None:
    cls = OBJECTIVES[name]
    names = set(cls().get_params())
    assert names <= NON_DEFAULT.keys()
    params = {key: NON_DEFAULT[key] for key in names}
    objective = make_objective(name, **params)
    assert objective.get_params() == params  # stored unchanged, under the same names
    twin = clone(objective)
    assert type(twin) is cls and twin is not objective and twin.get_params() == params
    assert cls(**cls().get_params()).get_params() == cls().get_params()


def test_set_params_values_are_checked_at_setup() -> None:
    objective = make_objective("pld").set_params(tau=-1.0)
    assert objective.tau == -1.0  # the constructor and set_params check nothing
    with pytest.raises(ValueError, match=r"^tau: expected a real number > 0"):
        objective.check_params()
    data = random_data(implicit=True)
    with pytest.raises(ValueError, match=r"^tau"):
        objective.setup(Dot(data.n_users, data.n_items), data, torch.Generator())
    with pytest.raises(TypeError, match=r"^k: expected an integer >= 1, got 2\.5"):
        make_objective("pld", k=2.5)


@pytest.mark.parametrize(
    ("name", "hp", "match"),
    [
        ("pld", {"tau": 0.0}, "tau"),
        ("pld", {"k": 0}, "k"),
        ("pld", {"warmup_epochs": -1}, "warmup_epochs"),
        ("naive", {"pointwise_loss": "l1"}, "pointwise_loss"),
        ("ips", {"clip": 1.5}, "clip"),
        ("tce", {"base": "hinge"}, "base"),
        ("tce", {"max_drop_rate": 1.0}, "max_drop_rate"),
        ("bce", {"n_negatives": 0}, "n_negatives"),
        ("rce", {"beta": -1.0}, "beta"),
        ("dr_jl", {"ratio": 0}, "ratio"),
        ("dr_jl", {"imputation_lr": 0}, "imputation_lr"),
        ("kbips", {"n_centres": 0}, "n_centres"),
        ("kbdr", {"kernel_gamma": -1.0}, "kernel_gamma"),
    ],
)
def test_bad_hyperparameters(name: str, hp: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_objective(name, **hp)


def test_setup_errors() -> None:
    rating = random_data()
    no_propensity = TrainTensors(rating.users, rating.items, rating.labels, 30, 40)
    for name in ("ips", "snips", "dr_jl", "kbips", "kbdr"):
        with pytest.raises(ValueError, match="needs propensities"):
            ready(name, no_propensity)
    ready("naive", no_propensity)
    with pytest.raises(ValueError, match="positives only"):
        ready("bpr", rating)
    with pytest.raises(ValueError, match="0/1 labels"):
        ready("naive", rating, pointwise_loss="bce")
    full = TrainTensors(torch.zeros(4, dtype=torch.long), torch.arange(4), torch.ones(4), 2, 4)
    with pytest.raises(ValueError, match="every item"):
        ready("bpr", full)
    with pytest.raises(RuntimeError, match="setup"):
        next(make_objective("bpr").batches(0, 8))
    with pytest.raises(ValueError, match="rank"):
        next(ready("bpr", random_data(implicit=True))[0].batches(0, 8, rank=2, world_size=2))


def test_train_tensors_validation() -> None:
    users, items = torch.tensor([0, 1]), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"items: expected ids in \[0, 2\), got ids in \[0, 2\]"):
        TrainTensors(users, items, torch.ones(2), 2, 2)
    with pytest.raises(ValueError, match=r"propensity: expected values in \(0, 1\]"):
        TrainTensors(users, items, torch.ones(2), 2, 3, propensity=torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match=r"users, items, labels: expected 1-d tensors of one"):
        TrainTensors(users, items[:1], torch.ones(2), 2, 3)


def test_from_dataset() -> None:
    train = interactions_frame(np.array([0, 1, 2]), np.array([1, 0, 3]), np.array([4.0, 2.0, 5.0]),
                               noise=np.array([False, True, False]))
    matrix = np.full((3, 4), 0.5)
    matrix[1, 0] = 0.25
    dataset = Dataset("toy", "rating", 3, 4, train, train.head(1), train.head(1),
                      propensity_matrix=matrix)
    tensors = TrainTensors.from_dataset(dataset)
    assert tensors.users.tolist() == [0, 1, 2] and tensors.items.tolist() == [1, 0, 3]
    assert tensors.labels.tolist() == [4.0, 2.0, 5.0]
    assert tensors.propensity.tolist() == [0.5, 0.25, 0.5]
    assert tensors.noise.tolist() == [False, True, False]
    explicit = TrainTensors.from_dataset(dataset, propensity=np.array([0.1, 0.2, 0.3]))
    assert torch.allclose(explicit.propensity, torch.tensor([0.1, 0.2, 0.3]))
    with_column = Dataset("toy", "rating", 3, 4, train.with_columns(propensity=train["label"] / 10),
                          train.head(1), train.head(1))
    assert torch.allclose(TrainTensors.from_dataset(with_column).propensity,
                          torch.tensor([0.4, 0.2, 0.5]))


# -- batches --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RATING + ROW_BATCHED_IMPLICIT)
def test_batches_cover_each_row_once_and_split_across_ranks(name: str) -> None:
    data = random_data(implicit=name in ROW_BATCHED_IMPLICIT)
    objective, _ = ready(name, data)
    batch_size = 32  # 301 rows: 10 steps, the last one short
    single = list(objective.batches(3, batch_size))
    assert len(single) == math.ceil(data.n_rows / batch_size) == objective.n_steps(batch_size)
    rows = torch.cat([b["rows"] for b in single])
    assert torch.equal(rows.sort().values, torch.arange(data.n_rows))
    assert not torch.equal(rows, torch.arange(data.n_rows))  # shuffled
    ranks = [list(objective.batches(3, batch_size, rank, 2)) for rank in (0, 1)]
    assert [len(r) for r in ranks] == [objective.n_steps(batch_size, r, 2) for r in (0, 1)]
    assert len(ranks[0]) + len(ranks[1]) == len(single)
    by_step = {int(b["step"]): b["rows"] for rank in ranks for b in rank}
    assert by_step.keys() == {int(b["step"]) for b in single}
    for batch in single:
        assert torch.equal(by_step[int(batch["step"])], batch["rows"])
    for batch in single:
        assert torch.equal(batch["users"], data.users[batch["rows"]])


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_batches_are_reproducible_from_the_generator(name: str) -> None:
    data = random_data(implicit=OBJECTIVES[name].task == "implicit")
    if name == "dr_clicks":  # 0/1 clicks on shown items
        data = dataclasses.replace(data, labels=(data.labels > 3).float())
    hp = {"warmup_epochs": 1} if name.startswith("pld") else {}

    def draw(seed: int, epoch: int) -> list[dict[str, torch.Tensor]]:
        return list(ready(name, data, seed=seed, **hp)[0].batches(epoch, 64))

    def same(a: list, b: list) -> bool:
        return len(a) == len(b) and all(
            x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
            for x, y in zip(a, b, strict=True)
        )

    for epoch in (0, 2):
        assert same(draw(7, epoch), draw(7, epoch))
    assert not same(draw(7, 2), draw(8, 2))
    assert not same(draw(7, 2), draw(7, 3))


@pytest.mark.parametrize(("name", "hp"), [("bpr", {}), ("bce", {"n_negatives": 3}),
                                          ("tce", {"base": "bce", "n_negatives": 2}),
                                          ("pld", {"warmup_epochs": 0}),
                                          ("pld_bce", {"warmup_epochs": 1})])
def test_negatives_are_never_train_positives(name: str, hp: dict) -> None:
    data = random_data(n_users=10, n_items=12, n=70, implicit=True)  # dense: 58% positives
    positives = keys_of(data.users, data.items, data.n_items)
    objective, _ = ready(name, data, **hp)
    for epoch in range(3):
        for batch in objective.batches(epoch, 16):
            negatives = batch["neg_items"]
            users = batch["users"].reshape(-1, *[1] * (negatives.ndim - 1)).expand_as(negatives)
            assert not keys_of(users, negatives, data.n_items) & positives
            assert negatives.shape[0] == batch["users"].shape[0]
            if name in ("bce", "tce"):
                assert negatives.shape[1] == hp["n_negatives"]


def test_negatives_are_uniform_over_non_positives() -> None:
    users = torch.tensor([0, 0, 0, 1, 2, 2])
    items = torch.tensor([1, 4, 5, 0, 2, 7])
    data = TrainTensors(users, items, torch.ones(6), 4, 8)
    objective, _ = ready("bpr", data)
    gen = torch.Generator().manual_seed(0)
    for user, positives in ((0, {1, 4, 5}), (1, {0}), (3, set())):
        draws = objective.sample_negatives(torch.full((10_000,), user), gen)
        counts = torch.bincount(draws, minlength=8)
        assert all(counts[i] == 0 for i in positives)
        free = [i for i in range(8) if i not in positives]
        assert chisquare(counts[free].numpy()).pvalue > 1e-3


def test_dr_jl_samples_unobserved_pairs_only() -> None:
    data = random_data(n_users=8, n_items=10, n=60)  # 75% observed
    observed = keys_of(data.users, data.items, data.n_items)
    objective, _ = ready("dr_jl", data, ratio=2.0)
    seen: set[int] = set()
    for batch in objective.batches(0, 16):
        assert batch["sampled_users"].numel() == 2 * batch["users"].numel()
        sampled = keys_of(batch["sampled_users"], batch["sampled_items"], data.n_items)
        assert not sampled & observed
        seen |= sampled
    assert len(seen) > 15  # of the 20 unobserved pairs: not stuck on a few


# -- PLD ------------------------------------------------------------------------------------------


def test_pld_batches_are_user_uniform_pools_of_the_users_positives() -> None:
    gen = torch.Generator().manual_seed(0)
    degrees = torch.tensor([0, 1, 3, 5, 9, 20])  # user 0 has no positives
    users = torch.arange(6).repeat_interleave(degrees)
    items = torch.cat([torch.randperm(30, generator=gen)[:d] for d in degrees.tolist()])
    data = TrainTensors(users, items, torch.ones(users.numel()), 6, 30)
    objective, _ = ready("pld", data, warmup_epochs=1, k=5)
    warm = list(objective.batches(0, 8))
    assert "rows" in warm[0] and "pool_positions" not in warm[0]
    batches = list(objective.batches(1, 8))
    assert len(batches) == len(warm) == math.ceil(users.numel() / 8)
    drawn = []
    for _ in range(60):
        for batch in objective.batches(1 + len(drawn), 8):
            pool_rows = objective._user_rows[batch["pool_positions"]]  # train rows of the pool
            batch_users = batch["users"]
            assert pool_rows.shape == (8, 5)
            assert torch.equal(data.users[pool_rows], batch_users.unsqueeze(1).expand(-1, 5))
            assert torch.equal(data.items[pool_rows], batch["pool_items"])
            full = degrees[batch_users] >= 5
            distinct = torch.tensor([len(set(r)) for r in pool_rows[full].tolist()])
            assert bool((distinct == 5).all())
            drawn.append(batch_users)
    counts = torch.bincount(torch.cat(drawn), minlength=6)
    assert counts[0] == 0
    assert chisquare(counts[1:].numpy()).pvalue > 1e-3  # user-uniform, not interaction-uniform


def test_pld_pools_are_uniform_subsets() -> None:
    users = torch.zeros(7, dtype=torch.long)
    data = TrainTensors(users, torch.arange(7), torch.ones(7), 1, 10)
    objective, _ = ready("pld", data, warmup_epochs=0, k=5)
    subsets: dict[tuple[int, ...], int] = {}
    for epoch in range(30):
        for batch in objective.batches(epoch, 700):  # one step of 700 user draws
            pool_rows = objective._user_rows[batch["pool_positions"]]
            for row in pool_rows.sort(dim=1).values.tolist():
                subsets[tuple(row)] = subsets.get(tuple(row), 0) + 1
    assert len(subsets) == math.comb(7, 5)
    assert chisquare(list(subsets.values())).pvalue > 1e-3


def test_pld_with_tiny_tau_steps_on_the_lowest_loss_candidate() -> None:
    data = random_data(n_users=12, n_items=30, n=150, implicit=True)
    objective, model = ready("pld", data, warmup_epochs=0, tau=1e-6)
    batch = next(iter(objective.batches(0, 16)))
    users, pool, negatives = batch["users"], batch["pool_items"], batch["neg_items"]
    with torch.no_grad():
        candidate = L.bpr_loss(model(users.unsqueeze(1).expand_as(pool), pool),
                               model(users, negatives).unsqueeze(1))
        best = pool[torch.arange(16), candidate.argmin(dim=1)]
        expected = L.bpr_loss(model(users, best), model(users, negatives)).mean()
        worst = pool[torch.arange(16), candidate.argmax(dim=1)]
        unexpected = L.bpr_loss(model(users, worst), model(users, negatives)).mean()
    value = objective.loss(model, batch, 0)
    assert torch.allclose(value, expected) and not torch.allclose(value, unexpected)
    stats = objective.epoch_stats()
    assert stats["n_trained"] == 16 and stats["n_trained_pool"] == 16 * 5


def noisy_implicit(n_users: int = 300, groups: int = 10, per_group: int = 10, clean: int = 8,
                   noisy: int = 4, seed: int = 0) -> TrainTensors:
    """Users like ``clean`` of their group's items; ``noisy`` positives come from other groups."""
    gen = torch.Generator().manual_seed(seed)
    n_items = groups * per_group
    group = torch.arange(n_users) % groups
    own = group.unsqueeze(1) * per_group + torch.arange(per_group)
    clean_items = own.gather(1, torch.rand(n_users, per_group, generator=gen).argsort(1)[:, :clean])
    other = torch.rand(n_users, n_items, generator=gen).scatter(1, own, 2.0)
    noisy_items = other.argsort(1)[:, :noisy]
    everyone = torch.arange(n_users)
    return TrainTensors(
        users=torch.cat([everyone.repeat_interleave(clean), everyone.repeat_interleave(noisy)]),
        items=torch.cat([clean_items.reshape(-1), noisy_items.reshape(-1)]),
        labels=torch.ones(n_users * (clean + noisy)),
        n_users=n_users,
        n_items=n_items,
        noise=torch.cat([torch.zeros(n_users * clean, dtype=torch.bool),
                         torch.ones(n_users * noisy, dtype=torch.bool)]),
    )


def test_pld_trains_on_fewer_noisy_positives_than_bpr() -> None:
    data = noisy_implicit()
    shares = {}
    for name, hp in (("bpr", {}), ("pld", {"warmup_epochs": 3}), ("pld_bce", {"warmup_epochs": 3})):
        torch.manual_seed(0)
        objective, model = ready(name, data, **hp)
        history = train(objective, model, epochs=8, batch_size=256)
        steps = math.ceil(data.n_rows / 256)  # the same step count as BPR, full user batches
        assert [h["steps"] for h in history] == [steps] * 8
        assert history[-1]["n_trained"] == (data.n_rows if name == "bpr" else steps * 256)
        shares[name] = history[-1]["noisy_share"]
        if name != "bpr":
            assert history[0]["noisy_share"] == pytest.approx(1 / 3)  # warm-up is plain BPR
            assert history[-1]["noisy_share_pool"] > 0.25  # the pool still holds the noise
    assert shares["bpr"] == pytest.approx(1 / 3)
    assert shares["pld"] < shares["bpr"] - 0.15
    assert shares["pld_bce"] < shares["bpr"] - 0.15


# -- T-CE / R-CE ----------------------------------------------------------------------------------


def test_tce_drops_the_expected_count_of_largest_losses() -> None:
    data = random_data(implicit=True)
    objective, model = ready("tce", data, max_drop_rate=0.3, num_gradual=20)
    batches = list(objective.batches(1, 40))  # global steps 8..15
    assert [int(b["step"]) for b in batches] == list(range(8, 16))
    for batch in batches:
        step = int(batch["step"])
        rate = min(step / 20 * 0.3, 0.3)
        with torch.no_grad():
            per_triple = L.bpr_loss(model(batch["users"], batch["pos_items"]),
                                    model(batch["users"], batch["neg_items"]))
        n_drop = math.floor(rate * per_triple.numel() + 1e-9)
        expected = per_triple.sort().values[: per_triple.numel() - n_drop].mean()
        value = objective.loss(model, batch, 1)
        assert torch.allclose(value, expected)
        stats = objective.epoch_stats()
        assert stats["n_trained"] == per_triple.numel() - n_drop
        assert stats["drop_rate"] == pytest.approx(rate)


def test_tce_on_bce_counts_kept_positives() -> None:
    data = random_data(implicit=True)
    objective, model = ready("tce", data, base="bce", n_negatives=2, max_drop_rate=0.5,
                             num_gradual=0)
    batch = next(iter(objective.batches(0, 30)))
    with torch.no_grad():
        positive = L.bce_with_logits(model(batch["users"], batch["pos_items"]), torch.ones(30))
        negative = L.bce_with_logits(
            model(batch["users"].repeat_interleave(2), batch["neg_items"].reshape(-1)),
            torch.zeros(60),
        )
    keep = L.truncated_keep_mask(torch.cat([positive, negative]), 0.5)
    assert torch.allclose(objective.loss(model, batch, 0), torch.cat([positive, negative])[keep]
                          .mean())
    assert objective.epoch_stats()["n_trained"] == int(keep[:30].sum())


def test_rce_weights_losses() -> None:
    data = random_data(implicit=True)
    objective, model = ready("rce", data, beta=0.5)
    batch = next(iter(objective.batches(0, 50)))
    with torch.no_grad():
        positive = model(batch["users"], batch["pos_items"])
        negative = model(batch["users"], batch["neg_items"])
    expected = (torch.sigmoid(positive - negative).sqrt() * L.bpr_loss(positive, negative)).mean()
    assert torch.allclose(objective.loss(model, batch, 0), expected)


# -- rating objectives ----------------------------------------------------------------------------


def test_ips_with_unit_propensity_and_snips_with_equal_propensity_equal_naive() -> None:
    base = random_data()
    for name, value in (("ips", 1.0), ("snips", 0.3)):
        data = TrainTensors(base.users, base.items, base.labels, base.n_users, base.n_items,
                            propensity=torch.full((base.n_rows,), value))
        naive, model = ready("naive", data)
        weighted, _ = ready(name, data)
        for a, b in zip(naive.batches(0, 64), weighted.batches(0, 64), strict=True):
            assert torch.allclose(naive.loss(model, a, 0), weighted.loss(model, b, 0))
    ips, model = ready("ips", base)
    batch = next(iter(ips.batches(0, 64)))
    assert not torch.allclose(ips.loss(model, batch, 0), ready("naive", base)[0].loss(model,
                                                                                      batch, 0))


def test_ips_clip_floors_the_propensity() -> None:
    data = random_data()
    objective, model = ready("ips", data, clip=0.3)
    batch = next(iter(objective.batches(0, 64)))
    errors = (model(batch["users"], batch["items"]) - batch["labels"]) ** 2
    expected = (errors / data.propensity[batch["rows"]].clamp_min(0.3)).mean()
    assert torch.allclose(objective.loss(model, batch, 0), expected)


def test_dr_jl_loss_and_imputation_update() -> None:
    data = random_data()
    for population_weights in (False, True):
        objective, model = ready("dr_jl", data, ratio=1.5, imputation_lr=0.05,
                                 population_weights=population_weights)
        imputation = objective.imputation_.module
        assert imputation is not model
        assert not torch.equal(imputation.user.weight, model.user.weight)  # re-initialised
        batch = next(iter(objective.batches(0, 32)))
        users, items = batch["users"], batch["items"]
        sampled = (batch["sampled_users"], batch["sampled_items"])
        populations = (data.n_rows, 30 * 40 - data.n_rows) if population_weights else (None, None)
        assert objective.imputation_.label_range == (1.0, 5.0)  # the labels' range

        with torch.no_grad():  # the default "squash" link bounds the imputed labels
            prediction = model(users, items)
            expected = L.doubly_robust_loss(
                (prediction - batch["labels"]) ** 2,
                (prediction - squash(imputation(users, items), 1.0, 5.0)) ** 2,
                (model(*sampled) - squash(imputation(*sampled), 1.0, 5.0)) ** 2,
                1 / data.propensity[batch["rows"]],
                *populations,
            )
        loss = objective.loss(model, batch, 0)
        assert torch.allclose(loss, expected)
    loss.backward()
    assert model.user.weight.grad is not None and imputation.user.weight.grad is None
    model_before = model.user.weight.detach().clone()

    def imputation_error() -> float:
        with torch.no_grad():
            e = (model(users, items) - batch["labels"]) ** 2
            e_hat = (model(users, items) - squash(imputation(users, items), 1.0, 5.0)) ** 2
            return float(((e_hat - e) ** 2 / data.propensity[batch["rows"]]).sum())

    before = imputation_error()
    for _ in range(30):
        objective.after_step(model, batch, 0)
    assert imputation_error() < 0.5 * before
    assert torch.equal(model.user.weight, model_before)


def test_dr_jl_imputation_link_squashes_into_the_label_range() -> None:
    raw = torch.linspace(-50.0, 50.0, 1001)
    squashed = squash(raw, 1.0, 5.0)
    assert float(squashed.min()) >= 1.0 and float(squashed.max()) <= 5.0
    assert bool((squashed.diff() >= 0).all())  # monotone: the imputation's order is kept
    centre = torch.tensor([2.999, 3.0, 3.001])
    assert torch.allclose(squash(centre, 1.0, 5.0), centre, atol=1e-6)  # slope 1 at the centre
    data = random_data()
    identity, _ = ready("dr_jl", data, imputation_link="identity")
    assert identity.imputation_.label_range is None
    assert torch.equal(identity.imputation_.label(raw), raw)
    bce = random_data(implicit=True)
    bce = TrainTensors(bce.users, bce.items, (bce.labels * 0).index_fill(0, torch.arange(5), 1.0),
                       bce.n_users, bce.n_items, propensity=bce.propensity)
    logits, _ = ready("dr_jl", bce, pointwise_loss="bce")
    assert logits.imputation_.label_range is None  # σ already bounds a click's imputed label
    assert torch.allclose(logits.imputation_.label(raw), torch.sigmoid(raw))
    with pytest.raises(ValueError, match="imputation_link"):
        make_objective("dr_jl", imputation_link="tanh").check_params()


def test_kernel_balancing_weights_learn_balance() -> None:
    data = random_data(n=300)
    for name in ("kbips", "kbdr"):
        objective, model = ready(name, data)
        assert objective.weight_model_ is not model
        assert hasattr(objective, "imputation_") == (name == "kbdr")
        batch = next(iter(objective.batches(0, 64)))
        assert batch["sampled_users"].numel() == 5 * 64 and batch["centres"].numel() == 3
        objective.after_step(model, batch, 0)
        first = objective.epoch_stats()["weight_loss"]
        for _ in range(40):
            objective.after_step(model, batch, 0)
        objective.epoch_stats()
        objective.after_step(model, batch, 0)
        assert objective.epoch_stats()["weight_loss"] < first
        with torch.no_grad():
            weights = objective._weights(batch)
            assert bool((weights > 0).all())
            errors = (model(batch["users"], batch["items"]) - batch["labels"]) ** 2
        if name == "kbips":
            assert torch.allclose(objective.loss(model, batch, 0), (errors * weights).mean())


@pytest.mark.parametrize("name", RATING)
def test_rating_objectives_reduce_their_loss(name: str) -> None:
    data = random_data(n=300)
    torch.manual_seed(0)
    objective, model = ready(name, data)
    history = train(objective, model, epochs=6, batch_size=64, lr=0.05)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["noisy_share"] == pytest.approx(float(data.noise.float().mean()))


def test_epoch_stats_reset() -> None:
    objective, model = ready("bpr", random_data(implicit=True))
    train(objective, model, epochs=1, batch_size=64)
    assert objective.epoch_stats() == {}


def test_rel_ips_reweights_clicks_by_exposure_and_equals_bce_at_full_exposure() -> None:
    users = torch.tensor([0, 0, 1, 2])
    items = torch.tensor([1, 2, 0, 3])
    propensity = torch.tensor([1.0, 0.5, 0.25, 1.0])
    data = TrainTensors(users, items, torch.ones(4), 3, 6, propensity=propensity)
    rel, model = ready("rel_ips", data, n_negatives=2, clip=0.05)
    batch = next(rel.batches(0, 4))
    positive = model(batch["users"], batch["pos_items"])
    negative = model(batch["users"].unsqueeze(1).expand(-1, 2), batch["neg_items"]).reshape(-1)
    weight = 1 / propensity[batch["rows"]]
    expected = torch.cat([
        weight * -torch.nn.functional.logsigmoid(positive)
        + (1 - weight) * -torch.nn.functional.logsigmoid(-positive),
        -torch.nn.functional.logsigmoid(-negative),
    ]).mean()
    assert torch.allclose(rel.loss(model, batch, 0), expected, atol=1e-6)
    # Fully exposed clicks: the unbiased loss is plain BCE on the same batch.
    exposed = TrainTensors(users, items, torch.ones(4), 3, 6, propensity=torch.ones(4))
    rel_full, model = ready("rel_ips", exposed, n_negatives=2)
    bce, _ = ready("bce", exposed, n_negatives=2)
    batch = next(rel_full.batches(0, 4))
    assert torch.allclose(rel_full.loss(model, batch, 0), bce.loss(model, batch, 0), atol=1e-6)
    with pytest.raises(ValueError, match="exposure propensity"):
        ready("rel_ips", TrainTensors(users, items, torch.ones(4), 3, 6))
