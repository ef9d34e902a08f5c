"""Simulated data sets written in the lake's layout, for the offline pipeline's experiments.

The offline package may not import ``simulators``, so the simulator writes each data set to disk
and the offline side reads it like real logs (``recsys.datasets`` entry points name the writers).
A data set directory holds:

* ``lake/rewards/event_date=YYYY-MM-DD/event_hour=H/simulator-p0-<first>-<last>.parquet``: the
  rows of ``simulators.logged_data.collect_logs`` (the ``rewards`` schema plus ``score`` and
  ``noise``), one row per shown item, with synthetic Kafka provenance (topic
  ``simulator.rewards``, partition 0, ``kafka_offset`` = row number in event-time order) because
  the lake reader de-duplicates by provenance. ``<first>``/``<last>`` are the file's offsets.
* ``truth.npz``: ``relevance`` (n_users, n_items) indexed by the simulator's integer ids (the
  lake's ``user_id`` is that integer as a string), ``exposure_probability`` (n_users, n_items)
  and data-set specific arrays.
* ``manifest.json``: kind, seed, every parameter, sizes, row counts, what the arrays mean, the
  logging policy and the measured statistics (CTR, exposure skew, noise share).
* ``lake/world.json``: the simulator's world at the lake root (``simulators.world``), so
  ``recsys compare`` on this lake adds each candidate's true value.

Two data sets:

* ``exposure`` (debiasing): slates of one item drawn by a popularity-dominated softmax policy
  mixed with a uniform policy, so the logged propensity is the exposure probability of the pair
  and every item keeps at least ``epsilon / n_items``.
* ``noisy_clicks`` (denoising): uniformly random slates, the simulator's accidental clicks
  (``noise=True``) on top of preference clicks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.schema import arrow_schema, partition_expressions
from simulators.ground_truth import item_click_probabilities
from simulators.logged_data import collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import EpsilonMixturePolicy, FixedPolicy, SoftmaxPolicy, UniformPolicy
from simulators.world import WORLD_FILE, write_world

__all__ = [
    "EXPOSURE_DEFAULTS",
    "KAFKA_TOPIC",
    "NOISY_CLICKS_DEFAULTS",
    "exposure_setup",
    "noisy_clicks_setup",
    "write_exposure_dataset",
    "write_noisy_clicks_dataset",
]

KAFKA_TOPIC = "simulator.rewards"
"""The synthetic provenance topic of every simulated row (partition 0, offset = row number)."""
FILE_PREFIX = "simulator-p0"

_COMMON_DEFAULTS: dict[str, Any] = {
    "dim": 16,
    "affinity": 1.0,
    "item_bias_std": 0.5,
    "feature_noise": 0.5,
    "start_time_ms": 1_700_000_000_000,
    "ms_per_request": 1_000,
}

EXPOSURE_DEFAULTS: dict[str, Any] = {
    "n_users": 500,
    "n_items": 200,
    "n_requests": 100_000,
    **_COMMON_DEFAULTS,
    "no_click_utility": 2.0,
    "skew": 2.0,
    "personalization": 0.5,
    "popularity_correlation": 0.5,
    "epsilon": 0.05,
}
"""Parameters of ``write_exposure_dataset`` and their defaults (a CTR of about 20%)."""

NOISY_CLICKS_DEFAULTS: dict[str, Any] = {
    "n_users": 500,
    "n_items": 300,
    "n_requests": 60_000,
    **_COMMON_DEFAULTS,
    "slate_size": 3,
    "position_decay": 0.7,
    "no_click_utility": 2.5,
    "click_noise": 0.08,
}
"""Parameters of ``write_noisy_clicks_dataset`` and their defaults (about 28% noisy clicks)."""

_INTEGER = (
    "n_users",
    "n_items",
    "n_requests",
    "dim",
    "slate_size",
    "start_time_ms",
    "ms_per_request",
)
_POSITIVE = ("n_users", "n_items", "n_requests", "dim", "ms_per_request", "skew", "epsilon")
_NON_NEGATIVE = ("affinity", "item_bias_std", "feature_noise", "personalization", "start_time_ms")
_BATCH_SIZE = 20_000


# ------------------------------------------------------------------------------------- setups


def _resolve(kind: str, defaults: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``params``, type- and range-checked."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"{kind}: unknown parameter(s) {unknown}; expected some of {sorted(defaults)}"
        )
    resolved = {**defaults, **params}
    for name, value in resolved.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        if not np.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value}")
        if name in _INTEGER:
            if int(value) != value:
                raise ValueError(f"{name}: expected an integer, got {value}")
            resolved[name] = int(value)
        else:
            resolved[name] = float(value)
        if name in _POSITIVE and value <= 0:
            raise ValueError(f"{name}: expected a value > 0, got {value}")
        if name in _NON_NEGATIVE and value < 0:
            raise ValueError(f"{name}: expected a value >= 0, got {value}")
    return resolved


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    return int(seed)


def _config(p: Mapping[str, Any], seed: int, **fixed: Any) -> SimulatorConfig:
    return SimulatorConfig(
        n_users=p["n_users"],
        n_items=p["n_items"],
        dim=p["dim"],
        affinity=p["affinity"],
        item_bias_std=p["item_bias_std"],
        feature_noise=p["feature_noise"],
        no_click_utility=p["no_click_utility"],
        seed=seed,
        **fixed,
    )


def _zscore(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


def exposure_setup(
    seed: int = 0, **params: Any
) -> tuple[SlateSimulator, EpsilonMixturePolicy, np.ndarray, dict[str, Any]]:
    """The exposure data set's world, logging policy, item popularity and resolved parameters.

    Popularity is ``c · z(item_bias) + √(1 − c²) · noise`` standardised (c =
    ``popularity_correlation``): popular items are somewhat better on average, not the best.
    The policy is softmax(skew · popularity + personalization · ⟨user features, item features⟩
    / √f) mixed with ε = ``epsilon`` of uniform, over slates of one item.
    """
    seed = _check_seed(seed)
    p = _resolve("exposure", EXPOSURE_DEFAULTS, params)
    if not -1.0 <= p["popularity_correlation"] <= 1.0:
        raise ValueError(
            "popularity_correlation: expected a value in [-1, 1], got "
            f"{p['popularity_correlation']}"
        )
    if p["epsilon"] > 1:
        raise ValueError(f"epsilon: expected a value in (0, 1], got {p['epsilon']}")
    sim = SlateSimulator(_config(p, seed, slate_size=1))
    rng = np.random.default_rng([seed, 1])
    c = p["popularity_correlation"]
    own = rng.standard_normal(p["n_items"])
    popularity = _zscore(c * _zscore(sim.item_bias) + np.sqrt(1.0 - c * c) * own)
    base = SoftmaxPolicy(
        p["personalization"] * sim.item_features,
        temperature=1.0,
        item_bias=p["skew"] * popularity,
    )
    base.name = "popularity_softmax"
    return sim, EpsilonMixturePolicy(base, p["epsilon"]), popularity, p


def noisy_clicks_setup(
    seed: int = 0, **params: Any
) -> tuple[SlateSimulator, UniformPolicy, dict[str, Any]]:
    """The noisy-clicks data set's world (with accidental clicks), its uniform logging policy
    and the resolved parameters."""
    seed = _check_seed(seed)
    p = _resolve("noisy_clicks", NOISY_CLICKS_DEFAULTS, params)
    if p["slate_size"] < 3:
        raise ValueError(f"slate_size: expected a value >= 3, got {p['slate_size']}")
    if not 0.0 < p["click_noise"] < 1.0:
        raise ValueError(f"click_noise: expected a value in (0, 1), got {p['click_noise']}")
    sim = SlateSimulator(
        _config(
            p,
            seed,
            slate_size=p["slate_size"],
            position_decay=p["position_decay"],
            click_noise=p["click_noise"],
        )
    )
    return sim, UniformPolicy(p["n_items"]), p


# ------------------------------------------------------------------------------------- writers


def write_exposure_dataset(
    out_dir: str | Path, seed: int = 0, *, overwrite: bool = False, **params: Any
) -> Path:
    """Write the exposure-skew data set (see ``exposure_setup``) to ``out_dir``; return it.

    ``relevance[u, i]`` is P(click | item i shown alone to user u), exact from the choice model;
    ``exposure_probability[u, i]`` the logging policy's probability of showing i to u, which is
    the logged ``propensity`` (slates of one item). ``overwrite`` replaces an existing data set.
    """
    sim, policy, popularity, p = exposure_setup(seed, **params)
    out = _prepare(out_dir, overwrite)
    frame = _logs(sim, policy, p, seed)
    users = np.arange(sim.config.n_users)
    exposure = policy.action_dist(sim.user_features(users))[:, :, 0]
    relevance = item_click_probabilities(sim)
    files = _write_lake(out, frame)
    write_world(out / "lake", sim)
    shown = np.bincount(frame["item_id"].to_numpy(), minlength=sim.config.n_items)
    propensity = frame["propensity"].to_numpy()
    stats = {
        **_click_stats(frame),
        "exposure_gini": _gini(shown),
        "exposure_top10pct_share": _top_share(shown, 0.1),
        "items_never_shown": int((shown == 0).sum()),
        "logged_propensity_min": float(propensity.min()),
        "logged_propensity_max": float(propensity.max()),
        "exposure_probability_min": float(exposure.min()),
        "exposure_probability_max": float(exposure.max()),
        "mean_relevance": float(relevance.mean()),
    }
    _write_truth(
        out,
        relevance=relevance,
        exposure_probability=exposure,
        item_popularity=popularity,
        user_weights=sim.user_weights,
    )
    _write_manifest(
        out,
        kind="exposure",
        seed=seed,
        params=p,
        sim=sim,
        frame=frame,
        files=files,
        stats=stats,
        logging_policy={
            "name": policy.name,
            "slate_size": 1,
            "description": (
                "(1 - epsilon) * softmax(skew * item_popularity + personalization * "
                "<user features, item features> / sqrt(n_features)) + epsilon * uniform, over "
                "slates of one item; every item has propensity >= epsilon / n_items"
            ),
        },
        arrays={
            "relevance": "P(click | item shown alone to the user), exact from the choice model",
            "exposure_probability": (
                "P(the logging policy shows the item to the user); equals the logged propensity "
                "because slates hold one item"
            ),
            "item_popularity": "the standardised popularity score the logging policy uses",
            "user_weights": "P(a request comes from the user)",
        },
        notes=(
            "slate_size is 1, so each logged propensity is the exposure probability of its "
            "(user, item) pair; a row with reward 1.0 is a click, 0.0 an exposure without one"
        ),
    )
    return out


def write_noisy_clicks_dataset(
    out_dir: str | Path, seed: int = 0, *, overwrite: bool = False, **params: Any
) -> Path:
    """Write the noisy-clicks data set (see ``noisy_clicks_setup``) to ``out_dir``; return it.

    ``relevance[u, i]`` is P(click | item i shown alone at position 0) from the user's
    preference, without accidental clicks (they do not depend on the item, so the ranking is
    the same with them); ``click_probability`` includes them. Positives are the clicked rows;
    ``noise`` marks the accidental ones.
    """
    sim, policy, p = noisy_clicks_setup(seed, **params)
    out = _prepare(out_dir, overwrite)
    frame = _logs(sim, policy, p, seed)
    click_probability = item_click_probabilities(sim)
    eps = sim.config.click_noise
    relevance = (click_probability - eps) / (1.0 - eps)
    files = _write_lake(out, frame)
    write_world(out / "lake", sim)
    clicks = frame.filter(pl.col("reward") > 0)
    per_user = (
        clicks.group_by("user_id")
        .agg(pl.len().alias("clicks"), pl.col("item_id").n_unique().alias("distinct"))
        .to_dict(as_series=False)
    )
    n_users = sim.config.n_users
    click_counts = np.zeros(n_users, dtype=np.int64)
    distinct = np.zeros(n_users, dtype=np.int64)
    ids = np.asarray(per_user["user_id"], dtype=np.int64)
    click_counts[ids] = per_user["clicks"]
    distinct[ids] = per_user["distinct"]
    k = sim.config.slate_size
    stats = {
        **_click_stats(frame),
        "clicks_per_request": clicks.height / p["n_requests"],
        "expected_noise_share": _expected_noise_share(sim),
        "users_with_10_clicks": int((click_counts >= 10).sum()),
        "median_clicks_per_user": float(np.median(click_counts)),
        "median_distinct_clicked_items_per_user": float(np.median(distinct)),
        "mean_relevance": float(relevance.mean()),
    }
    _write_truth(
        out,
        relevance=relevance,
        click_probability=click_probability,
        exposure_probability=np.full((n_users, sim.config.n_items), k / sim.config.n_items),
        user_weights=sim.user_weights,
    )
    _write_manifest(
        out,
        kind="noisy_clicks",
        seed=seed,
        params=p,
        sim=sim,
        frame=frame,
        files=files,
        stats=stats,
        logging_policy={
            "name": policy.name,
            "slate_size": k,
            "description": (
                "uniformly random ordered slates of distinct items; every item's propensity at "
                "each position is 1 / n_items"
            ),
        },
        arrays={
            "relevance": (
                "P(click | item shown alone at position 0) from the user's preference, "
                "accidental clicks excluded"
            ),
            "click_probability": (
                "the same with accidental clicks: (1 - click_noise) * relevance + click_noise"
            ),
            "exposure_probability": "P(the item is in the user's slate) = slate_size / n_items",
            "user_weights": "P(a request comes from the user)",
        },
        notes=(
            "a request ends, with probability click_noise, in an accidental click on a uniformly "
            "chosen shown item instead of the user's choice; those rows have noise = true. "
            "Positives are the rows with reward 1.0"
        ),
    )
    return out


# ------------------------------------------------------------------------------------- helpers


def _prepare(out_dir: str | Path, overwrite: bool) -> Path:
    """``out_dir`` ready for a data set: refuses to mix with an existing one unless told."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: expected a directory, got the file {out}")
    ours = [out / "lake" / "rewards", out / "lake" / WORLD_FILE, out / "truth.npz",
            out / "manifest.json"]
    existing = [path for path in ours if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"out_dir: {out} already holds a data set ({existing[0].name}); pass overwrite=True "
            "or choose an empty directory"
        )
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _logs(
    sim: SlateSimulator, policy: FixedPolicy, p: Mapping[str, Any], seed: int
) -> pl.DataFrame:
    """The logged rows with synthetic provenance, in event-time order."""
    rng = np.random.default_rng([seed, 2])  # one stream: requests, slates and clicks
    frame = collect_logs(
        sim,
        policy.set_params(random_state=rng),
        p["n_requests"],
        rng,
        batch_size=_BATCH_SIZE,
        start_time_ms=p["start_time_ms"],
        ms_per_request=p["ms_per_request"],
    )
    return frame.with_columns(
        pl.lit(KAFKA_TOPIC, dtype=pl.String).alias("kafka_topic"),
        pl.lit(0, dtype=pl.Int32).alias("kafka_partition"),
        pl.int_range(frame.height, dtype=pl.Int64).alias("kafka_offset"),
    )


