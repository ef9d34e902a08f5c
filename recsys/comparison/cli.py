"""``recsys compare``: every candidate on the same logs, with intervals, in one mlflow run.

Candidates are ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a built-in (``uniform``,
``popularity``, ``logging``; ``recsys.comparison.candidates``). Logs come from the lake
(``--logs lake``: ``stream.lake_uri``, or a lake root directory) in a time range, or from one
Parquet file. ``--search`` ranks bandit configurations by replaying them through the logs
(``recsys.comparison.search``); ``--register-best NAME`` registers the best one's learned policy.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from recsys.commands import CommandError, add_command
from recsys.comparison.candidates import CandidateError
from recsys.comparison.estimates import ESTIMATORS
from recsys.comparison.logs import PROPENSITY_CHOICES
from recsys.validation import did_you_mean, message

DEFAULT_ESTIMATORS = "ips,snips,dr"
"""What the table shows unless ``--estimators`` says otherwise (plus the primary estimator)."""


def parse_time(text: str | None, flag: str) -> int | None:
    """Epoch milliseconds from ``text``: an integer (ms) or an ISO time (UTC unless it says)."""
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(message(flag, "epoch milliseconds or an ISO time "
                                   "(2026-01-31T12:00:00Z)", repr(text))) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_estimators(text: str | None, default: str) -> list[str]:
    """``ips,snips,dr`` → names, each checked (with the closest name when misspelt)."""
    names = [n.strip().lower() for n in (text or default).split(",") if n.strip()]
    for name in names:
        if name not in ESTIMATORS:
            raise CommandError(message("--estimators", f"names among {', '.join(ESTIMATORS)}",
                                       repr(name), did_you_mean(name, ESTIMATORS)))
    if not names:
        raise CommandError(message("--estimators", "at least one estimator", repr(text)))
    return list(dict.fromkeys(names))


def add_logs_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--logs``, ``--start``, ``--end``: where the evaluation logs are."""
    parser.add_argument("--logs", required=required, metavar="PATH|lake",
                        help="'lake' (stream.lake_uri), a lake root directory or a Parquet "
                             "file of logged rewards")
    parser.add_argument("--start", default=None, metavar="ISO|MS",
                        help="evaluate rows at or after this time (popularity is fitted on "
                             "the rows before it)")
    parser.add_argument("--end", default=None, metavar="ISO|MS",
                        help="evaluate rows before this time")
    parser.add_argument("--propensities", choices=PROPENSITY_CHOICES, default="exact",
                        help="exact (default): leave out requests logged with Monte Carlo "
                             "propensity estimates (Thompson sampling's), which overweight "
                             "rarely shown items; all: keep them")


def _is_parquet(path: str) -> bool:
    return path.endswith(".parquet") or (Path(path).is_file())


def _source(args: argparse.Namespace) -> tuple[str, str]:
    logs = args.logs
    if logs is None:
        raise CommandError(message("--logs", "'lake', a lake root or a Parquet file", "nothing"))
    if logs == "lake":
        return "lake", args.settings.lake_uri
    return ("parquet" if _is_parquet(logs) else "lake"), logs


def _range(args: argparse.Namespace) -> tuple[int | None, int | None]:
    start, end = parse_time(args.start, "--start"), parse_time(args.end, "--end")
    if start is not None and end is not None and end <= start:
        raise CommandError(message("--end", f"a time after --start ({start})", end))
    return start, end


def logs_from_args(args: argparse.Namespace) -> Any:
    """The evaluation logs ``--logs``/``--start``/``--end`` name (a ``LoggedSlates``)."""
    from recsys.comparison.logs import LoggedSlates, read_world
    from recsys.storage import resolve

    kind, path = _source(args)
    start, end = _range(args)
    try:
        if kind == "lake":
            return LoggedSlates.from_lake(path, start, end, propensities=args.propensities)
        if start is None and end is None:
            return LoggedSlates.from_parquet(path, propensities=args.propensities)
        frame = _parquet_rows(path, start, end)
        if frame.height == 0:
            raise CommandError(message("logs", f"rows in [{start}, {end}) of {path}", "none",
                                       "check the time range (epoch milliseconds)"))
        fs, where = resolve(path)
        return LoggedSlates.from_frame(frame, world=read_world(fs, f"{where}.world.json"),
                                       source={"source": "parquet", "path": str(path),
                                               "range_ms": [start, end]},
                                       propensities=args.propensities)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _parquet_rows(path: str, start: int | None, end: int | None,
                  before: bool = False) -> pl.DataFrame:
    frame = pl.scan_parquet(path)
    if before:
        return frame.filter(pl.col("event_time_ms") < start).collect()
    if start is not None:
        frame = frame.filter(pl.col("event_time_ms") >= start)
    if end is not None:
        frame = frame.filter(pl.col("event_time_ms") < end)
    return frame.collect()


