"""``recsys train`` and ``recsys reproduce``: the offline pipeline's commands.

Both validate everything and prepare the data before Ray starts, so a typo in a config or a
missing data file is one line (exit status 2) within seconds, not a Ray traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.commands import CommandError, add_command
from recsys.config import Settings

if TYPE_CHECKING:
    from offline.spec import TrainSpec

EXPERIMENT_NAMES = ("coat", "denoise", "simulator")
TRAIN_EXAMPLE = "recsys train --config offline/configs/coat_mf_ips.toml"


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
    parser = add_command(
        subparsers, "train", run_train,
        help="train an offline model from a config file's [train] table (offline/configs/)",
        description="Train the model a config file's [train] table describes, on Ray Train, "
        "log every seed's run and model to mlflow, and register one model version: the seed "
        "with the best monitored validation metric (or --register-seed). Example: "
        f"{TRAIN_EXAMPLE}",
    )
    _common(parser)
    parser.add_argument("--register-seed", type=int, default=None, metavar="SEED",
                        help="register this seed's model (default: the seed with the best "
                        "monitored validation metric); the other seeds stay unregistered runs")
    parser.add_argument("--policy-model", metavar="NAME", default=None,
                        help="registered model name of the policy form (default: the config's "
                        "[train.policy] registered_model, else <name>-policy)")
    parser.add_argument("--export-user-features", metavar="PATH", default=None,
                        help="write the first seed's user embeddings as the serving app's "
                        "user-feature table (Parquet)")


def register_reproduce(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "reproduce", run_reproduce,
        help="reproduce the debiasing and denoising experiments (mean ± std over seeds)",
        description="Run the papers' experiments on the shipped configs, print mean ± std over "
        "seeds, check the targets, write a JSON results file and log everything to mlflow.",
    )
    parser.add_argument("experiment", choices=(*EXPERIMENT_NAMES, "all"))
    _common(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default <data_dir>/reproduce/<experiment>.json)")


def _start(settings: Settings) -> str:
    """Configure mlflow, keeping its per-model chatter (artifact download bars, registry
    notices) out of the progress bar and the tables."""
    from recsys.tracking import configure_mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "mlflow.pyfunc", "mlflow.tracking", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return configure_mlflow(settings)


def train_spec(settings: Settings, seeds: tuple[int, ...] | None = None,
               policy_model: str | None = None) -> TrainSpec:
    """The config file's ``[train]`` specification, validated (with ``seeds`` and the policy
    form's registered model name if given)."""
    from offline.spec import SpecError, TrainSpec

    table = settings.tables.get("train")
    if table is None:
        if settings.config_file is None:
            raise CommandError("needs a config file with a [train] table: pass --config FILE, "
                               f"e.g. {TRAIN_EXAMPLE} (more in offline/configs/)")
        raise CommandError(f"{settings.config_file} has no [train] table; pass --config FILE "
                           f"with one, e.g. {TRAIN_EXAMPLE}")
    try:
        spec = TrainSpec.from_table(table)
        overrides: dict[str, object] = {"seeds": list(seeds)} if seeds else {}
        if policy_model is not None:
            overrides["policy.registered_model"] = policy_model
        return spec.with_overrides(overrides) if overrides else spec
    except SpecError as exc:
        raise CommandError(f"{settings.config_file}: {exc}") from None


@contextlib.contextmanager
def _data_errors() -> Iterator[None]:
    """Preparing data: a missing or malformed data file, or a parameter no data source takes,
    is a CommandError."""
    from offline.spec import SpecError

    try:
        yield
    except (SpecError, ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None


def run_train(args: argparse.Namespace) -> int:
    from offline.runner import export_user_table, prepare_jobs, summarise, train_jobs
    from recsys.ray_runtime import ray_runtime

    settings: Settings = args.settings
    spec = train_spec(settings, args.seeds, args.policy_model)
    if args.register_seed is not None and args.register_seed not in spec.seeds:
        raise CommandError(f"--register-seed: expected one of the trained seeds "
                           f"({', '.join(map(str, spec.seeds))}), got {args.register_seed}")
    started = time.perf_counter()
    with _data_errors():
        prepared = prepare_jobs([spec], settings)
    _start(settings)
    if args.backend == "ray":
        with ray_runtime(settings) as origin:
            print(f"ray: {origin}; {args.num_workers or spec.num_workers} Ray Train worker(s)")
            runs = train_jobs(prepared, settings, name=spec.name, backend="ray",
                              num_workers=args.num_workers, progress=not args.quiet,
                              log_models=not args.no_models, register_seed=args.register_seed)
    else:
        runs = train_jobs(prepared, settings, name=spec.name, backend="local",
                          log_models=not args.no_models, register_seed=args.register_seed)
    shown = ("test_mae", "test_mse", "test_auc", "test_recall@20", "test_ndcg@20",
             "test_true_recall@20", "train_noisy_share")
    metrics = [k for k in shown if any(k in run.result.metrics for run in runs)]
    print(f"\n{spec.name}: {len(runs)} run(s) in {time.perf_counter() - started:.0f} s")
    for run in runs:
        values = ", ".join(f"{k}={run.result.metrics[k]:.4f}" for k in metrics
                           if k in run.result.metrics)
        print(f"  seed {run.result.seed}: best epoch {run.result.best_epoch}: {values}")
        model = run.mlflow["model_uri"] or "not logged (--no-models)"
        print(f"    mlflow run {run.mlflow['run_id']}  model {model}")
    if len(runs) > 1:
        for k in metrics:
            stats = summarise([run.result.metrics[k] for run in runs if k in run.result.metrics])
            print(f"  {k}: {stats['mean']:.4f} ± {stats['std']:.4f}")
    for run in runs:
        if run.registered:
            print(f"registered: {run.registered} (seed {run.result.seed}; "
                  f"{run.selection})")
        if run.policy:
            print(f"policy form: {run.policy} ({spec.policy.exploration})")
    export = args.export_user_features or spec.export_user_features
    if export:
        path = export_user_table(runs[0], export)
        print(f"user-feature table (seed {runs[0].result.seed}): {path} "
              "(serve.user_features_uri)")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from offline.reproduce import (
        EXPERIMENTS,
        SEEDS,
        format_table,
        prepare_experiment,
        run_experiment,
        write_results,
    )
    from recsys.ray_runtime import ray_runtime

    settings: Settings = args.settings
    names = EXPERIMENT_NAMES if args.experiment == "all" else (args.experiment,)
    out = args.out or settings.data_dir / "reproduce" / f"{args.experiment}.json"
    started = time.perf_counter()
    results: dict = {"experiments": {}}
    for name in names:
        with _data_errors():  # one experiment's data at a time, prepared before Ray starts
            prepared = prepare_experiment(EXPERIMENTS[name], settings, args.seeds or SEEDS)
        _start(settings)
        with ray_runtime(settings) if args.backend == "ray" else contextlib.nullcontext():
            result = run_experiment(prepared, settings, backend=args.backend,
                                    num_workers=args.num_workers, progress=not args.quiet,
                                    log_models=not args.no_models)
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

