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
    from offline.export_online import ExportResult, Previous
    from offline.runner import TrainedRun
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
    parser.add_argument("--export-online", metavar="DIR", default=None,
                        help="write the bandits' hand-off of the registered model (else the "
                        "first seed's) to DIR: user clusters, the cluster→item graph with its "
                        "warm-start prior (stream.graph_file) and the serving user table; "
                        "recsys export-online takes the options")


def register_export_online(subparsers: argparse._SubParsersAction) -> None:
    from offline.export_online import ExportOptions

    defaults = ExportOptions()
    parser = add_command(
        subparsers, "export-online", run_export_online,
        help="write a registered offline model's hand-off to the bandits (clusters, graph, "
        "warm-start prior, serving user table)",
        description="From a registered two-tower or MF model: k-means user clusters with soft "
        "memberships (written into the serving user table), the cluster→item candidate graph "
        "(top-N items per cluster by the offline score) carrying the warm-start prior, for "
        "stream.graph_file, and online.toml naming the settings. Example: recsys "
        "export-online --model models:/two-tower-coat-bpr/1 --out .recsys/online",
    )
    parser.add_argument("--model", required=True, metavar="URI",
                        help="the model: models:/NAME/VERSION, runs:/RUN/model or a path")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")
    parser.add_argument("--clusters", type=int, default=defaults.n_clusters,
                        help=f"k-means clusters (default {defaults.n_clusters})")
    parser.add_argument("--top-n", type=int, default=defaults.top_n,
                        help=f"items per cluster in the graph (default {defaults.top_n})")
    parser.add_argument("--top-k", type=int, default=defaults.top_k,
                        help="clusters per user context with --calibration normalised "
                        f"(default {defaults.top_k})")
    parser.add_argument("--calibration", choices=("k1", "normalised"),
                        default=defaults.calibration,
                        help="k1: the nearest cluster, weight 1 (default); normalised: top-K "
                        "softmax weights summing to one")
    parser.add_argument("--strength", type=float, default=defaults.strength, metavar="N0",
                        help="the prior counts as N0 events per edge; 0: cold start "
                        f"(default {defaults.strength:g})")
    parser.add_argument("--link", choices=("sigmoid", "identity"), default=defaults.link,
                        help="offline score to reward scale (default sigmoid: click logits)")
    parser.add_argument("--previous-graph", type=Path, default=None, metavar="OLD.npz",
                        help="migrate online statistics from this graph's clusters")
    parser.add_argument("--previous-users", type=Path, default=None,
                        metavar="OLD_USERS.parquet",
                        help="the previous hand-off's user table (old embeddings)")
    parser.add_argument("--previous-stats", type=Path, default=None, metavar="SNAPSHOT.npz",
                        help="graph statistics on the previous graph (a snapshot file)")
    parser.add_argument("--migrate", choices=("move", "reset"), default="move",
                        help="move evidence to the new clusters (default) or reset to the "
                        "new prior")


def _previous(args: argparse.Namespace) -> Previous | None:
    """The migration source of ``--previous-*``, or None."""
    from offline.export_online import Previous

    graph, users = getattr(args, "previous_graph", None), getattr(args, "previous_users", None)
    if graph is None and users is None and getattr(args, "previous_stats", None) is None:
        return None
    if graph is None or users is None:
        raise CommandError("--previous-graph and --previous-users go together (the old "
                           "clusters and the old user embeddings)")
    return Previous(graph, users, args.previous_stats, args.migrate)


def run_export_online(args: argparse.Namespace) -> int:
    from offline.export_online import ExportOptions, export_online
    from offline.registry import load_id_maps, load_torch_model

    settings: Settings = args.settings
    options = ExportOptions(n_clusters=args.clusters, top_n=args.top_n, top_k=args.top_k,
                            calibration=args.calibration, strength=args.strength,
                            link=args.link)
    previous = _previous(args)
    _start(settings)
    try:
        model = load_torch_model(args.model)
        ids = load_id_maps(args.model)
    except Exception as exc:  # mlflow's errors for an unknown name, version or run
        if isinstance(exc, CommandError):
            raise
        raise CommandError(f"--model {args.model}: cannot load it ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); give "
                           "models:/NAME/VERSION of a registered offline model (recsys "
                           "models list)") from None
    print(f"export-online: {args.model} -> {args.out}")
    try:
        result = export_online(model, [str(u) for u in ids.user_ids], ids.item_ids, args.out,
                               options, model_uri=args.model, previous=previous)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    _print_online(result)
    return 0


def _print_online(result: ExportResult) -> None:
    files = result.files
    print(f"point the stream and the serving app at them ({result.out_dir}/online.toml):"
          f"\n  stream.layout = graph, stream.graph_file = {files['graph']}"
          f"\n  serve.user_features_uri = {files['users']}")


def _export_trained_online(runs: list[TrainedRun], directory: str) -> None:
    """``--export-online``: the hand-off of the registered run (else the first)."""
    from offline.export_online import ExportOptions, export_online
    from offline.registry import IdMaps
    from offline.run_tracking import rebuild_model

    run = next((r for r in runs if r.registered), runs[0])
    ids = IdMaps.of(run.data.dataset)
    uri = run.registered or f"runs:/{run.mlflow['run_id']}"
    options = ExportOptions().fitted(len(ids.user_ids), len(ids.item_ids))
    print(f"export-online (seed {run.result.seed}, {uri}) -> {directory}")
    try:
        result = export_online(rebuild_model(run.result, run.data),
                               [str(u) for u in ids.user_ids], ids.item_ids, directory,
                               options, model_uri=uri)
    except ValueError as exc:
        raise CommandError(f"--export-online: {exc}") from None
    _print_online(result)


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
    online = args.export_online or spec.export_online
    if online:
        _export_trained_online(runs, online)
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

