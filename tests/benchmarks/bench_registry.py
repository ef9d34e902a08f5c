"""Registry round trip of a large bandit snapshot: register, load, and bytes on disk.

Builds Diag-LinUCB and diagonal Thompson sampling policies on dense statistics over ``--items``
items × ``--dim`` features, logs and registers each in a fresh local mlflow store (sqlite +
artifact folder), and times ``log_policy_model`` (bundle written, copied into the store, input
example validated, version registered and tagged), ``load_policy_model("models:/NAME@champion")``
and ``mlflow.pyfunc.load_model`` + one 5-item slate. Median of ``--repeat`` repetitions.

Usage: python tests/benchmarks/bench_registry.py [--items 1000000] [--dim 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys.bandits import DiagLinTS, DiagLinUCB
from recsys.policies import RequestBatch
from recsys.registry import bandit_model, load_policy_model, log_policy_model


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(cls: type, n_items: int, dim: int, **params: object):
    """A policy with learned statistics over ``n_items`` items (a few events per item)."""
    rng = np.random.default_rng(0)
    policy = cls(**params, random_state=0).init(np.arange(n_items), dim)
    for start in range(0, n_items, 200_000):  # blocks of events keep memory flat
        items = np.arange(start, min(start + 200_000, n_items))
        contexts = rng.standard_normal((items.size, dim))
        policy.learn(contexts, items, (rng.random(items.size) < 0.2).astype(float))
    return policy


def one_round(policy, root: Path, name: str) -> dict[str, float]:
    import mlflow

    model = bandit_model(policy, {"checkpoint_id": "bench", "slate_size": 5})
    start = time.perf_counter()
    with mlflow.start_run():
        info = log_policy_model(model, registered_model_name=name, artifact_name="policy")
    register_s = time.perf_counter() - start
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    start = time.perf_counter()
    loaded = load_policy_model(f"models:/{name}@champion")
    load_s = time.perf_counter() - start
    assert loaded.version == version
    dim = policy.stats_.dim
    batch = RequestBatch.of(["u"], dense=np.zeros((1, dim)))
    start = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    pyfunc.predict(batch.to_pandas(), params={"k": 5})
    pyfunc_s = time.perf_counter() - start
    bundle = next(p for p in root.rglob("arrays.npz") if info.model_id in str(p))
    return {"register_s": register_s, "load_s": load_s, "pyfunc_s": pyfunc_s,
            "bytes": float(directory_bytes(bundle.parent.parent.parent))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k items, 1 repetition")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeat = 100_000, 1
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    policies = {"DiagLinUCB": build(DiagLinUCB, args.items, args.dim, alpha=1.0, epsilon=0.05),
                "DiagLinTS": build(DiagLinTS, args.items, args.dim, n_mc_draws=100)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        experiment = mlflow.create_experiment("bench-registry",
                                              artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment)
        for label, policy in policies.items():
            runs = [one_round(policy, root, f"bench-{label}") for _ in range(args.repeat)]
            rows.append((label, {key: statistics.median(r[key] for r in runs)
                                 for key in runs[0]}))
    print(f"\nregistry round trip: {args.items:,} items x d={args.dim}, median of "
          f"{args.repeat}")
    print(f"{'policy':<12}{'register s':>12}{'load s':>10}{'pyfunc+slate s':>16}{'MB on disk':>12}")
    for label, r in rows:
        print(f"{label:<12}{r['register_s']:>12.2f}{r['load_s']:>10.2f}{r['pyfunc_s']:>16.2f}"
              f"{r['bytes'] / 1e6:>12.1f}")


if __name__ == "__main__":
    main()
