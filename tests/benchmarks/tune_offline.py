"""Validation-only hyperparameter selection for an offline config: every grid point is trained on
each seed in-process and ranked by the mean of the config's monitored validation metric; test
metrics and the chosen epochs are printed beside it but never used to choose. The shipped
configs' comments name the grids they were selected from.

Usage: python tests/benchmarks/tune_offline.py CONFIG [--seeds 0,1,2] [KEY=v1,v2 ...]
  CONFIG: a config file (any path with a [train] table) or a shipped name (offline/configs/)
  --seeds: the seeds of every grid point (default 0,1,2,3,4)
  KEY=v1,v2: a grid axis (dotted keys under [train], values as JSON); none: the config as it is
  e.g. python tests/benchmarks/tune_offline.py coat_mf_ips optimizer.l2=60,70,82,95,110
       python tests/benchmarks/tune_offline.py my_data.toml --seeds 0,1 optimizer.lr=0.01,0.05
Prints one line per grid point and a table (tests/benchmarks/text_table.py); the table also goes
to tests/benchmarks/results/tune_offline_<config>.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from offline.prepared import PreparedData
from offline.reproduce import SEEDS, shipped_spec
from offline.sources import prepare
from offline.spec import TrainSpec
from offline.training import train_run
from tests.benchmarks.text_table import print_table

SHOWN = ("test_mae", "test_mse", "test_clipped_share", "test_recall@20", "test_ndcg@20",
         "test_true_recall@20", "train_noisy_share")
RESULTS = Path(__file__).resolve().parent / "results"


def load_spec(config: str) -> TrainSpec:
    """CONFIG as a file path (its ``[train]`` table) when it is one, else a shipped name."""
    path = Path(config)
    if path.is_file():
        with path.open("rb") as handle:
            table = tomllib.load(handle)
        if "train" not in table:
            raise SystemExit(f"{config}: no [train] table")
        return TrainSpec.from_table(table["train"])
    if path.suffix == ".toml" or os.sep in config:
        raise SystemExit(f"{config}: no such file")
    return shipped_spec(config)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a config file path or a shipped config name")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                        help="comma-separated seeds (default %(default)s)")
    parser.add_argument("grid", nargs="*", help="KEY=v1,v2 grid axes (values as JSON)")
    args = parser.parse_intermixed_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.seeds:
        parser.error("--seeds: give at least one seed")
    for axis in args.grid:
        if "=" not in axis:
            parser.error(f"grid axis {axis!r}: expected KEY=v1,v2")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    base = load_spec(args.config)
    grid = {key: [json.loads(v) for v in values.split(",")]
            for key, values in (axis.split("=", 1) for axis in args.grid)}
    monitor, maximise = base.optimizer.monitor, base.optimizer.maximise
    data_dir = Path(os.environ.get("RECSYS_DATA_DIR", ".recsys"))
    cache: dict[tuple[str, int], PreparedData] = {}
    rows = []
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values, strict=True))
        spec = base.with_overrides(overrides)
        valid, test, epochs = [], [], []
        for seed in args.seeds:
            key = (json.dumps([spec.data.name, spec.data.params, spec.propensity.name,
                               spec.propensity.params, spec.clip], sort_keys=True), seed)
            if key not in cache:
                cache[key] = prepare(spec, seed, data_dir, str(data_dir / "lake"))
            metrics = train_run(spec, seed, cache[key]).metrics
            valid.append(metrics[monitor])
            test.append({k: metrics[k] for k in SHOWN if k in metrics})
            epochs.append(int(metrics["best_epoch"]) + 1)
        mean_valid = float(np.mean(valid))
        shown = {k: float(np.median([t[k] for t in test])) for k in test[0]}
        print(f"{overrides or 'config as is'} valid {monitor}={mean_valid:.4f} | "
              + " ".join(f"median {k}={v:.4f}" for k, v in shown.items())
              + f" | epochs {epochs}", flush=True)
        rows.append((mean_valid, overrides, shown, epochs))
    rows.sort(key=lambda row: -row[0] if maximise else row[0])
    header = ["grid point", f"mean {monitor}", *(f"median {k}" for k in rows[0][2]),
              "epochs chosen"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_table([
            [json.dumps(overrides) if overrides else "as is", f"{value:.4f}",
             *(f"{v:.4f}" for v in shown.values()), " ".join(map(str, epochs))]
            for value, overrides, shown, epochs in rows
        ], header)
    table = buffer.getvalue()
    title = (f"{args.config}, seeds {args.seeds}, ranked by validation {monitor} only "
             f"(test columns shown, never used)")
    print(f"\n{title}\n{table}", end="")
    print(f"selected by validation: {rows[0][1] or 'config as is'} ({monitor}={rows[0][0]:.4f})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"tune_offline_{Path(args.config).stem}.txt").write_text(f"{title}\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
