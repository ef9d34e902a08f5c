"""Regret of warm-started vs cold bandits on the simulator, dense vs graph (issue 19, hand-off).

One world per seed serves both sides of the hand-off, the world of ``regret.py``'s "default
world" (50 items, d = 32, 1,000 users, a click rate of a few percent):

1. **Offline.** A logging policy (the ``simulator_exposure`` source: a popularity-skewed
   softmax mixed with 5 % uniform, one-item slates) logs ``--log-requests`` impressions with their
   clicks; a model is trained on them in-process (``offline.training.train_run``, BCE on the
   shown items, early stopping on the validation Brier score): by default a two-tower model on
   the observable user and item features (the ones ``regret.py``'s policies see; no id
   embeddings), or a biased MF on ids (``--model mf``).
2. **Hand-off.** The model's vectors, with its biases folded in (two-tower ``(u, 1)·(v_j, b_j)``,
   MF ``(p_u, 1, b_u)·(q_j, μ + b_j, 1)``, so that their inner product is the model's logit), give
   * the *dense* context of a user (that vector: the embedding plus a constant) and the dense
     prior of an item: the least-squares projection of the model's predicted click probability
     ``σ(score)`` over all users onto those contexts (the offline prediction mapped to the
     reward scale, as a linear reward model can hold it);
   * k-means user clusters and the cluster→item candidate graph (``build_cluster_graph``: the
     top-W items per cluster by centroid score), the context of a user being their nearest
     cluster with weight 1 (``"k1"``: Diag-LinUCB is exact there), and the prior of each edge
     ``warm_start.graph_prior(..., link="sigmoid")``: σ(centroid · item).
3. **Online.** Diag-LinUCB closed-loop in batches of 1,000 (parameters refreshed per batch, as in
   ``regret.py``) for four arms: dense cold, dense warm, graph cold, graph warm. Warm statistics
   come from ``warm_start.warm_dense_stats`` / ``warm_graph_stats`` with strength n0 (the prior
   counts as n0 events); cold ones are empty. Every arm gets a fresh simulator with the same
   seeds: the same users arrive and the same uniform draws decide the clicks. Pseudo-regret is
   measured against the simulator's exact per-user optimum (``SimulatorBanditEnv``).

The exploration knob α is tuned the same way for every arm (``--tune``, on by default): each arm
runs every value of ``ALPHA_GRID`` once on a tuning world that the reported seeds never see (world
seed ``TUNE_SEED``; warm arms at the reported strength) and keeps the value with the least
cumulative regret. ``--no-tune`` uses α = ``DEFAULT_ALPHA`` for every arm.

Printed: the median over seeds of the cumulative regret at the checkpoints for the four arms, a
strength sweep of the warm arms (``--strengths``; n0 = 0 must equal cold), and reference floors
per round: the offline model served greedily, greedy choice on the best linear fit of the truth
on the dense contexts, and the best fixed item per cluster on the graph's edges (where a
converged graph policy flattens). Plot: tests/benchmarks/results/warm_start_regret.png.

Usage: python tests/benchmarks/bench_warm_start.py [--events 50000] [--seeds 0,1,2]
       [--strength 10] [--strengths 0,1,10,100] [--clusters 20] [--top-w 10]
       [--log-requests 50000] [--model two_tower|mf] [--no-tune] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from text_table import print_table  # noqa: E402

from recsys.bandits import ClusterGraph, DiagLinUCB, SoftContexts, build_cluster_graph  # noqa: E402
from recsys.bandits.regret import RegretCurve, run_regret  # noqa: E402
from recsys.bandits.warm_start import (  # noqa: E402
    graph_prior,
    warm_dense_stats,
    warm_graph_stats,
)
from simulators.bandit_env import SimulatorBanditEnv  # noqa: E402
from simulators.ground_truth import item_click_probabilities  # noqa: E402
from simulators.model import SimulatorConfig, SlateSimulator  # noqa: E402

RESULTS = HERE / "results"
BATCH = 1000
WORLD = {"n_items": 50, "dim": 32}  # regret.py's "default world" (SIM_PROBLEMS)
LOGGING = {"n_users": 1000, "no_click_utility": 4.5}  # the same world in the exposure writer
ARMS = ("dense cold", "dense warm", "graph cold", "graph warm")
ALPHA_GRID = (0.03, 0.1, 0.3, 1.0)
DEFAULT_ALPHA = 0.3
TUNE_SEED = 100
POLICY_SEED = 10_000  # every policy's random_state, as in regret.py
LAM = 1.0


@dataclass(frozen=True)
class Handoff:
    """What the offline side hands the online side for one world (indexed by simulator ids)."""

    users: np.ndarray  # [n_users, d'] user vectors with the constant (augmented_embeddings)
    items: np.ndarray  # [n_items, d'] item vectors with the bias: users @ items.T = logits
    dense_prior: np.ndarray  # [n_items, d'] item prior on the reward scale
    graph: ClusterGraph
    edge_prior: np.ndarray  # [n_edges] in the graph's edge order
    cluster_of: np.ndarray  # [n_users] nearest cluster ("k1" context)
    offline_seconds: float
    offline_metrics: dict[str, float]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# ------------------------------------------------------------------------ the offline side
def world_config(seed: int) -> SimulatorConfig:
    """The regret benchmark's default world with world seed ``seed``."""
    return SimulatorConfig(**WORLD, **LOGGING, seed=seed)


