"""Validation-only hyperparameter selection for a shipped offline config: every grid point is
trained on 5 seeds in-process and ranked by the mean of the config's monitored validation metric;
test metrics are printed beside it but never used to choose. The shipped configs' comments name
the grids they were selected from.

Usage: python tests/benchmarks/tune_offline.py CONFIG KEY=v1,v2 [KEY=...]
  e.g. python tests/benchmarks/tune_offline.py coat_mf_ips optimizer.l2=60,70,82,95,110
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from offline.prepared import PreparedData
from offline.reproduce import SEEDS, shipped_spec
from offline.sources import prepare
from offline.training import train_run

SHOWN = ("test_mae", "test_mse", "test_recall@20", "test_ndcg@20", "test_true_recall@20",
         "train_noisy_share")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    base = shipped_spec(argv[0])
    grid = {key: [json.loads(v) for v in values.split(",")]
            for key, values in (arg.split("=", 1) for arg in argv[1:])}
    monitor, maximise = base.optimizer.monitor, base.optimizer.maximise
    data_dir = Path(os.environ.get("RECSYS_DATA_DIR", ".recsys"))
    cache: dict[tuple[str, int], PreparedData] = {}
    rows = []
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values, strict=True))
        spec = base.with_overrides(overrides)
        valid, test = [], []
        for seed in SEEDS:
            key = (json.dumps([spec.data.params, spec.propensity.params], sort_keys=True), seed)
            if key not in cache:
                cache[key] = prepare(spec, seed, data_dir, str(data_dir / "lake"))
            metrics = train_run(spec, seed, cache[key]).metrics
            valid.append(metrics[monitor])
            test.append({k: metrics[k] for k in SHOWN if k in metrics})
        mean_valid = float(np.mean(valid))
        shown = " ".join(f"{k}={np.mean([t[k] for t in test]):.4f}" for k in test[0])
        print(f"{overrides} valid {monitor}={mean_valid:.4f} | {shown}", flush=True)
        rows.append((mean_valid, overrides))
    rows.sort(key=lambda row: -row[0] if maximise else row[0])
    print(f"selected by validation: {rows[0][1]} ({monitor}={rows[0][0]:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