def _file_schema() -> pa.Schema:
    rewards = arrow_schema("rewards")
    extras = [pa.field("score", pa.float64(), nullable=False), pa.field("noise", pa.bool_(), False)]
    return pa.schema([*rewards, *extras], metadata=rewards.metadata)


def _write_lake(out: Path, frame: pl.DataFrame) -> list[str]:
    """One Parquet file per UTC date/hour directory; returns the paths relative to ``out``."""
    schema = _file_schema()
    keyed = frame.with_columns(partition_expressions())
    written = []
    for (event_date, event_hour), piece in keyed.group_by(
        ["event_date", "event_hour"], maintain_order=True
    ):
        offsets = piece["kafka_offset"]
        name = f"{FILE_PREFIX}-{offsets.min():020d}-{offsets.max():020d}.parquet"
        partition = f"event_date={event_date.isoformat()}/event_hour={event_hour}"
        directory = out / "lake" / "rewards" / partition
        directory.mkdir(parents=True, exist_ok=True)
        table = piece.select(schema.names).to_arrow().cast(schema)
        pq.write_table(
            table,
            directory / name,
            compression="zstd",
            use_dictionary=["policy_name", "policy_version", "schema_version", "kafka_topic"],
        )
        written.append((directory / name).relative_to(out).as_posix())
    return written