def train_offline(seed: int, args: argparse.Namespace, data_dir: Path) -> tuple[Any, Any, dict]:
    """The offline model trained in-process on the logging policy's impressions (the
    simulator_exposure source: shown items with 0/1 clicks, BCE). The two-tower model gets the
    observable user and item features, the ones the logging policy and ``regret.py`` see."""
    from offline.models import build_model
    from offline.sources import prepare
    from offline.spec import Component, TrainSpec
    from offline.training import train_run

    model = {"name": "mf", "dim": 16} if args.model == "mf" else \
        {"name": "two_tower", "dim": 16, "hidden": [32], "use_ids": False}
    spec = TrainSpec.from_table({
        "name": "warm-start-bench", "seeds": [seed], "register": False,
        "data": {"source": "simulator_exposure", "split": "user", "world_seed": seed,
                 "n_requests": args.log_requests, **WORLD, **LOGGING},
        "model": model,
        "objective": {"name": "naive", "pointwise_loss": "bce"},
        "optimizer": {"lr": 0.01, "weight_decay": 1e-4, "batch_size": 2048, "epochs": 30,
                      "patience": 5, "monitor": "valid_mse"},
    })
    # the logs carry no features: load them as for MF, then attach the simulator's observable ones
    mf_spec = dataclasses.replace(spec, model=Component("mf", {"dim": 16}))
    data = prepare(mf_spec, seed, data_dir, "")
    if args.model == "two_tower":
        sim = SlateSimulator(world_config(seed))
        users = np.array([int(u) for u in data.dataset.user_ids])
        items = np.asarray(data.dataset.item_ids, dtype=np.int64)
        data = dataclasses.replace(data, dataset=dataclasses.replace(
            data.dataset, user_features=sim.user_features(users).astype(np.float64),
            item_features=sim.item_features[items].astype(np.float64)))
    result = train_run(spec, seed, data)
    trained = build_model(result.model_name, result.model_config,
                          **({} if args.model == "mf" else {
                              "user_features": data.dataset.user_features,
                              "item_features": data.dataset.item_features}))
    trained.load_state_dict(result.state)
    return trained.eval(), data.dataset, result.metrics