def history_from_args(args: argparse.Namespace) -> pl.LazyFrame | None:
    """The logged rows before ``--start`` (to fit popularity on), or None without a start."""
    from recsys.lake import scan_lake

    start = parse_time(args.start, "--start")
    if start is None:
        return None
    kind, path = _source(args)
    if kind == "lake":
        return scan_lake(path, "rewards").filter(pl.col("event_time_ms") < start).select(
            "item_id", "reward")
    return _parquet_rows(path, start, None, before=True).select("item_id", "reward").lazy()


def _base_spec(text: str) -> Any:
    """``--policy``: a policy spec (JSON) or a registered bandit's URI (its spec)."""
    if text.startswith("models:/"):
        from recsys.comparison.candidates import load_registered

        model = load_registered(text)
        if model.kind != "bandit":
            raise CommandError(message("--policy", "a bandit (its configuration is searched)",
                                       f"{text}, a {model.kind} model"))
        return model.spec
    return text


def _search(args: argparse.Namespace, logs: Any) -> dict[str, Any]:
    from recsys.comparison.replay import replay_value
    from recsys.comparison.search import rank_configurations, search_grid

    if args.policy is None:
        raise CommandError(message("--policy", "the base configuration to search around (a "
                                   "policy spec as JSON, or models:/NAME@ALIAS of a bandit)",
                                   "nothing", "add --policy"))
    base = _base_spec(args.policy)
    position = None if logs.len_list == 1 else args.position
    grid = search_grid(args.search, base)
    ranking = rank_configurations(logs, base, grid, batch_size=args.replay_batch_size,
                                  position=position, alpha=args.alpha_value,
                                  random_state=args.seed)
    out: dict[str, Any] = {"ranking": ranking.to_dicts(), "position": position,
                           "batch_size": args.replay_batch_size}
    if args.register_best:
        best = json.loads(ranking["spec"][0])
        result = replay_value(logs, best, batch_size=args.replay_batch_size,
                              position=position, alpha=args.alpha_value,
                              random_state=args.seed)
        out["registered"] = _register_best(args, result, ranking["config"][0])
    return out


def _register_best(args: argparse.Namespace, result: Any, config: str) -> str:
    import mlflow

    from recsys.registry import bandit_model, log_policy_model

    meta = {"source": "replay", "search_config": config, "replay": result.to_dict(),
            "logs": args.logs}
    with mlflow.start_run(run_name=f"replay-best-{config}"[:200],
                          tags={"recsys.kind": "replay-search"}):
        info = log_policy_model(
            bandit_model(result.policy, meta=meta), registered_model_name=args.register_best,
            tags={"recsys.search_config": config},
            description=(f"Best configuration of a replay search ({config}), learned on the "
                         f"logs it was ranked on; compare it on later logs before promoting."))
    version = getattr(info, "registered_model_version", None)
    return f"models:/{args.register_best}/{version}"


