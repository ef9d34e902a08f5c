"""recsys.ope against Open Bandit Pipeline 0.5.7 itself: the same numbers, and how much faster.

Parity: every estimator that recsys.ope shares with OBP (``ope_cases.CASES``: DM, IPW with and
without clipping and with estimated propensities, SNIPW, DR, SNDR, Switch-DR, DRos, Replay and the
slate IIPS) gives a point estimate and a bootstrap interval (``estimate_interval`` with the same
``n_bootstrap_samples``, ``alpha`` and ``random_state``) on

* random inputs: several seeds, with positions (one job without ``position``, one with
  ``alpha=0.1``, one passing a ``RandomState`` instead of an int), and random slate logs;
* the Open Bandit Dataset sample (``<shared data>/obd``): the uniform-random logs evaluating the
  Bernoulli-TS ``action_dist`` of ``obd/bts_action_dist.csv``, with q̂ the smoothed click rate of
  each (item, position) — a plain array given to both libraries.

Both libraries get the same arrays (.npz files written here, read by the OBP side) and the
differences are the largest over all jobs. recsys claims OBP's floats and OBP's resample stream,
so the tolerance is float rounding: ``--tolerance`` (default 1e-9, absolute; the values are of
order 0.01–1). The script exits 1 when a case is outside it.

Speed: the point estimates of ``ope_cases.TIMED`` (and the intervals of ``--interval-estimators``)
on ``--rounds`` × ``--actions`` × ``--positions`` (default 1M × 100 × 3, two 2.4 GB arrays per
side). Each side builds the inputs itself from the same seed with the same numpy code and prints a
content digest (the table shows both: they must agree); the timed region is the library call
(validation included), the median of ``--repeat`` runs on both sides, through the same loop
(``ope_cases.time_cases``). Wall and CPU seconds are both shown: recsys's bootstrap uses two
threads, OBP's is a single-threaded Python loop. OBP runs first, in its own process, then recsys
here, so the two never hold their inputs at the same time.

OBP runs in the peers' venv (``tests/benchmarks/.peers-venv``, ``setup_peers.sh``); without it the
script says so and exits 0 (nothing to compare). Without the OBD sample the OBD job is skipped
with the reason.

Usage: python tests/benchmarks/bench_obp_parity.py [--quick] [--rounds 1000000] [--repeat 3]
       [--bootstrap 1000] [--skip-timing]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import ope_cases  # noqa: E402
from text_table import print_table  # noqa: E402

import recsys.ope  # noqa: E402

PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
SHARED_DATA = Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data"))
RANDOM_SHAPE = (3000, 20, 3)  # rounds, actions, positions of the random parity jobs
PARITY_BOOTSTRAP = 300
LABELS = [label for label, *_ in ope_cases.CASES]
BANDIT_LABELS = [label for label, *_, kind in ope_cases.CASES if kind != "slate"]
SLATE_LABELS = [label for label, *_, kind in ope_cases.CASES if kind == "slate"]


def parity_jobs(workdir: Path) -> tuple[list[dict], list[str]]:
    """The parity jobs (each: inputs in an .npz, estimator labels, bootstrap settings) and notes
    about jobs that could not be built."""
    jobs, notes = [], []
    n, n_actions, len_list = RANDOM_SHAPE
    for seed in range(5):
        data = ope_cases.random_inputs(n, n_actions, len_list, seed)
        jobs.append({"name": f"random seed {seed}", "data": data, "labels": BANDIT_LABELS,
                     "alpha": 0.1 if seed == 1 else 0.05, "random_state": seed,
                     "legacy_state": seed == 2})
    single = ope_cases.random_inputs(n, n_actions, 1, 5)
    del single["position"]
    jobs.append({"name": "random seed 5, no position", "data": single, "labels": BANDIT_LABELS,
                 "alpha": 0.05, "random_state": 5})
    for seed in (6, 7):
        jobs.append({"name": f"random slates seed {seed}", "labels": SLATE_LABELS,
                     "data": ope_cases.slate_inputs(2000, 3, seed), "alpha": 0.05,
                     "random_state": seed})
    try:
        jobs.append({"name": "OBD random logs -> Bernoulli-TS", "data": obd_inputs(SHARED_DATA),
                     "labels": [label for label in BANDIT_LABELS
                                if label not in ("IPW estimated pscore",
                                                 "Replay (deterministic pi_e)")],
                     "alpha": 0.05, "random_state": 12345})
    except FileNotFoundError as err:
        notes.append(f"OBD job skipped: {err}")
    for i, job in enumerate(jobs):
        job["npz"] = str(workdir / f"job{i}.npz")
        np.savez(job["npz"], **job["data"])
        job["n_bootstrap_samples"] = PARITY_BOOTSTRAP
    return jobs, notes


def obd_inputs(shared_data: Path) -> dict[str, np.ndarray]:
    """The uniform-random OBD logs as OBP inputs for evaluating Bernoulli-TS's action_dist."""
    from recsys.obd import load_action_dist
    from simulators.obd import load_obd, obd_dir

    dist_path = obd_dir(shared_data) / "bts_action_dist.csv"
    if not dist_path.is_file():
        raise FileNotFoundError(f"{dist_path} is absent")
    logs = load_obd(shared_data, "random")
    dist = load_action_dist(dist_path, n_items=80)
    n_items, len_list = dist.shape
    # OBD names its reward `click`; take the contract's name when a loader provides it.
    reward_column = recsys.ope.dataframe.DEFAULT_COLUMNS["reward"]
    reward_column = reward_column if reward_column in logs.columns else "click"
    reward = logs[reward_column].to_numpy().astype(float)
    action = logs["item_id"].to_numpy().astype(np.int64)
    position = logs["position"].to_numpy().astype(np.int64)
    # q̂: click rate of each (item, position), shrunk towards the overall rate (prior 20 views).
    views = np.zeros((n_items, len_list))
    clicks = np.zeros((n_items, len_list))
    np.add.at(views, (action, position), 1.0)
    np.add.at(clicks, (action, position), reward)
    rate = (clicks + 20 * reward.mean()) / (views + 20)
    n = reward.size
    return {
        "reward": reward,
        "action": action,
        "position": position,
        "pscore": logs["propensity_score"].to_numpy().astype(float),
        "action_dist": np.ascontiguousarray(np.broadcast_to(dist, (n, n_items, len_list))),
        "estimated_rewards_by_reg_model": np.ascontiguousarray(
            np.broadcast_to(rate, (n, n_items, len_list))),
    }


