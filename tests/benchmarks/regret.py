"""Regret experiment: recsys policies closed-loop on the full simulator or a linear-logistic env.

Runs the recsys policies closed-loop in batches of 1,000 requests (parameters refreshed once per
batch, as in streaming serving) and saves a regret plot under tests/benchmarks/results/.

``--env simulator`` (default; plot ``regret.png``): the full slate simulator through
``simulators.bandit_env.SimulatorBanditEnv`` — contexts are the observable user features (plus a
constant), actions are items shown as one-item slates, reward is a click from the listwise choice
model, and pseudo-regret is measured against the simulator's exact per-user optimum. Two worlds of
the benchmark's shape (50 items, d = 32, 1,000 users):

* ``default world``    — the simulator's defaults (feature noise 0.5, click rate of a few percent);
* ``clearer features`` — feature noise 0.25 and no-click utility 1 (click rate ≈ 30 %).

Each panel also draws ``linear floor × t``: the regret of greedy choice on the least-squares fit
of the true click probabilities on the features, roughly where a converged linear-reward policy
flattens out (feature noise and the choice model put it above 0). Every policy gets a fresh
simulator with the same seeds, so the same users arrive and the same uniform draws decide clicks.

``--env linear-logistic`` (plot ``regret_linear_logistic.png``): the benchmark problem (50
actions, d = 32, Bernoulli-logistic rewards) on three context kinds:

* ``segments``   — one-hot user segments: the Online Matching K = 1 case, Diag-LinUCB exact;
* ``gaussian``   — dense independent Gaussian features with a constant feature;
* ``correlated`` — dense Gaussian features with equicorrelation 0.5: the Diag-vs-full gap.

Every policy sees the same contexts and the same uniform draws (reward = u < p), so the curves
differ only by the policies' choices. With ``--with-vw`` Vowpal Wabbit's SquareCB runs on the same
three problems through the peers' environment (see setup_peers.sh), one event at a time (recsys
learns once per batch of 1,000, so VW has the fresher model).

Hyperparameters are tuned for every policy and for VW alike (``--tune``, on by default): each gets
a grid of three values of its main knob (``TUNING``: α, v, γ, ε; VW's ``--gamma_scale``), every
value is run once on a tuning problem that the reported runs never see (linear-logistic: gaussian
contexts, seed 1; simulator: the default world with seed 1), and the value with the least
cumulative regret is used. ``--no-tune`` uses the fixed defaults instead (``TUNING``'s first
column); the table says which.

Usage: python tests/benchmarks/regret.py [--env simulator|linear-logistic] [--events 200000]
       [--with-vw] [--no-tune] [--tune-events 50000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from recsys.bandits import (  # noqa: E402
    BasePolicy,
    DiagLinTS,
    DiagLinUCB,
    EpsilonGreedy,
    LinTS,
    LinUCB,
    SquareCB,
)
from recsys.bandits.regret import RegretCurve, run_regret  # noqa: E402
from simulators.bandit_env import SimulatorBanditEnv  # noqa: E402
from simulators.linear_logistic import LinearLogisticEnv  # noqa: E402
from simulators.model import SimulatorConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
N_ACTIONS, DIM, BATCH = 50, 32, 1000
PROBLEMS = {
    "segments": {"context": "segments"},
    "gaussian": {"context": "gaussian"},
    "correlated": {"context": "gaussian", "correlation": 0.5},
}
SIM_PROBLEMS = {
    "default world": {"n_items": N_ACTIONS, "dim": DIM},
    "clearer features": {"n_items": N_ACTIONS, "dim": DIM, "feature_noise": 0.25,
                         "no_click_utility": 1.0},
}
ENV_TITLES = {
    "simulator": "full slate simulator (one-item slates, exact per-user optimum)",
    "linear-logistic": "linear-logistic env (Bernoulli-logistic rewards)",
}
VW_NAME = "VW SquareCB (per event)"
VW_FLAGS = "--cb_explore_adf --squarecb"
SEED = 10_000  # every recsys policy's random_state


@dataclass(frozen=True)
class Knob:
    """One policy's tuned hyperparameter: its name, the default, the grid and the factory."""

    param: str
    default: float
    grid: tuple[float, ...]
    make: Callable[[float], BasePolicy]


