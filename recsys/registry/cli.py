"""``recsys models``: list registered policies, promote a challenger, roll back, register a
streaming checkpoint. Versions are always printed as ``models:/NAME/VERSION``."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from recsys.checkpoint import CheckpointError
from recsys.commands import CommandError, add_command
from recsys.comparison.candidates import CandidateError
from recsys.registry.promotion import (
    HISTORY_TAG,
    RULES,
    PromotionError,
    PromotionRule,
    promote,
    rollback,
)

KIND_TAGS = ("recsys.policy_kind", "recsys.kind")
"""Version tags the policy kind is read from, first found wins."""

_PROMOTE_HELP = """\
Move the champion alias to the challenger version only when the rule holds, on the same logs:
  lower_bound (default): the challenger's lower interval bound of the estimator
                         (registry.estimator, default snips) > the champion's estimate + margin;
  estimate:              the challenger's estimate > the champion's estimate + margin.
With no champion yet, the challenger is held against the logging policy (the on-policy mean of
the logs) by the same rule. Evidence: --comparison-run (a `recsys compare` run holding both
versions) or a new comparison on --logs (logged as a comparison run unless --no-log).
Exit status: 0 when the challenger is (or, with --dry-run, would be) promoted, 1 when the
champion stays.
"""


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def _configure(args: argparse.Namespace) -> None:
    from recsys.tracking import configure_mlflow

    configure_mlflow(args.settings)


def _kind(tags: dict[str, str]) -> str:
    return next((tags[t] for t in KIND_TAGS if t in tags), "-")


def _created(ms: int | None) -> str:
    return f"{datetime.fromtimestamp((ms or 0) / 1000, UTC):%Y-%m-%d %H:%M:%S}Z"


def model_rows(name: str | None = None) -> list[dict[str, Any]]:
    """One row per registered version (of ``name``, or of every model): uri, aliases, kind,
    latest estimate and interval, created."""
    from mlflow.exceptions import MlflowException

    client = _client()
    if name is not None:
        try:
            models = [client.get_registered_model(name)]
        except MlflowException:
            from recsys.validation import did_you_mean, message

            known = [m.name for m in client.search_registered_models()]
            raise CommandError(message("model", "a registered model name", repr(name),
                                       did_you_mean(name, known) or
                                       f"registered: {', '.join(known) or 'none'}")) from None
    else:
        models = list(client.search_registered_models())
    rows = []
    for model in sorted(models, key=lambda m: m.name):
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name='{model.name}'")
        for v in sorted(versions, key=lambda v: int(v.version)):
            tags = dict(v.tags or {})
            rows.append({
                "name": model.name,
                "version": str(v.version),
                "uri": f"models:/{model.name}/{v.version}",
                "aliases": sorted(aliases.get(str(v.version), [])),
                "kind": _kind(tags),
                "latest_estimate": tags.get("recsys.latest_estimate"),
                "latest_estimate_interval": tags.get("recsys.latest_estimate_interval"),
                "latest_estimate_estimator": tags.get("recsys.latest_estimate_estimator"),
                "latest_comparison_run": tags.get("recsys.latest_comparison_run"),
                "created": _created(v.creation_timestamp),
                "description": v.description or "",
                "champion_history": model.tags.get(HISTORY_TAG),
            })
    return rows


def run_list(args: argparse.Namespace) -> int:
    _configure(args)
    rows = model_rows(args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no registered models" + (f" named {args.name}" if args.name else ""))
        return 0
    header = ("version", "aliases", "kind", "latest estimate", "created")
    table = [(r["uri"], ",".join(r["aliases"]) or "-", r["kind"],
              "-" if r["latest_estimate"] is None else
              f"{r['latest_estimate_estimator'] or ''} {r['latest_estimate']} "
              f"{r['latest_estimate_interval'] or ''}".strip(), r["created"]) for r in rows]
    widths = [max(len(str(x[i])) for x in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from recsys.comparison.cli import logs_from_args

    settings = args.settings
    _configure(args)
    try:
        rule = PromotionRule.from_settings(settings.registry, kind=args.rule, margin=args.margin)
        if args.estimator:
            rule = PromotionRule(rule.kind, args.estimator, rule.margin)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    logs = None
    if args.comparison_run is None and args.logs is not None:
        logs = logs_from_args(args)
    alias = args.alias or settings.registry.champion_alias
    decision = promote(
        args.name, args.challenger, logs=logs, comparison_run_id=args.comparison_run, rule=rule,
        alias=alias,
        alpha=settings.registry.alpha if args.alpha is None else args.alpha,
        n_bootstrap=(settings.registry.n_bootstrap if args.n_bootstrap is None
                     else args.n_bootstrap),
        dry_run=args.dry_run, log=not args.no_log)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
    else:
        challenger = f"models:/{args.name}/{decision.challenger_version}"
        champion = (f"models:/{args.name}/{decision.champion_version}"
                    if decision.champion_version else "none (held against the logging policy)")
        print(f"rule       {rule.describe()}")
        print(f"champion   {champion}")
        print(f"challenger {challenger}")
        print(f"verdict    {decision.reason}")
        if decision.comparison_run_id:
            print(f"comparison run {decision.comparison_run_id}")
        if decision.applied:
            print(f"promoted: {alias} -> {challenger}")
        elif decision.promote:
            print(f"dry run: {alias} would move to {challenger}")
        else:
            print(f"kept: {alias} stays at {champion}")
    return 0 if decision.promote else 1


def run_rollback(args: argparse.Namespace) -> int:
    _configure(args)
    alias = args.alias or args.settings.registry.champion_alias
    done = rollback(args.name, alias=alias)
    if args.json:
        print(json.dumps(done.to_dict(), indent=2))
    else:
        before = f"models:/{done.name}/{done.from_version}" if done.from_version else "unset"
        print(f"rolled back: {alias} {before} -> models:/{done.name}/{done.to_version}")
    return 0


def run_register(args: argparse.Namespace) -> int:
    from recsys.registry.snapshots import register_checkpoint

    _configure(args)
    registered = register_checkpoint(args.settings, args.checkpoint, name=args.name,
                                     policy_spec=args.policy, store_uri=args.uri)
    if args.json:
        print(json.dumps(registered.to_dict(), indent=2))
    else:
        state = "registered" if registered.created else "already registered as"
        print(f"checkpoint {registered.checkpoint_id} {state} {registered.uri}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """The ``models`` command and its actions."""
    from recsys.cli import _add_global_flags
    parser = subparsers.add_parser(
        "models", help="list, promote, roll back and register policies in the mlflow registry",
        description="Registered policies (mlflow models of one flavour): list them, promote a "
                    "challenger by a stated rule, roll the champion alias back, register a "
                    "streaming checkpoint.")
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    expected = (PromotionError, CandidateError)

    listing = add_command(actions, "list", run_list, expected=expected,
                          help="registered versions: aliases, kind, latest estimate, created")
    listing.add_argument("name", nargs="?", default=None, help="one registered model")
    listing.add_argument("--json", action="store_true", help="print JSON rows")

    promoting = add_command(
        actions, "promote", run_promote, expected=(*expected, ValueError),
        help="move the champion alias to a challenger when the rule holds",
        description=_PROMOTE_HELP)
    promoting.formatter_class = argparse.RawDescriptionHelpFormatter
    promoting.add_argument("name", help="registered model name")
    promoting.add_argument("--challenger", required=True, metavar="VERSION",
                           help="the version to promote")
    from recsys.comparison.cli import add_logs_arguments

    add_logs_arguments(promoting, required=False)
    promoting.add_argument("--comparison-run", default=None, metavar="RUN_ID",
                           help="decide from this `recsys compare` run instead of new logs")
    promoting.add_argument("--rule", choices=RULES, default=None,
                           help="lower_bound (default) or estimate; see above")
    promoting.add_argument("--margin", type=float, default=None,
                           help="required improvement (default registry.margin)")
    promoting.add_argument("--estimator", default=None,
                           help="estimator the rule reads (default registry.estimator)")
    promoting.add_argument("--alias", default=None,
                           help="alias to move (default registry.champion_alias)")
    promoting.add_argument("--alpha", type=float, default=None,
                           help="interval error rate (default registry.alpha)")
    promoting.add_argument("--n-bootstrap", type=int, default=None,
                           help="bootstrap resamples (default registry.n_bootstrap)")
    promoting.add_argument("--dry-run", action="store_true", help="decide, move nothing")
    promoting.add_argument("--no-log", action="store_true",
                           help="do not write the comparison run")
    promoting.add_argument("--json", action="store_true", help="print the decision as JSON")

    back = add_command(actions, "rollback", run_rollback, expected=expected,
                       help="move the champion alias back to the previous champion")
    back.add_argument("name", help="registered model name")
    back.add_argument("--alias", default=None,
                      help="alias to move (default registry.champion_alias)")
    back.add_argument("--json", action="store_true", help="print JSON")

    registering = add_command(
        actions, "register", run_register, expected=(CheckpointError, ValueError),
        help="register a streaming checkpoint's bandit statistics as a model version")
    registering.add_argument("--checkpoint", default=None, metavar="ID",
                             help="checkpoint id (default: the newest)")
    registering.add_argument("--name", default=None,
                             help="registered model name (default stream.registered_model)")
    registering.add_argument("--policy", default=None, metavar="SPEC_JSON",
                             help="policy spec (default: the checkpoint's, else the serving "
                                  "default)")
    registering.add_argument("--uri", default=None,
                             help="checkpoint location (default stream.checkpoint_uri)")
    registering.add_argument("--json", action="store_true", help="print JSON")
    for action in (listing, promoting, back, registering):
        # The configuration flags work after the action too (recsys models list --data-dir D).
        _add_global_flags(action, suppress=True)