def augmented_embeddings(model: Any, dataset: Any, n_users: int,
                         n_items: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """User and item vectors by simulator id whose inner product is the model's logit: MF
    (p_u, 1, b_u)·(q_j, μ + b_j, 1), two-tower (u, 1)·(v_j, b_j). Users or items absent from
    the logs get the mean user / the mean item."""
    import torch

    with torch.no_grad():
        if hasattr(model, "user_factors"):
            p = model.user_factors.weight.numpy().astype(np.float64)
            bu = model.user_bias.weight.numpy()[:, 0].astype(np.float64)
            q = model.item_factors.weight.numpy().astype(np.float64)
            bi = model.item_bias.weight.numpy()[:, 0].astype(np.float64)
            mu = float(model.global_bias)
            u_rows = np.concatenate([p, np.ones((p.shape[0], 1)), bu[:, None]], axis=1)
            i_rows = np.concatenate([q, (mu + bi)[:, None], np.ones((q.shape[0], 1))], axis=1)
        else:
            u = model.user_vectors().numpy().astype(np.float64)
            v = model.item_vectors().numpy().astype(np.float64)
            bi = model.item_bias.numpy().astype(np.float64)
            u_rows = np.concatenate([u, np.ones((u.shape[0], 1))], axis=1)
            i_rows = np.concatenate([v, bi[:, None]], axis=1)
    users = np.tile(u_rows.mean(axis=0), (n_users, 1))
    items = np.tile(i_rows.mean(axis=0), (n_items, 1))
    sim_users = np.array([int(u) for u in dataset.user_ids])
    sim_items = np.asarray(dataset.item_ids, dtype=np.int64)
    users[sim_users], items[sim_items] = u_rows, i_rows
    return users, items, n_users - sim_users.size, n_items - sim_items.size


def make_handoff(seed: int, args: argparse.Namespace, data_dir: Path) -> Handoff:
    """Train the offline model on world ``seed``'s logs and derive contexts, graph and priors."""
    t0 = time.perf_counter()
    model, dataset, metrics = train_offline(seed, args, data_dir)
    cfg = world_config(seed)
    users, items, missing_u, missing_i = augmented_embeddings(model, dataset, cfg.n_users,
                                                              cfg.n_items)
    if missing_u or missing_i:
        print(f"  [seed {seed}] {missing_u} users and {missing_i} items never logged: mean "
              "embedding", file=sys.stderr)
    predicted = _sigmoid(users @ items.T)  # [n_users, n_items] the model's P(click)
    coef, *_ = np.linalg.lstsq(users, predicted, rcond=None)  # uniform users, as they arrive
    graph = build_cluster_graph(users, items, n_clusters=args.clusters, top_w=args.top_w,
                                random_state=seed, version=f"{args.model}-seed{seed}")
    edge_prior = np.asarray(graph_prior(graph, users, items, link="sigmoid"), dtype=np.float64)
    cluster_of = graph.contexts(users, calibration="k1").clusters[:, 0]
    return Handoff(users, items, coef.T.copy(), graph, edge_prior, cluster_of,
                   time.perf_counter() - t0, metrics)


# ------------------------------------------------------------------------ the online side
class OfflineContextEnv:
    """The simulator seen through the offline model: each request's context is looked up by the
    simulator's user id (dense embedding or nearest cluster); rewards are the simulator's."""

    def __init__(self, env: SimulatorBanditEnv, lookup: Callable[[np.ndarray], Any],
                 dim: int) -> None:
        self.env, self.lookup = env, lookup
        self.n_actions, self.dim = env.n_actions, dim
        self._x: np.ndarray | None = None

    def contexts(self, n: int) -> Any:
        self._x = self.env.contexts(n)
        return self.lookup(self.env.users(self._x))

    def expected_rewards(self, contexts: Any) -> np.ndarray:
        return self.env.expected_rewards(self._x)

    def sample_rewards(self, contexts: Any, actions: np.ndarray) -> np.ndarray:
        return self.env.sample_rewards(self._x, actions)


def run_arm(arm: str, handoff: Handoff, seed: int, events: int, alpha: float,
            strength: float) -> RegretCurve:
    """One arm closed-loop on a fresh copy of world ``seed`` and its request/click stream."""
    n0 = strength if arm.endswith("warm") else 0.0
    env = SimulatorBanditEnv(world_config(seed), seed=seed + 100)
    if arm.startswith("dense"):
        stats = warm_dense_stats(np.arange(env.n_actions), handoff.dense_prior, strength=n0,
                                 lam=LAM)
        users = handoff.users
        wrapped = OfflineContextEnv(env, lambda u: users[u], users.shape[1])
    else:
        stats = warm_graph_stats(handoff.graph, handoff.edge_prior, strength=n0, lam=LAM,
                                 calibration="k1")
        clusters = handoff.cluster_of
        wrapped = OfflineContextEnv(
            env, lambda u: SoftContexts.of(clusters[u][:, None], np.ones((u.size, 1))),
            handoff.graph.n_clusters)
    policy = DiagLinUCB(alpha=alpha, lam=stats.lam, random_state=POLICY_SEED).use(stats)
    return run_regret(policy, wrapped, events, batch_size=BATCH)


def floors(handoff: Handoff, seed: int) -> dict[str, float]:
    """Reference regret per round: the offline model served greedily; greedy on the best linear
    fit of the truth on the dense contexts; the best fixed item per cluster among its edges."""
    env = SimulatorBanditEnv(world_config(seed), seed=seed + 100)
    q = item_click_probabilities(env.sim)  # [n_users, n_items], exact
    w = env.sim.user_weights
    best = q.max(axis=1)
    rows = np.arange(q.shape[0])

    def regret_of(chosen: np.ndarray) -> float:
        return float(w @ (best - q[rows, chosen]))

    x = handoff.users
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(sw * x, sw * q, rcond=None)
    g = handoff.graph
    n_c, n_i = g.n_clusters, q.shape[1]
    on_edge = np.zeros((n_c, n_i), dtype=bool)
    on_edge[g.edge_clusters, np.searchsorted(g.item_ids, g.edge_items)] = True
    mass = np.zeros((n_c, n_i))
    np.add.at(mass, handoff.cluster_of, w[:, None] * q)  # Σ_u∈c w_u q_uj
    per_cluster = np.where(on_edge, mass, -np.inf).argmax(axis=1)
    return {"offline greedy": regret_of(np.argmax(x @ handoff.items.T, axis=1)),
            "dense linear floor": regret_of(np.argmax(x @ coef, axis=1)),
            "graph floor": regret_of(per_cluster[handoff.cluster_of]),
            "optimum": float(w @ best)}


def tune_alphas(args: argparse.Namespace, data_dir: Path) -> dict[str, dict[float, float]]:
    """Cumulative regret of every arm at every α of the grid on the tuning world."""
    handoff = make_handoff(TUNE_SEED, args, data_dir)
    return {arm: {a: run_arm(arm, handoff, TUNE_SEED, args.events, a, args.strength).total
                  for a in ALPHA_GRID} for arm in ARMS}


def experiment(args: argparse.Namespace) -> dict[str, Any]:
    """Tune, then run the four arms and the strength sweep on every seed."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        grid = tune_alphas(args, data_dir) if args.tune else None
        alphas = ({arm: min(values, key=values.get) for arm, values in grid.items()} if grid
                  else dict.fromkeys(ARMS, DEFAULT_ALPHA))
        curves: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
        sweep: dict[str, list[np.ndarray]] = {}
        refs: list[dict[str, float]] = []
        offline: list[dict[str, float]] = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            handoff = make_handoff(seed, args, data_dir)
            offline.append({"seconds": handoff.offline_seconds,
                            "valid_auc": handoff.offline_metrics.get("valid_auc", np.nan),
                            "test_true_recall@20": handoff.offline_metrics.get(
                                "test_true_recall@20", np.nan)})
            refs.append(floors(handoff, seed))
            for arm in ARMS:
                curve = run_arm(arm, handoff, seed, args.events, alphas[arm], args.strength)
                curves[arm].append(curve.cumulative_regret)
            for arm in ("dense warm", "graph warm"):
                for n0 in args.strengths:
                    key = f"{arm} (α={alphas[arm]:g}) n0={n0:g}"
                    if n0 == args.strength:
                        cum = curves[arm][-1]
                    else:
                        cum = run_arm(arm, handoff, seed, args.events, alphas[arm],
                                      n0).cumulative_regret
                    sweep.setdefault(key, []).append(cum)
            print(f"  [seed {seed}] offline {handoff.offline_seconds:.1f}s, online "
                  f"{time.perf_counter() - t0 - handoff.offline_seconds:.1f}s", file=sys.stderr)
    return {"curves": {k: np.median(v, axis=0) for k, v in curves.items()},
            "sweep": {k: np.median(v, axis=0) for k, v in sweep.items()},
            "refs": {k: float(np.median([r[k] for r in refs])) for k in refs[0]},
            "offline": {k: float(np.median([o[k] for o in offline])) for k in offline[0]},
            "alphas": alphas, "grid": grid}


# ------------------------------------------------------------------------ output
def checkpoint_row(name: str, cum: np.ndarray, checkpoints: list[int]) -> list[str]:
    return [name, *(f"{cum[c - 1]:.0f}" for c in checkpoints)]


def plot(out: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """Left: the four arms; right: the warm arms over strengths; dashed: reference floors × t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(1, args.events + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4))
    colours = {"dense": "tab:blue", "graph": "tab:orange"}
    for arm, cum in out["curves"].items():
        left.plot(t, cum, color=colours[arm.split()[0]],
                  linestyle="-" if arm.endswith("warm") else ":", lw=1.8,
                  label=f"{arm} (α={out['alphas'][arm]:g})")
    for name, style in (("offline greedy", "k--"), ("graph floor", "k-."),
                        ("dense linear floor", "k:")):
        left.plot([0, args.events], [0, out["refs"][name] * args.events], style, lw=0.9,
                  label=f"{name} × t")
    left.set_title(f"cold vs warm (n0 = {args.strength:g}), dense vs graph", fontsize=10)
    shades = np.linspace(0.35, 1.0, len(args.strengths))
    for key, cum in out["sweep"].items():
        arm, n0 = key.rsplit(" n0=", 1)
        shade = shades[args.strengths.index(float(n0))]
        cmap = plt.get_cmap("Blues" if arm.startswith("dense") else "Oranges")
        right.plot(t, cum, color=cmap(shade), lw=1.5, label=key)
    right.set_title("warm arms over the prior strength n0 (n0 = 0: cold at the same α)",
                    fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative pseudo-regret (expected clicks lost)")
        ax.set_xlim(0, args.events)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Warm start and the candidate graph: Diag-LinUCB on the simulator, batches of "
                 f"{BATCH:,}, median of {len(args.seeds)} world seed(s); {args.clusters} clusters,"
                 f" top-{args.top_w} items each", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: dict[str, Any], args: argparse.Namespace) -> None:
    checkpoints = [c for c in args.checkpoints if c <= args.events]
    header = ["arm", *(f"{c:,}" for c in checkpoints)]
    print(f"world: simulator default world (50 items, d = 32, 1,000 users), seeds {args.seeds}; "
          f"offline {args.model} (d = 16) on {args.log_requests:,} logged impressions per seed "
          f"(median {out['offline']['seconds']:.1f}s to log and train, valid AUC "
          f"{out['offline']['valid_auc']:.3f}, true recall@20 "
          f"{out['offline']['test_true_recall@20']:.3f})")
    print(f"graph: {args.clusters} k-means clusters, top-{args.top_w} items each, k1 contexts; "
          f"warm strength n0 = {args.strength:g}, λ = {LAM:g}")
    if out["grid"] is None:
        print(f"α fixed at {DEFAULT_ALPHA} for every arm (--no-tune)")
    else:
        print(f"α tuned per arm on world seed {TUNE_SEED} ({args.events:,} rounds), grid "
              f"{ALPHA_GRID}:")
        for arm, values in out["grid"].items():
            cells = ", ".join(f"{a:g}: {r:.0f}" for a, r in values.items())
            print(f"  {arm:11s} -> α = {out['alphas'][arm]:g} (regret per α: {cells})")
    print(f"\ncumulative pseudo-regret at round t (median over {len(args.seeds)} seeds)")
    rows = [checkpoint_row(f"{arm} (α={out['alphas'][arm]:g})", out["curves"][arm], checkpoints)
            for arm in ARMS]
    for name in ("offline greedy", "dense linear floor", "graph floor"):
        rows.append([f"{name} × t (reference)",
                     *(f"{out['refs'][name] * c:.0f}" for c in checkpoints)])
    print_table(rows, header)
    print(f"optimum {out['refs']['optimum']:.4f} clicks/round")
    print(f"\nstrength sweep of the warm arms (n0 = the prior's weight in events; median over "
          f"{len(args.seeds)} seeds); each warm arm keeps its own α, so its n0 = 0 row is a cold "
          "start at that α")
    print_table([checkpoint_row(k, v, checkpoints) for k, v in out["sweep"].items()], header)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def floats(s: str) -> list[float]:
        return [float(v) for v in s.split(",")]

    def ints(s: str) -> list[int]:
        return [int(v) for v in s.split(",")]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--seeds", type=ints, default=[0, 1, 2])
    parser.add_argument("--strength", type=float, default=10.0,
                        help="n0 of the warm arms in the main table")
    parser.add_argument("--strengths", type=floats, default=[0.0, 1.0, 10.0, 100.0],
                        help="the sweep's n0 values (comma-separated)")
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--top-w", type=int, default=10)
    parser.add_argument("--log-requests", type=int, default=50_000)
    parser.add_argument("--model", choices=["mf", "two_tower"], default="two_tower")
    parser.add_argument("--checkpoints", type=ints, default=[1000, 5000, 20_000, 50_000])
    parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 5,000 rounds, one seed, 10,000 logs, no tuning")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.seeds, args.log_requests, args.tune = 5000, [0], 10_000, False
        args.checkpoints = [1000, 2000, 5000]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out = experiment(args)
    report(out, args)
    png = RESULTS / "warm_start_regret.png"
    plot(out, args, png)
    data = {"args": {k: v for k, v in vars(args).items()}, "alphas": out["alphas"],
            "grid": out["grid"], "refs": out["refs"], "offline": out["offline"],
            "checkpoints": {k: {c: float(v[c - 1]) for c in args.checkpoints if c <= args.events}
                            for k, v in {**out["curves"], **out["sweep"]}.items()}}
    (RESULTS / "warm_start_regret.json").write_text(json.dumps(data, indent=1, default=str))
    print(f"plot: {png}  ({time.perf_counter() - t0:.0f}s in all)")


if __name__ == "__main__":
    main()