def run_compare(args: argparse.Namespace) -> int:
    """The ``compare`` command."""
    from recsys.comparison.candidates import compare_candidates, parse_candidates
    from recsys.comparison.report import format_table, log_comparison
    from recsys.tracking import configure_mlflow

    settings = args.settings
    registry = settings.registry
    estimators = parse_estimators(args.estimators, DEFAULT_ESTIMATORS)
    primary = args.primary or registry.estimator
    if primary not in estimators:
        estimators.insert(0, primary)
    args.alpha_value = registry.alpha if args.alpha is None else args.alpha
    n_bootstrap = registry.n_bootstrap if args.n_bootstrap is None else args.n_bootstrap
    if not args.candidates and not args.search:
        raise CommandError(message("candidates", "at least one (models:/NAME@ALIAS, "
                                   "models:/NAME/VERSION, uniform, popularity, logging)",
                                   "none"))
    configure_mlflow(settings)
    logs = logs_from_args(args)
    if args.slate_size is not None and args.slate_size != logs.len_list:
        raise CommandError(message("--slate-size", f"the logs' slate length ({logs.len_list})",
                                   args.slate_size, "evaluate slates as they were logged"))
    out: dict[str, Any] = {}
    run_id = None
    comparison = None
    if args.candidates:
        candidates = parse_candidates(args.candidates, logs, history=history_from_args(args),
                                      random_state=args.seed)
        try:
            comparison = compare_candidates(logs, candidates, estimators=estimators,
                                            alpha=args.alpha_value, n_bootstrap=n_bootstrap,
                                            random_state=args.seed)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not args.no_log:
            run_id = log_comparison(comparison, primary=primary)
        out = {**comparison.to_dict(), "run_id": run_id}
    if args.search:
        try:
            out["search"] = _search(args, logs)
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    if comparison is not None:
        print(format_table(comparison))
        for note in comparison.logs.get("notes", []):
            print(f"note: {note}")
        for name, reason in comparison.omitted.items():
            print(f"note: {name} omitted: {reason}")
        if run_id:
            print(f"mlflow run {run_id}")
    if args.search:
        _print_search(out["search"])
    sys.stdout.flush()
    return 0


def _print_search(search: dict[str, Any]) -> None:
    slot = "" if search["position"] is None else f", slot {search['position']}"
    print(f"\nreplay search (learning as it goes, batches of {search['batch_size']}{slot}), "
          "best first")
    rows = search["ranking"]
    width = max(len(r["config"]) for r in rows)
    for r in rows:
        print(f"  {r['config']:<{width}}  {r['value']:.4f} [{r['lower']:.4f}, "
              f"{r['upper']:.4f}]  accepted {r['n_accepted']:,}")
    if "registered" in search:
        print(f"registered the best as {search['registered']} (learned on these logs: compare "
              "it on later logs before promoting)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """The ``compare`` command."""
    from recsys.registry.promotion import PromotionError

    parser = add_command(
        subparsers, "compare", run_compare,
        help="evaluate registered policies and baselines on the same logs (OPE, intervals)",
        description="Evaluate candidates (models:/NAME@ALIAS, models:/NAME/VERSION, uniform, "
                    "popularity, logging) on the same logged slates with off-policy "
                    "estimators and bootstrap intervals; the simulator's true values when the "
                    "logs came from it; one mlflow comparison run with a table and a forest "
                    "plot, and each registered version tagged with its latest estimate.",
        expected=(CandidateError, PromotionError, FileNotFoundError))
    parser.add_argument("candidates", nargs="*", metavar="CANDIDATE",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, uniform, popularity "
                             "or logging")
    add_logs_arguments(parser)
    parser.add_argument("--estimators", default=None, metavar="LIST",
                        help=f"comma-separated, among {', '.join(ESTIMATORS)} "
                             f"(default {DEFAULT_ESTIMATORS}, plus --primary)")
    parser.add_argument("--primary", default=None, metavar="ESTIMATOR",
                        help="the estimate tagged on model versions and drawn as the logging "
                             "line (default registry.estimator)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="interval error rate (default registry.alpha)")
    parser.add_argument("--n-bootstrap", type=int, default=None,
                        help="bootstrap resamples (default registry.n_bootstrap)")
    parser.add_argument("--slate-size", type=int, default=None,
                        help="check the logs' slate length (default: as logged)")
    parser.add_argument("--seed", type=int, default=0, help="resampling and baseline seed")
    parser.add_argument("--search", action="append", default=None, metavar="NAME=V1,V2,...",
                        help="rank bandit configurations by replay (repeatable: a grid)")
    parser.add_argument("--policy", default=None, metavar="SPEC|models:/",
                        help="the base configuration --search varies")
    parser.add_argument("--position", type=int, default=0,
                        help="the slot replayed on slates longer than one (default 0)")
    parser.add_argument("--replay-batch-size", type=int, default=100,
                        help="accepted events between two policy updates in the replay")
    parser.add_argument("--register-best", default=None, metavar="NAME",
                        help="register the best searched configuration as a version of NAME")
    parser.add_argument("--json", action="store_true",
                        help="print the comparison (and search) as JSON with the run id")
    parser.add_argument("--no-log", action="store_true", help="write no mlflow run")