# The defaults are the values the benchmark used before tuning (α = 1 / v = 0.5 for the plain
# statistics and full references, α = 0.5 / v = 0.25 for the centred ones, γ = 1000, ε = 0.05);
# every grid has three values a half-decade apart, VW's included (``VW_KNOB``): the same budget
# for every side. (A first tuning run on grids around the defaults chose the smallest
# exploration of every grid, VW's included, so the grids reach lower.)
TUNING: dict[str, Knob] = {
    "DiagLinUCB": Knob("alpha", 1.0, (0.1, 0.3, 1.0),
                       lambda v: DiagLinUCB(alpha=v, random_state=SEED)),
    "DiagLinTS": Knob("v", 0.5, (0.1, 0.3, 1.0),
                      lambda v: DiagLinTS(v=v, n_mc_draws=0, random_state=SEED)),
    "DiagLinUCB centred": Knob("alpha", 0.5, (0.1, 0.3, 1.0),
                               lambda v: DiagLinUCB(alpha=v, centred=True, random_state=SEED)),
    "DiagLinTS centred": Knob("v", 0.25, (0.1, 0.3, 1.0),
                              lambda v: DiagLinTS(v=v, centred=True, n_mc_draws=0,
                                                  random_state=SEED)),
    "LinUCB (full)": Knob("alpha", 1.0, (0.1, 0.3, 1.0),
                          lambda v: LinUCB(alpha=v, random_state=SEED)),
    "LinTS (full)": Knob("v", 0.5, (0.1, 0.3, 1.0),
                         lambda v: LinTS(v=v, n_mc_draws=0, random_state=SEED)),
    "SquareCB (IGW)": Knob("gamma", 1000.0, (1000.0, 10000.0, 100000.0),
                           lambda v: SquareCB(gamma=v, random_state=SEED)),
    "eps-greedy": Knob("epsilon", 0.05, (0.01, 0.03, 0.1),
                       lambda v: EpsilonGreedy(v, random_state=SEED)),
    "eps-greedy centred": Knob("epsilon", 0.05, (0.01, 0.03, 0.1),
                               lambda v: EpsilonGreedy(v, centred=True, random_state=SEED)),
    "random": Knob("epsilon", 1.0, (), lambda v: EpsilonGreedy(v, random_state=SEED)),
}
# VW's own default --gamma_scale is 10 (γ_t = 10·t^0.5); the grid goes two decades above it.
VW_KNOB = Knob("gamma_scale", 10.0, (10.0, 100.0, 1000.0), lambda v: None)  # type: ignore[arg-type]
POLICIES = list(TUNING)


def make_policy(name: str, chosen: dict[str, float] | None = None) -> BasePolicy:
    """Policy ``name`` with its tuned value (``chosen``) or its default."""
    knob = TUNING[name]
    return knob.make((chosen or {}).get(name, knob.default))


def vw_params(chosen: dict[str, float] | None = None) -> dict:
    return {"flags": VW_FLAGS,
            VW_KNOB.param: (chosen or {}).get(VW_NAME, VW_KNOB.default)}


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


def run_ours(problem: dict[str, np.ndarray], names: list[str],
             chosen: dict[str, float] | None = None) -> dict[str, RegretCurve]:
    curves = {}
    for name in names:
        env = ReplayEnv(problem["x"], problem["theta"], problem["u"])
        policy = make_policy(name, chosen).init(np.arange(N_ACTIONS), DIM)
        curves[name] = run_regret(policy, env, problem["x"].shape[0], batch_size=BATCH)
    return curves


def simulator_env(kind: str, seed: int = 0) -> SimulatorBanditEnv:
    """A fresh simulator world (``seed``) with its own request/click stream (``seed + 100``)."""
    return SimulatorBanditEnv(SimulatorConfig(**SIM_PROBLEMS[kind], seed=seed), seed=seed + 100)


def run_ours_simulator(kind: str, events: int, names: list[str],
                       chosen: dict[str, float] | None = None,
                       seed: int = 0) -> dict[str, RegretCurve]:
    """Every policy on a fresh copy of the same world and stream (common random numbers)."""
    curves = {}
    for name in names:
        env = simulator_env(kind, seed)
        policy = make_policy(name, chosen).init(np.arange(env.n_actions), env.dim)
        curves[name] = run_regret(policy, env, events, batch_size=BATCH)
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


