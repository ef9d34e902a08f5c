"""Naive BCE vs Rel-MF IPS vs doubly robust clicks on the simulator's exposure-skewed log, scored
against the true relevance (issue 19, deliverable 4).

Every method gets the same grid (default: ``optimizer.lr`` over three values) and the same seeds;
each grid point trains every seed in-process (``offline.training.train_run``, the shipped config's
own early stopping), and the point a method keeps is the one with the best median of the
validation metric its config monitors (``valid_ndcg@20`` on held-out clicks for BCE and Rel-IPS,
the only signal click data gives; ``valid_snips_mse`` of the click probability on held-out
exposures for DR: the held-out clicks are themselves exposure-biased, so their NDCG rewards
learning exposure and would pick against debiasing; it is shown as ``clicks_ndcg@20``).
All methods are scored by ONE evaluator, the clicks data set's
(``simulator_exposure_clicks``, same world, split and seed): the truth's Recall@K and mean true
relevance of the top K with each user's training and validation clicks masked, as ``recsys
train`` scores BCE and Rel-IPS (DR trains on the shown items, whose own evaluation masks nothing;
``true_recall@20_all`` is the unmasked figure). Test figures never choose anything. Medians over
the seeds.

Usage: python tests/benchmarks/bench_dr_clicks.py [--seeds 0,1,2] [--grid optimizer.lr=a,b,c]
                                                   [METHOD ...]
  METHOD is a shipped config, optionally with overrides: simulator_clicks_dr+objective.ratio=8
  (default: simulator_clicks_bce simulator_clicks_rel_ips simulator_clicks_dr). The ablation
  "naive BCE on the shown items" (the exposure log without DR's correction, same budget) is the
  one argument simulator_exposure_naive+optimizer.batch_size=1024+optimizer.epochs=60
  +optimizer.patience=10+optimizer.monitor=valid_snips_mse+model.global_bias=0.0 (no spaces)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
from text_table import print_table

from offline.evaluation import evaluate, score_matrix
from offline.models import build_model
from offline.prepared import PreparedData
from offline.reproduce import shipped_spec
from offline.sources import prepare
from offline.spec import Component, TrainSpec
from offline.training import train_run
from recsys.ranking import relevance_recall

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("simulator_clicks_bce", "simulator_clicks_rel_ips", "simulator_clicks_dr")
EVALUATOR = "simulator_exposure_clicks"
SHOWN = ("clicks_ndcg@20", "test_true_recall@20", "test_true_relevance@20",
         "test_true_recall@50", "true_recall@20_all")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_method(text: str) -> tuple[str, TrainSpec]:
    """``CONFIG[+KEY=VALUE...]`` → (label, spec)."""
    config, *sets = text.split("+")
    overrides = {key: _value(value) for key, value in (s.split("=", 1) for s in sets)}
    spec = shipped_spec(config)
    return text, spec.with_overrides(overrides) if overrides else spec


def evaluation_spec(spec: TrainSpec) -> TrainSpec:
    """The clicks data set of the same simulated world and split as ``spec``'s data."""
    return dataclasses.replace(spec, data=Component(EVALUATOR, dict(spec.data.params)),
                               propensity=Component("none"), clip=0.0)


def common_metrics(result: Any, clicks: PreparedData) -> dict[str, float]:
    """The trained model scored on the clicks data set (one evaluator for every method)."""
    model = build_model(result.model_name, dict(result.model_config))
    model.load_state_dict(result.state)
    model.eval()
    out = {**evaluate(model, clicks, "valid"), **evaluate(model, clicks, "test")}
    truth = clicks.dataset.true_relevance
    out["clicks_ndcg@20"] = out["valid_ndcg@20"]
    out["true_recall@20_all"] = relevance_recall(score_matrix(model, clicks.dataset.n_users),
                                                 truth, None, 20)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", default=list(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--grid", default="optimizer.lr=0.001,0.003,0.01")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    grid_key, grid_values = args.grid.split("=", 1)
    grid = [_value(v) for v in grid_values.split(",")]
    data_dir = Path(os.environ.get("RECSYS_DATA_DIR", ".recsys"))
    cache: dict[str, PreparedData] = {}

    def prepared(spec: TrainSpec, seed: int) -> PreparedData:
        key = json.dumps([spec.data.name, spec.data.params, spec.propensity.name,
                          spec.propensity.params, spec.clip, seed], sort_keys=True)
        if key not in cache:
            cache[key] = prepare(spec, seed, data_dir, str(data_dir / "lake"))
        return cache[key]

    methods = [parse_method(m) for m in args.methods]
    records = []
    for (label, base), value in itertools.product(methods, grid):
        spec = base.with_overrides({grid_key: value})
        for seed in seeds:
            started = time.perf_counter()
            result = train_run(spec, seed, prepared(spec, seed))
            metrics = common_metrics(result, prepared(evaluation_spec(spec), seed))
            monitor = spec.optimizer.monitor
            records.append({"method": label, grid_key: value, "seed": seed,
                            "monitor": monitor, "selection": result.metrics[monitor],
                            "best_epoch": result.best_epoch,
                            "seconds": time.perf_counter() - started,
                            **{k: metrics[k] for k in SHOWN}})
            print(f"{label} {grid_key}={value} seed {seed}: {monitor}="
                  f"{result.metrics[monitor]:.4f} "
                  f"test_true_recall@20={metrics['test_true_recall@20']:.4f} "
                  f"({records[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)

    def median(rows: list[dict[str, Any]], key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    table, chosen = [], {}
    for label, spec in methods:
        points = {v: [r for r in records if r["method"] == label and r[grid_key] == v]
                  for v in grid}
        sign = 1.0 if spec.optimizer.maximise else -1.0
        best = max(grid, key=lambda v: sign * median(points[v], "selection"))
        rows = points[best]
        chosen[label] = best
        table.append([label, f"{best:g}" if isinstance(best, float) else str(best),
                      f"{spec.optimizer.monitor}={median(rows, 'selection'):.4f}",
                      *(f"{median(rows, k):.4f}" for k in SHOWN),
                      f"{median(rows, 'best_epoch'):.0f}"])
    print(f"medians over seeds {seeds}; {grid_key} chosen by the median of each config's "
          "monitored validation metric; the other columns come from one evaluator (the clicks "
          "data set) for every method; truth metrics mask training clicks except "
          "true_recall@20_all")
    print_table(table, ["method", grid_key, "selected on", *SHOWN, "best_epoch"])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "dr_clicks.json"
    out.write_text(json.dumps({"seeds": seeds, "grid": {grid_key: grid}, "chosen": chosen,
                               "records": records}, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
