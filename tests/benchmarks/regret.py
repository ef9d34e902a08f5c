"""Regret experiment on the benchmark problem (50 actions, d = 32, Bernoulli-logistic rewards).

Runs the recsys policies closed-loop in batches of 1,000 requests (parameters refreshed once per
batch, as in streaming serving) on three context kinds and saves a regret plot:

* ``segments``   — one-hot user segments: the Online Matching K = 1 case, Diag-LinUCB exact;
* ``gaussian``   — dense independent Gaussian features with a constant feature;
* ``correlated`` — dense Gaussian features with equicorrelation 0.5: the Diag-vs-full gap.

Every policy sees the same contexts and the same uniform draws (reward = u < p), so the curves
differ only by the policies' choices. Hyperparameters: α = 1 / v = 0.5 for the plain statistics
and full references, α = 0.5 / v = 0.25 for the centred ones (picked from v ∈ {0.25, 0.5, 1} on
the gaussian problem); VW runs with its defaults. With ``--with-vw`` Vowpal Wabbit's SquareCB
runs on the same problem through the peers' environment (see setup_peers.sh), one event at a
time.

Usage: python tests/benchmarks/regret.py [--events 200000] [--with-vw]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from recsys.bandits import (  # noqa: E402
    DiagLinTS,
    DiagLinUCB,
    EpsilonGreedy,
    LinTS,
    LinUCB,
    SquareCB,
)
from recsys.bandits.regret import RegretCurve, run_regret  # noqa: E402
from simulators.linear_logistic import LinearLogisticEnv  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
N_ACTIONS, DIM, BATCH = 50, 32, 1000
PROBLEMS = {
    "segments": {"context": "segments"},
    "gaussian": {"context": "gaussian"},
    "correlated": {"context": "gaussian", "correlation": 0.5},
}
POLICIES = {
    "DiagLinUCB": lambda: DiagLinUCB(alpha=1.0, random_state=10_000),
    "DiagLinTS": lambda: DiagLinTS(v=0.5, n_mc_draws=0, random_state=10_000),
    "DiagLinUCB centred": lambda: DiagLinUCB(alpha=0.5, centred=True, random_state=10_000),
    "DiagLinTS centred": lambda: DiagLinTS(v=0.25, centred=True, n_mc_draws=0,
                                           random_state=10_000),
    "LinUCB (full)": lambda: LinUCB(alpha=1.0, random_state=10_000),
    "LinTS (full)": lambda: LinTS(v=0.5, n_mc_draws=0, random_state=10_000),
    "SquareCB (IGW)": lambda: SquareCB(gamma=1000.0, random_state=10_000),
    "eps-greedy 0.05": lambda: EpsilonGreedy(0.05, random_state=10_000),
    "random": lambda: EpsilonGreedy(1.0, random_state=10_000),
}


class ReplayEnv:
    """The environment interface over fixed contexts and uniform draws (common random numbers)."""

    def __init__(self, x: np.ndarray, theta: np.ndarray, u: np.ndarray) -> None:
        self.x, self.theta, self.u = x, theta, u
        self.n_actions, self.dim = theta.shape
        self._t = 0
        self._served = 0

    def contexts(self, n: int) -> np.ndarray:
        out = self.x[self._t:self._t + n]
        self._t += n
        return out

    def expected_rewards(self, contexts: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(contexts @ self.theta.T)))

    def sample_rewards(self, contexts: np.ndarray, actions: np.ndarray) -> np.ndarray:
        p = self.expected_rewards(contexts)[np.arange(contexts.shape[0]), actions]
        u = self.u[self._served:self._served + contexts.shape[0]]
        self._served += contexts.shape[0]
        return (u < p).astype(np.float64)


def make_problem(kind: str, events: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Contexts, true parameters and uniform draws for one context kind."""
    env = LinearLogisticEnv(N_ACTIONS, DIM, seed=seed, **PROBLEMS[kind])
    return {"x": env.contexts(events), "theta": env.theta,
            "u": np.random.default_rng(seed + 100).random(events)}


def run_ours(problem: dict[str, np.ndarray], names: list[str]) -> dict[str, RegretCurve]:
    curves = {}
    for name in names:
        env = ReplayEnv(problem["x"], problem["theta"], problem["u"])
        policy = POLICIES[name]().init(np.arange(N_ACTIONS), DIM)
        curves[name] = run_regret(policy, env, problem["x"].shape[0], batch_size=BATCH)
    return curves