def start_vw_squarecb(problem: dict[str, np.ndarray], workdir: Path,
                      params: dict) -> subprocess.Popen | None:
    """Start VW SquareCB on the problem in the peers' venv (None when it is not installed)."""
    if not PEERS_PYTHON.exists():
        return None
    path = workdir / f"problem_{id(problem)}_{params[VW_KNOB.param]:g}.npz"
    np.savez(path, **problem)
    return subprocess.Popen(
        [str(PEERS_PYTHON), str(HERE / "peers_runner.py"), "vw_regret", str(path),
         "--events", str(problem["x"].shape[0]), "--params", json.dumps(params)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish_vw(proc: subprocess.Popen | None) -> dict | str:
    if proc is None:
        return "unavailable: peers venv missing (run tests/benchmarks/setup_peers.sh)"
    out, err = proc.communicate()
    if proc.returncode != 0:
        return f"unavailable: VW run failed ({err.strip().splitlines()[-1] if err else '?'})"
    return json.loads(out)


def line_style(name: str) -> dict:
    """One colour per policy family, the line style telling the variant apart."""
    colours = {"DiagLinUCB": "tab:blue", "DiagLinTS": "tab:orange", "LinUCB": "tab:green",
               "LinTS": "tab:red", "SquareCB": "tab:purple", "VW": "tab:brown",
               "eps-greedy": "tab:gray", "random": "tab:olive"}
    colour = next((c for k, c in colours.items() if name.startswith(k)), None)
    style = ":" if "centred" not in name and name.startswith("Diag") else "-"
    if name.startswith("eps-greedy") and "centred" not in name:
        style = ":"
    return {"color": colour, "linestyle": style, "lw": 1.6}


def plot(results: dict[str, dict[str, np.ndarray]], events: int, path: Path, env: str,
         floors: dict[str, float] | None = None,
         subtitles: dict[str, str] | None = None) -> None:
    """One panel per problem; curves of any resolution are drawn over 0..events; a dashed
    ``floor × t`` line where a problem has a linear floor; one shared legend below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    floors, subtitles = floors or {}, subtitles or {}
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5.6))
    handles: dict[str, object] = {}
    for ax, (kind, curves) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for name, curve in curves.items():
            (h,) = ax.plot(np.linspace(0, events, curve.size), curve, label=name,
                           **line_style(name))
            handles.setdefault(name, h)
        if kind in floors:
            (h,) = ax.plot([0, events], [0, floors[kind] * events], "k--", lw=1)
            handles.setdefault("linear floor × t (reference)", h)
        title = kind if env == "simulator" else f"{kind} contexts"
        ax.set_title(f"{title}\n{subtitles[kind]}" if kind in subtitles else title, fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative pseudo-regret (expected clicks lost)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
        ax.set_xlim(0, events)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=9,
               frameon=False)
    fig.suptitle(f"Cumulative pseudo-regret, {events:,} rounds in batches of {BATCH:,}\n"
                 f"environment: {ENV_TITLES[env]}", fontsize=11)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tune(env: str, events: int, with_vw: bool) -> dict:
    """Pick every policy's (and VW's) value from its grid on the tuning problem: least
    cumulative regret after ``events`` rounds, one run per value. Returns ``{"chosen": {name:
    value}, "grid": {name: {value: regret}}, "problem": description}``."""
    grid: dict[str, dict[float, float]] = {}
    if env == "simulator":
        kind, problem = "default world", None
        description = f"simulator '{kind}', world seed 1, {events:,} rounds"
    else:
        kind, problem = "gaussian", make_problem("gaussian", events, seed=1)
        description = f"linear-logistic gaussian contexts, seed 1, {events:,} rounds"
    with tempfile.TemporaryDirectory() as tmp:
        vw_procs = {}
        if with_vw and problem is not None:
            for value in VW_KNOB.grid:  # single-threaded runs, beside the recsys tuning
                vw_procs[value] = start_vw_squarecb(problem, Path(tmp), vw_params({VW_NAME: value}))
        for name, knob in TUNING.items():
            grid[name] = {}
            for value in knob.grid:
                chosen = {name: value}
                curve = (run_ours(problem, [name], chosen)[name] if problem is not None else
                         run_ours_simulator(kind, events, [name], chosen, seed=1)[name])
                grid[name][value] = curve.total
        if vw_procs:
            grid[VW_NAME] = {}
            for value, proc in vw_procs.items():
                vw = finish_vw(proc)
                if isinstance(vw, dict):
                    grid[VW_NAME][value] = vw["cum_regret"]
                else:
                    print(f"  VW {VW_KNOB.param}={value:g}: {vw}", file=sys.stderr)
    chosen = {name: min(values, key=values.get) for name, values in grid.items() if values}
    return {"chosen": chosen, "grid": grid, "problem": description}


def print_tuning(tuning: dict | None) -> None:
    """Which value each policy got, from which grid (or that the defaults were used)."""
    print("hyperparameters (same budget for every policy and for VW: one run per grid value)")
    if tuning is None:
        print("  not tuned: fixed defaults for every side "
              + ", ".join(f"{name} {k.param}={k.default:g}" for name, k in TUNING.items()
                          if k.grid) + f", VW {VW_KNOB.param}={VW_KNOB.default:g}")
        return
    print(f"  tuned on {tuning['problem']} (never a reported problem)")
    for name, values in tuning["grid"].items():
        if not values:
            continue
        knob = VW_KNOB if name == VW_NAME else TUNING[name]
        cells = ", ".join(f"{v:g}: {r:.0f}" for v, r in values.items())
        print(f"  {name:26s} {knob.param:12s} -> {tuning['chosen'][name]:<8g} "
              f"(regret per value: {cells})")


def experiment(events: int, with_vw: bool, kinds: list[str] | None = None,
               env: str = "linear-logistic", tuning: dict | None = None) -> dict:
    """Run everything; returns {kind: {name: total regret or 'unavailable: ...'}}, the curves'
    first/second-half per-round regret, the simulator's floors and optimum, and the plot.

    ``tuning`` is ``tune()``'s result (None: defaults). ``env`` defaults to the linear-logistic
    problem here (bench_bandits.py compares against VW on it); the command line defaults to the
    simulator."""
    chosen = tuning["chosen"] if tuning else None
    if env == "simulator":
        return experiment_simulator(events, with_vw, kinds, chosen)
    kinds = kinds or list(PROBLEMS)
    problems = {kind: make_problem(kind, events) for kind in kinds}
    table: dict[str, dict[str, float | str]] = {}
    halves: dict[str, dict[str, tuple[float, float]]] = {}
    curves_all: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        vw_procs = {kind: start_vw_squarecb(problems[kind], Path(tmp), vw_params(chosen))
                    for kind in kinds if with_vw}
        for kind in kinds:
            t0 = time.perf_counter()
            curves = run_ours(problems[kind], POLICIES, chosen)
            table[kind] = {name: c.total for name, c in curves.items()}
            halves[kind] = {name: (c.window_rate(0, 0.5), c.window_rate(0.5, 1))
                            for name, c in curves.items()}
            curves_all[kind] = {name: c.cumulative_regret for name, c in curves.items()}
            print(f"  [{kind}] recsys policies done in {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr)
        for kind, proc in vw_procs.items():
            vw = finish_vw(proc)
            if isinstance(vw, dict):
                table[kind][VW_NAME] = vw["cum_regret"]
                halves[kind][VW_NAME] = (vw["first_half"], vw["second_half"])
                curves_all[kind][VW_NAME] = np.asarray(vw["regret_curve"])
            else:
                table[kind][VW_NAME] = vw
    png = RESULTS / "regret_linear_logistic.png"
    plot(curves_all, events, png, env)
    return {"table": table, "halves": halves, "plot": str(png), "tuning": tuning}


def experiment_simulator(events: int, with_vw: bool, kinds: list[str] | None = None,
                         chosen: dict[str, float] | None = None) -> dict:
    """The recsys policies on the full simulator. VW is not run there: its runner consumes a
    problem as contexts, logistic parameters and uniform draws, which the simulator (noisy
    features, rewards from latents) is not."""
    kinds = kinds or list(SIM_PROBLEMS)
    table: dict[str, dict[str, float | str]] = {}
    halves: dict[str, dict[str, tuple[float, float]]] = {}
    curves_all: dict[str, dict[str, np.ndarray]] = {}
    floors: dict[str, float] = {}
    optimum: dict[str, float] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        env = simulator_env(kind)
        floors[kind], optimum[kind] = env.linear_floor(), env.optimal_reward()
        curves = run_ours_simulator(kind, events, POLICIES, chosen)
        table[kind] = {name: c.total for name, c in curves.items()}
        halves[kind] = {name: (c.window_rate(0, 0.5), c.window_rate(0.5, 1))
                        for name, c in curves.items()}
        curves_all[kind] = {name: c.cumulative_regret for name, c in curves.items()}
        if with_vw:
            table[kind][VW_NAME] = "linear-logistic only: --env linear-logistic --with-vw"
        print(f"  [{kind}] recsys policies done in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
    subtitles = {}
    for kind in kinds:
        cfg = SimulatorConfig(**SIM_PROBLEMS[kind])
        subtitles[kind] = (f"{cfg.n_items} items, d = {cfg.dim}, {cfg.n_users} users, feature "
                           f"noise {cfg.feature_noise}, optimum {optimum[kind]:.3f} clicks/round")
    png = RESULTS / "regret.png"
    plot(curves_all, events, png, "simulator", floors, subtitles)
    return {"table": table, "halves": halves, "floors": floors, "optimum": optimum,
            "plot": str(png)}


def print_tables(out: dict, events: int, env: str) -> None:
    """Total regret per policy and problem, then per-round regret in the first and second half."""
    names = sorted({n for row in out["table"].values() for n in row})
    kinds = list(out["table"])
    width = max(18, *(len(k) + 2 for k in kinds))
    print(f"environment: {ENV_TITLES[env]}")
    print(f"cumulative pseudo-regret after {events} rounds (batches of {BATCH} for recsys)")
    print(f"{'policy':28s}" + "".join(f"{k:>{width}s}" for k in kinds))
    notes = []
    for name in names:
        cells = []
        for k in kinds:
            v = out["table"][k].get(name, "-")
            if isinstance(v, float):
                cells.append(f"{v:{width}.0f}")
            elif name not in out["table"][k]:
                cells.append(f"{'-':>{width}s}")
            else:
                cells.append(f"{'see note':>{width}s}")
                notes.append(f"  note, {name}: {v}")
        print(f"{name:28s}" + "".join(cells))
    print("\n".join(dict.fromkeys(notes)))
    print("per-round regret, first half -> second half (sublinear: second clearly smaller)")
    print(f"{'policy':28s}" + "".join(f"{k:>{width}s}" for k in kinds))
    for name in names:
        cells = []
        for k in kinds:
            h = out["halves"][k].get(name)
            cells.append(f"{f'{h[0]:.4f} -> {h[1]:.4f}':>{width}s}" if h else f"{'-':>{width}s}")
        print(f"{name:28s}" + "".join(cells))
    for k in out.get("floors", {}):
        print(f"[{k}] optimal clicks/round {out['optimum'][k]:.4f}; linear floor "
              f"{out['floors'][k]:.4f} regret/round (greedy on the least-squares fit of the true "
              f"click probabilities)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=["simulator", "linear-logistic"], default="simulator")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--with-vw", action="store_true")
    parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                        help="tune every policy and VW on a separate problem (default: on)")
    parser.add_argument("--tune-events", type=int, default=50_000)
    args = parser.parse_args()
    tuning = tune(args.env, args.tune_events, args.with_vw) if args.tune else None
    out = experiment(args.events, args.with_vw, env=args.env, tuning=tuning)
    print_tuning(tuning)
    print_tables(out, args.events, args.env)
    if args.env == "linear-logistic":
        for kind in PROBLEMS:
            acc = diag_vs_full_accuracy(kind)
            print(f"mean-score RMSE vs true P(click), {kind} contexts, 50k uniform logs: "
                  f"Diag {acc['diag_rmse']:.4f}, Diag centred {acc['centred_rmse']:.4f}, "
                  f"full {acc['full_rmse']:.4f}; Diag-full {acc['diag_vs_full_rmse']:.4f}, "
                  f"centred-full {acc['centred_vs_full_rmse']:.4f}")
        corr = out["table"].get("correlated", {})
        if corr:
            print(f"Diag vs full regret on correlated contexts: DiagLinUCB "
                  f"{corr['DiagLinUCB']:.0f} (centred {corr['DiagLinUCB centred']:.0f}) vs LinUCB "
                  f"{corr['LinUCB (full)']:.0f}; DiagLinTS {corr['DiagLinTS']:.0f} (centred "
                  f"{corr['DiagLinTS centred']:.0f}) vs LinTS {corr['LinTS (full)']:.0f}")
    print(f"plot: {out['plot']}")


if __name__ == "__main__":
    main()