def run_obp(args: list[str], timeout: float) -> dict | str:
    """One obp_runner.py call in the peers' venv: its JSON, or 'unavailable: <reason>'."""
    if not PEERS_PYTHON.exists():
        return "unavailable: peers venv missing (bash tests/benchmarks/setup_peers.sh)"
    try:
        proc = subprocess.run([str(PEERS_PYTHON), str(HERE / "obp_runner.py"), *args],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"unavailable: OBP run exceeded {timeout:.0f} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"unavailable: {last[:160]}"
    return json.loads(proc.stdout)


def compare(jobs: list[dict], obp_results: list[dict]) -> dict[str, dict]:
    """Largest |Δ point| and |Δ bound| (lower, upper, bootstrap mean) per label over all jobs."""
    worst: dict[str, dict] = {}
    for job, theirs in zip(jobs, obp_results, strict=True):
        ours = ope_cases.evaluate(recsys.ope, job["data"], job["labels"], job["alpha"],
                                  job["n_bootstrap_samples"], job["random_state"],
                                  job.get("legacy_state", False))
        for label in job["labels"]:
            a, b = ours[label], theirs[label]
            d_point = abs(a["point"] - b["point"])
            d_bound = max(abs(a[k] - b[k]) for k in ("lower", "upper", "mean"))
            w = worst.setdefault(label, {"point": 0.0, "bound": 0.0, "jobs": 0, "where": "",
                                         "example": None})
            w["jobs"] += 1
            if max(d_point, d_bound) > max(w["point"], w["bound"]):
                w["where"] = job["name"]
                w["example"] = (a, b)
            w["point"], w["bound"] = max(w["point"], d_point), max(w["bound"], d_bound)
    return worst


def time_recsys(rounds: int, actions: int, positions: int, repeat: int, n_boot: int,
                interval_labels: tuple[str, ...]) -> dict:
    start = time.perf_counter()
    data = ope_cases.random_inputs(rounds, actions, positions, 0, with_extras=False)
    built = time.perf_counter() - start
    times = ope_cases.time_cases(recsys.ope, data, ope_cases.TIMED, repeat, n_boot,
                                 interval_labels)
    return {"digest": ope_cases.digest(data), "build_s": built, "times": times}


def fmt_s(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['wall']:.3f} ({entry['cpu']:.2f})"


def speedup(ours: dict | None, theirs: dict | None) -> str:
    if ours is None or theirs is None:
        return "-"
    return f"{theirs['wall'] / ours['wall']:.1f}x ({theirs['cpu'] / max(ours['cpu'], 1e-9):.1f}x)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1_000_000)
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--positions", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="median of k, both sides")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="resamples of the timed intervals")
    parser.add_argument("--interval-estimators", default="IPW,DR",
                        help="comma-separated labels whose estimate_interval is timed")
    parser.add_argument("--interval-repeat", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=1e-9)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="time on 100k rounds and 100 resamples instead")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.bootstrap = min(args.rounds, 100_000), min(args.bootstrap, 100)
    interval_labels = tuple(x for x in args.interval_estimators.split(",") if x)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs, notes = parity_jobs(work)
        request = work / "request.json"
        request.write_text(json.dumps({"jobs": [{k: v for k, v in job.items() if k != "data"}
                                                for job in jobs]}))
        obp = run_obp(["parity", str(request)], timeout=1800)
        if isinstance(obp, str):
            print(f"OBP parity: {obp}; nothing to compare")
            return 0
        worst = compare(jobs, obp["results"])
    print(f"parity jobs: {', '.join(job['name'] for job in jobs)}; "
          f"{PARITY_BOOTSTRAP} resamples each", file=sys.stderr)

    timing_ours = timing_obp = None
    if not args.skip_timing:
        shape = [str(v) for v in (args.rounds, args.actions, args.positions)]
        timing_obp = run_obp(["timing", *shape, "0", str(args.repeat), str(args.bootstrap),
                              ",".join(interval_labels)], timeout=3600)
        if isinstance(timing_obp, str):
            notes.append(f"OBP timing {timing_obp}")
            timing_obp = None
        timing_ours = time_recsys(args.rounds, args.actions, args.positions, args.repeat,
                                  args.bootstrap, interval_labels)

    def cell(timing: dict | None, label: str, what: str) -> dict | None:
        return None if timing is None else timing["times"].get(f"{label} | {what}")

    rows, failed = [], []
    for label in LABELS:
        w = worst.get(label)
        if w is None:
            continue
        ok = w["point"] <= args.tolerance and w["bound"] <= args.tolerance
        if not ok:
            failed.append(label)
        p_ours, p_obp = cell(timing_ours, label, "point"), cell(timing_obp, label, "point")
        i_ours, i_obp = cell(timing_ours, label, "interval"), cell(timing_obp, label, "interval")
        rows.append((label, f"{w['point']:.1e}", f"{w['bound']:.1e}", str(w["jobs"]),
                     "ok" if ok else "FAIL", fmt_s(p_ours), fmt_s(p_obp), speedup(p_ours, p_obp),
                     fmt_s(i_ours), fmt_s(i_obp), speedup(i_ours, i_obp)))

    size = f"{args.rounds:,} x {args.actions} x {args.positions}"
    print(f"recsys.ope vs obp 0.5.7: parity on {len(jobs)} jobs (random inputs {RANDOM_SHAPE}, "
          f"random slates, OBD); tolerance {args.tolerance:g} absolute")
    if timing_ours is not None:
        print(f"timing on {size} (rounds x actions x positions), median of {args.repeat} "
              f"(intervals: {args.bootstrap} resamples, median of {args.interval_repeat}); "
              f"seconds are wall (CPU), speed-ups OBP/recsys in wall (CPU) time")
        obp_digest = timing_obp["digest"] if timing_obp else "-"
        print(f"input digests: recsys {timing_ours['digest']}, OBP {obp_digest}"
              + ("" if timing_obp is None or obp_digest == timing_ours["digest"]
                 else "  <- DIFFERENT INPUTS"))
    header = ("estimator", "max |d point|", "max |d interval bound|", "jobs", "parity",
              "recsys s", "OBP s", "speed-up", f"recsys CI s (B={args.bootstrap})",
              "OBP CI s", "CI speed-up")
    print_table(rows, header)
    for note in notes:
        print(f"note: {note}")
    for label in failed:
        a, b = worst[label]["example"]
        print(f"MISMATCH {label} (worst in {worst[label]['where']}): recsys {a} vs OBP {b}")
    print(f"load average during the run: {os.getloadavg()} on {os.cpu_count()} cores")
    if timing_ours is not None and timing_obp is not None and \
            timing_obp["digest"] != timing_ours["digest"]:
        print("the two sides timed different inputs: the timing rows are not comparable")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
