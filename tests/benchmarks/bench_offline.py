"""Offline training cost: a PLD epoch against a plain BPR epoch at the same batch size, on 1 and 2
Ray Train workers (issue target: PLD ≤ 1.3× BPR).

Both objectives train the same MF (dim 64) on the same generated implicit data set (power-law
item popularity, ``--users`` users × ``--per-user`` positives, 20% PLD-protocol noise), with the
same batch size and the same number of steps per epoch (⌈N / batch⌉, split across workers).
An epoch's time is the training loop only (sampling, forward, backward, optimiser, PLD's
no-grad candidate scoring), not validation; each figure is the median over ``--epochs`` epochs
after the first (warm-up). PLD's warm-up epochs (plain BPR) are set to 0 so every timed PLD epoch
does the resampling. Runs go through ``offline.ray_training.run_jobs`` (Ray Train's
TorchTrainer), the way ``recsys train`` runs them.

Usage: python tests/benchmarks/bench_offline.py [--quick] [--users 5000] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import ray

from offline.data import inject_noise, split_per_user
from offline.dataset import Dataset, interactions_frame
from offline.prepared import PreparedData
from offline.ray_training import Job, run_jobs
from offline.spec import TrainSpec

RESULTS = Path(__file__).resolve().parent / "results"


def generated_data(n_users: int, n_items: int, per_user: int, seed: int = 0) -> PreparedData:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    # per_user distinct items per user, drawn with popularity weights (Gumbel top-k, vectorised).
    keys = np.log(popularity / popularity.sum()) + rng.gumbel(size=(n_users, n_items))
    items = np.argpartition(-keys, per_user - 1, axis=1)[:, :per_user]
    users = np.repeat(np.arange(n_users), per_user)
    frame = interactions_frame(users, items.ravel())
    train, valid, test = split_per_user(frame, (0.7, 0.1, 0.2), seed)
    train = inject_noise(train, frame, n_items, 0.2, seed)
    return PreparedData(Dataset("bench", "implicit", n_users, n_items, train, valid, test))


def spec(objective: str, epochs: int, batch_size: int) -> TrainSpec:
    params = {"warmup_epochs": 0} if objective == "pld" else {}
    return TrainSpec.from_table({
        "name": f"bench-{objective}",
        "data": {"source": "generated"},
        "model": {"name": "mf", "dim": 64},
        "objective": {"name": objective, **params},
        "optimizer": {"lr": 1e-3, "batch_size": batch_size, "epochs": epochs, "patience": 0,
                      "monitor": "valid_recall@20", "eval_every": epochs},
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--per-user", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--quick", action="store_true", help="small data, 3 epochs")
    args = parser.parse_args()
    if args.quick:
        args.users, args.items, args.epochs = 1000, 1000, 3
    data = generated_data(args.users, args.items, args.per_user)
    n_train = data.dataset.train.height
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    rows = []
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            jobs = [Job(spec(name, args.epochs, args.batch_size), 0, "bench")
                    for name in ("bpr", "pld")]
            with tempfile.TemporaryDirectory() as storage:
                results = run_jobs(jobs, {"bench": data}, storage_path=storage,
                                   name=f"bench-{workers}", num_workers=workers,
                                   progress=False)
            times = {}
            for job, result in zip(jobs, results, strict=True):
                epochs = [row["epoch_seconds"] for row in result.history][1:]
                times[job.spec.objective.name] = statistics.median(epochs)
            rows.append({"workers": workers, "bpr_s": times["bpr"], "pld_s": times["pld"],
                         "ratio": times["pld"] / times["bpr"]})
    finally:
        ray.shutdown()
    print(f"\nMF dim 64, {args.users} users × {args.items} items, {n_train} train interactions "
          f"(20% noise), batch {args.batch_size}, {-(-n_train // args.batch_size)} steps/epoch; "
          f"median of {args.epochs - 1} epochs after the first")
    print(f"{'workers':>7} | {'BPR epoch (s)':>13} | {'PLD epoch (s)':>13} | {'PLD / BPR':>9} | "
          "target ≤ 1.3")
    for row in rows:
        verdict = "met" if row["ratio"] <= 1.3 else "MISSED"
        print(f"{row['workers']:>7} | {row['bpr_s']:>13.3f} | {row['pld_s']:>13.3f} | "
              f"{row['ratio']:>9.2f} | {verdict}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "offline_epoch.json").write_text(json.dumps(
        {"args": vars(args), "n_train": n_train, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