def _click_stats(frame: pl.DataFrame) -> dict[str, float | int]:
    reward = frame["reward"].to_numpy()
    clicks = int((reward > 0).sum())
    noisy = int(frame["noise"].sum())
    return {
        "n_rows": frame.height,
        "n_requests": frame["request_id"].n_unique(),
        "n_clicks": clicks,
        "ctr": clicks / frame.height,
        "n_noisy_clicks": noisy,
        "noise_share_of_clicks": noisy / clicks if clicks else 0.0,
    }


def _expected_noise_share(sim: SlateSimulator) -> float:
    """P(accidental | click) implied by ``click_noise``: ε over the mean expected clicks of a
    slate (one accidental click per noisy request), the mean taken over users by weight and 20
    uniform slates each (a fixed Monte Carlo draw)."""
    users = np.repeat(np.arange(sim.config.n_users), 20)
    rng = np.random.default_rng(0)
    slates = np.argsort(rng.random((users.size, sim.config.n_items)), axis=1)
    click = sim.expected_clicks(users, slates[:, : sim.config.slate_size])
    weights = sim.user_weights[users]
    return float(sim.config.click_noise / (weights @ click / weights.sum()))


def _gini(counts: np.ndarray) -> float:
    """Gini coefficient of exposure counts: 0 equal exposure, → 1 all on one item."""
    x = np.sort(counts.astype(float))
    n = x.size
    if x.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def _top_share(counts: np.ndarray, fraction: float) -> float:
    top = max(1, round(fraction * counts.size))
    return float(np.sort(counts)[::-1][:top].sum() / counts.sum())