def diag_vs_full_accuracy(kind: str, events: int = 50_000) -> dict[str, float]:
    """Fit Diag (plain and centred) and full-covariance statistics on uniformly logged events;
    RMSE of the mean score against the true click probability, and between the models."""
    prob = make_problem(kind, events + 5000, seed=7)
    x, theta, u = prob["x"][:events], prob["theta"], prob["u"][:events]
    a = np.random.default_rng(12_345).integers(0, N_ACTIONS, events)  # not the env's stream
    r = (u < 1.0 / (1.0 + np.exp(-(x * theta[a]).sum(1)))).astype(float)
    diag = DiagLinUCB().init(np.arange(N_ACTIONS), DIM).learn(x, a, r)
    cent = DiagLinUCB(centred=True).init(np.arange(N_ACTIONS), DIM).learn(x, a, r)
    full = LinUCB().init(np.arange(N_ACTIONS), DIM).learn(x, a, r)
    q = prob["x"][events:]
    truth = 1.0 / (1.0 + np.exp(-(q @ theta.T)))
    sd, sc, sf = (m.score(q, exploit=True) for m in (diag, cent, full))
    rmse = lambda e: float(np.sqrt(np.mean(e**2)))  # noqa: E731
    return {"diag_rmse": rmse(sd - truth), "centred_rmse": rmse(sc - truth),
            "full_rmse": rmse(sf - truth), "diag_vs_full_rmse": rmse(sd - sf),
            "centred_vs_full_rmse": rmse(sc - sf)}


def start_vw_squarecb(problem: dict[str, np.ndarray], workdir: Path) -> subprocess.Popen | None:
    """Start VW SquareCB on the problem in the peers' venv (None when it is not installed)."""
    if not PEERS_PYTHON.exists():
        return None
    path = workdir / f"problem_{id(problem)}.npz"
    np.savez(path, **problem)
    return subprocess.Popen(
        [str(PEERS_PYTHON), str(HERE / "peers_runner.py"), "vw_squarecb", str(path),
         str(problem["x"].shape[0]), str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish_vw(proc: subprocess.Popen | None) -> dict | str:
    if proc is None:
        return "unavailable: peers venv missing (run tests/benchmarks/setup_peers.sh)"
    out, err = proc.communicate()
    if proc.returncode != 0:
        return f"unavailable: VW run failed ({err.strip().splitlines()[-1] if err else '?'})"
    return json.loads(out)


def plot(results: dict[str, dict[str, np.ndarray]], events: int, path: Path) -> None:
    """One panel per context kind; curves of any resolution are drawn over 0..events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5))
    for ax, (kind, curves) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for name, curve in curves.items():
            ax.plot(np.linspace(0, events, curve.size), curve, label=name)
        ax.set_title(f"{kind} contexts")
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative pseudo-regret")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def experiment(events: int, with_vw: bool, kinds: list[str] | None = None) -> dict:
    """Run everything; returns {kind: {name: total regret or 'unavailable: ...'}} and the plot."""
    kinds = kinds or list(PROBLEMS)
    problems = {kind: make_problem(kind, events) for kind in kinds}
    table: dict[str, dict[str, float | str]] = {}
    curves_all: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        vw_procs = {kind: start_vw_squarecb(problems[kind], Path(tmp))
                    for kind in kinds if with_vw and kind != "correlated"}
        for kind in kinds:
            t0 = time.perf_counter()
            curves = run_ours(problems[kind], list(POLICIES))
            table[kind] = {name: c.total for name, c in curves.items()}
            curves_all[kind] = {name: c.cumulative_regret for name, c in curves.items()}
            print(f"  [{kind}] recsys policies done in {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr)
        for kind, proc in vw_procs.items():
            vw = finish_vw(proc)
            if isinstance(vw, dict):
                table[kind]["VW SquareCB (per event)"] = vw["cum_regret"]
                curves_all[kind]["VW SquareCB (per event)"] = np.asarray(vw["regret_curve"])
            else:
                table[kind]["VW SquareCB (per event)"] = vw
    png = RESULTS / "regret.png"
    plot(curves_all, events, png)
    return {"table": table, "plot": str(png)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--with-vw", action="store_true")
    args = parser.parse_args()
    out = experiment(args.events, args.with_vw)
    names = sorted({n for row in out["table"].values() for n in row})
    kinds = list(out["table"])
    print(f"cumulative pseudo-regret after {args.events} rounds (batches of {BATCH} for recsys)")
    print(f"{'policy':28s}" + "".join(f"{k:>14s}" for k in kinds))
    for name in names:
        cells = []
        for k in kinds:
            v = out["table"][k].get(name, "-")
            cells.append(f"{v:14.0f}" if isinstance(v, float) else f"{str(v)[:14]:>14s}")
        print(f"{name:28s}" + "".join(cells))
    for kind in PROBLEMS:
        acc = diag_vs_full_accuracy(kind)
        print(f"mean-score RMSE vs true P(click), {kind} contexts, 50k uniform logs: "
              f"Diag {acc['diag_rmse']:.4f}, Diag centred {acc['centred_rmse']:.4f}, "
              f"full {acc['full_rmse']:.4f}; Diag-full {acc['diag_vs_full_rmse']:.4f}, "
              f"centred-full {acc['centred_vs_full_rmse']:.4f}")
    corr = out["table"].get("correlated", {})
    if corr:
        print(f"Diag vs full regret on correlated contexts: DiagLinUCB {corr['DiagLinUCB']:.0f}"
              f" (centred {corr['DiagLinUCB centred']:.0f}) vs LinUCB "
              f"{corr['LinUCB (full)']:.0f}; DiagLinTS {corr['DiagLinTS']:.0f} (centred "
              f"{corr['DiagLinTS centred']:.0f}) vs LinTS {corr['LinTS (full)']:.0f}")
    print(f"plot: {out['plot']}")


if __name__ == "__main__":
    main()
