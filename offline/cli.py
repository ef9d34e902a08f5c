"""``recsys train`` and ``recsys reproduce``: the offline pipeline's commands."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from recsys.config import Settings

EXPERIMENT_NAMES = ("coat", "denoise", "simulator")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        message = f"seeds: integers separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("ray", "local"), default="ray",
                        help="ray: Ray Train's TorchTrainer (default); local: in this process")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="Ray Train workers (default: the config's num_workers, else 1)")
    parser.add_argument("--seeds", type=_seeds, default=None, metavar="0,1,...",
                        help="override the seeds")
    parser.add_argument("--no-models", action="store_true",
                        help="log metrics and plots but not the models (faster)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an offline model from a config file's [train] table (offline/configs/)",
        description="Train the model a config file's [train] table describes, on Ray Train, and "
        "log every seed's run and model to mlflow. Example: recsys train --config "
        "offline/configs/coat_mf_ips.toml",
    )
    _common(parser)
    parser.add_argument("--export-user-features", metavar="PATH", default=None,
                        help="write the first seed's user embeddings as the serving app's "
                        "user-feature table (Parquet)")
    parser.set_defaults(func=run_train)


def register_reproduce(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the debiasing and denoising experiments (mean ± std over seeds)",
        description="Run the papers' experiments on the shipped configs, print mean ± std over "
        "seeds, check the targets, write a JSON results file and log everything to mlflow.",
    )
    parser.add_argument("experiment", choices=(*EXPERIMENT_NAMES, "all"))
    _common(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default <data_dir>/reproduce/<experiment>.json)")
    parser.set_defaults(func=run_reproduce)


def _start(settings: Settings) -> str:
    """Configure mlflow, keeping its per-model chatter (artifact download bars, registry
    notices) out of the progress bar and the tables."""
    from recsys.tracking import configure_mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "mlflow.pyfunc", "mlflow.tracking", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return configure_mlflow(settings)


def run_train(args: argparse.Namespace) -> int:
    from offline.runner import export_user_table, summarise, train_specs
    from offline.spec import SpecError, TrainSpec
    from recsys.ray_runtime import ray_runtime

    settings: Settings = args.settings
    table = settings.tables.get("train")
    if table is None:
        where = settings.config_file or "no config file"
        print(f"recsys train: {where} has no [train] table; pass --config FILE with one "
              "(examples in offline/configs/)", file=sys.stderr)
        return 2
    try:
        spec = TrainSpec.from_table(table)
        if args.seeds:
            spec = spec.with_overrides({"seeds": list(args.seeds)})
    except SpecError as exc:
        print(f"recsys train: {settings.config_file}: {exc}", file=sys.stderr)
        return 2
    _start(settings)
    started = time.perf_counter()
    try:
        if args.backend == "ray":
            with ray_runtime(settings) as origin:
                print(f"ray: {origin}; {args.num_workers or spec.num_workers} Ray Train worker(s)")
                runs = train_specs([spec], settings, name=spec.name, backend="ray",
                                   num_workers=args.num_workers, progress=not args.quiet,
                                   log_models=not args.no_models)
        else:
            runs = train_specs([spec], settings, name=spec.name, backend="local",
                               log_models=not args.no_models)
    except (SpecError, ValueError, FileNotFoundError) as exc:
        print(f"recsys train: {exc}", file=sys.stderr)
        return 2
    shown = ("test_mae", "test_mse", "test_auc", "test_recall@20", "test_ndcg@20",
             "test_true_recall@20", "train_noisy_share")
    metrics = [k for k in shown if any(k in run.result.metrics for run in runs)]
    print(f"\n{spec.name}: {len(runs)} run(s) in {time.perf_counter() - started:.0f} s")
    for run in runs:
        values = ", ".join(f"{k}={run.result.metrics[k]:.4f}" for k in metrics
                           if k in run.result.metrics)
        print(f"  seed {run.result.seed}: best epoch {run.result.best_epoch}: {values}")
        print(f"    mlflow run {run.mlflow['run_id']}  model {run.mlflow['model_uri']}")
    if len(runs) > 1:
        for k in metrics:
            stats = summarise([run.result.metrics[k] for run in runs if k in run.result.metrics])
            print(f"  {k}: {stats['mean']:.4f} ± {stats['std']:.4f}")
    export = args.export_user_features or spec.export_user_features
    if export:
        path = export_user_table(runs[0], export)
        print(f"user-feature table (seed {runs[0].result.seed}): {path} "
              "(serve.user_features_uri)")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from offline.reproduce import EXPERIMENTS, SEEDS, format_table, run_experiment, write_results
    from recsys.ray_runtime import ray_runtime

    settings: Settings = args.settings
    names = EXPERIMENT_NAMES if args.experiment == "all" else (args.experiment,)
    out = args.out or settings.data_dir / "reproduce" / f"{args.experiment}.json"
    _start(settings)
    started = time.perf_counter()
    results: dict = {"experiments": {}}
    with ray_runtime(settings) if args.backend == "ray" else contextlib.nullcontext():
        for name in names:
            result = run_experiment(EXPERIMENTS[name], settings, seeds=args.seeds or SEEDS,
                                    backend=args.backend, num_workers=args.num_workers,
                                    progress=not args.quiet, log_models=not args.no_models)
            results["experiments"][name] = result
            print("\n" + format_table(EXPERIMENTS[name], result) + "\n", flush=True)
            write_results(results, out)
    results["seconds"] = time.perf_counter() - started
    write_results(results, out)
    targets = [t for r in results["experiments"].values() for t in r["targets"]]
    passed = sum(t["passed"] for t in targets)
    print(f"{passed}/{len(targets)} targets reached in {results['seconds'] / 60:.1f} min; "
          f"results: {out}")
    return 0