def _write_truth(out: Path, **arrays: np.ndarray) -> None:
    np.savez(
        out / "truth.npz", **{name: np.asarray(a, dtype=np.float64) for name, a in arrays.items()}
    )


def _write_manifest(
    out: Path,
    *,
    kind: str,
    seed: int,
    params: Mapping[str, Any],
    sim: SlateSimulator,
    frame: pl.DataFrame,
    files: list[str],
    stats: Mapping[str, Any],
    logging_policy: Mapping[str, Any],
    arrays: Mapping[str, str],
    notes: str,
) -> None:
    manifest = {
        "kind": kind,
        "seed": seed,
        "params": dict(params),
        "n_users": sim.config.n_users,
        "n_items": sim.config.n_items,
        "n_rows": frame.height,
        "n_requests": params["n_requests"],
        "table": "rewards",
        "lake_root": "lake",
        "world": f"lake/{WORLD_FILE}",
        "files": files,
        "kafka_topic": KAFKA_TOPIC,
        "kafka_partition": 0,
        "id_mapping": (
            "lake user_id is the simulator's integer user id as a string; item_id is the "
            "integer item id; both index the truth.npz arrays"
        ),
        "truth_arrays": dict(arrays),
        "logging_policy": dict(logging_policy),
        "notes": notes,
        "simulator_config": {
            name: getattr(sim.config, name) for name in sim.config.__dataclass_fields__
        },
        "stats": dict(stats),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (out / "manifest.json").write_text(text + "\n")
