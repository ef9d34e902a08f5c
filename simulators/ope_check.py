"""``recsys ope-check``: do the off-policy estimators agree with the truth?

Runs the simulator coverage study (estimates vs exact true values, with bootstrap intervals) and
the Open Bandit Dataset check (Bernoulli-TS's value from the random logs vs its on-policy mean
click), prints both tables and saves a plot of estimate vs truth with intervals.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports wait for run(): `recsys --help` must not load scikit-learn
    import polars as pl

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_shared_data() -> Path:
    """$RECSYS_SHARED_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ope-check`` subcommand (entry point of group ``recsys.commands``)."""
    parser = subparsers.add_parser(
        "ope-check",
        help="check off-policy estimators against simulator truth and the Open Bandit Dataset",
        description=__doc__,
    )
    parser.add_argument("--rounds", type=int, default=100_000, help="logged rounds per repetition")
    parser.add_argument("--repetitions", type=int, default=50, help="seeded repetitions")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and the runs")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the plot and CSV tables are written (default: <data_dir>/reports)",
    )
    parser.add_argument(
        "--shared-data",
        type=Path,
        default=default_shared_data(),
        help="folder holding obd/ (default: $RECSYS_SHARED_DATA or ../shared/data)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run both checks, print the tables, save the plot; 0 on success."""
    import polars as pl

    from simulators.study import coverage_study, obd_check, obd_mirroring, summarize_study

    for name in ("rounds", "repetitions", "bootstrap"):
        if getattr(args, name) < 1:
            raise SystemExit(f"ope-check: --{name} must be >= 1")
    pl.Config.set_tbl_rows(50)
    pl.Config.set_tbl_cols(20)
    pl.Config.set_tbl_width_chars(160)
    pl.Config.set_float_precision(5)
    results = coverage_study(
        n_rounds=args.rounds,
        n_repetitions=args.repetitions,
        seed=args.seed,
        n_bootstrap_samples=args.bootstrap,
    )
    summary = summarize_study(results)
    print(
        f"Simulator study: {args.rounds:,} rounds logged by a softmax policy, "
        f"{args.repetitions} repetitions, {args.bootstrap} bootstrap resamples, 95% intervals"
    )
    print(
        summary.select(
            "policy", "estimator", "truth", "mean_estimate", "bias_z", "coverage", "mean_width"
        )
    )
    obd_dir = Path(args.shared_data) / "obd"
    obd = None
    if obd_dir.is_dir():
        obd = obd_check(args.shared_data, n_bootstrap_samples=args.bootstrap, seed=args.seed)
        print("\nOpen Bandit Dataset: Bernoulli-TS value estimated from the uniform-random logs")
        print(obd.select("estimator", "estimate", "lower", "upper", "truth", "relative_error"))
        mirror = obd_mirroring(args.shared_data, seed=args.seed)
        print("\nSimulator fitted to 70% of the random OBD logs: held-out click rates")
        print(mirror["per_position"])
        print(mirror["summary"])
    else:
        print(f"\nOpen Bandit Dataset not found at {obd_dir}: OBD check skipped")
    settings = getattr(args, "settings", None)
    if args.output_dir is not None:
        output = Path(args.output_dir)
    else:
        output = (settings.data_dir if settings else Path(".recsys")) / "reports"
    output.mkdir(parents=True, exist_ok=True)
    results.write_csv(output / "ope_check_simulator.csv")
    if obd is not None:
        obd.write_csv(output / "ope_check_obd.csv")
    plot = save_plot(results, obd, output / "ope_check.png")
    print(f"\nPlot: {plot}")
    return 0


def save_plot(results: pl.DataFrame, obd: pl.DataFrame | None, path: Path) -> Path:
    """Estimate vs truth with intervals: first repetition per (policy, estimator), and OBD."""
    import matplotlib
    import numpy as np
    import polars as pl

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if obd is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0, 0]
    first = results.filter(pl.col("repetition") == results["repetition"].min())
    labels = [f"{p}\n{e}" for p, e in zip(first["policy"], first["estimator"], strict=True)]
    x = np.arange(first.height)
    est = first["estimate"].to_numpy()
    err = np.vstack([est - first["lower"].to_numpy(), first["upper"].to_numpy() - est])
    ax.errorbar(x, est, yerr=err, fmt="o", capsize=3, label="estimate, 95% CI")
    ax.scatter(x, first["truth"].to_numpy(), marker="x", color="red", zorder=3, label="truth")
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_ylabel("policy value (click rate)")
    ax.set_title("Simulator: estimate vs exact truth (repetition 0)")
    ax.legend(fontsize=8)
    if obd is not None:
        ax = axes[0, 1]
        x = np.arange(obd.height)
        est = obd["estimate"].to_numpy()
        err = np.vstack([est - obd["lower"].to_numpy(), obd["upper"].to_numpy() - est])
        ax.errorbar(x, est, yerr=err, fmt="o", capsize=3, label="estimate, 95% CI")
        truth, se = obd["truth"][0], obd["truth_se"][0]
        ax.axhline(truth, color="red", label="bts mean click")
        ax.axhspan(truth - 1.96 * se, truth + 1.96 * se, color="red", alpha=0.15)
        ax.set_xticks(x, obd["estimator"].to_list(), rotation=45)
        ax.set_title("Open Bandit Dataset: Bernoulli-TS from random logs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
