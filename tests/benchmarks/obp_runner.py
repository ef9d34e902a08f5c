"""Runs Open Bandit Pipeline's estimators for bench_obp_parity.py, inside the peers' venv.

Imports nothing from recsys. OBP 0.5.7 is installed there without its dependencies (see
setup_peers.sh); its package ``__init__`` imports ``obp.policy``, which needs torch, but the OPE
estimators never use torch (``obp.utils`` imports it only for a tensor type check). So ``obp.ope``
is loaded without running ``obp/__init__.py`` and, when torch is absent, behind a two-name
stand-in for the ``torch`` module; the estimator code that runs is OBP's own, unchanged.

Usage (prints one JSON object on stdout):
  python obp_runner.py check                 # obp.ope imports and estimates
  python obp_runner.py parity REQUEST.json   # point estimates and intervals on .npz inputs
  python obp_runner.py timing ROUNDS ACTIONS POSITIONS SEED REPEAT N_BOOTSTRAP INTERVAL_LABELS
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ope_cases


def import_obp_ope() -> types.ModuleType:
    """``obp.ope`` without ``obp/__init__.py`` (and its torch-only policy modules)."""
    if importlib.util.find_spec("torch") is None:
        stand_in = types.ModuleType("torch")
        stand_in.Tensor = stand_in.tensor = type("Tensor", (), {})  # annotations in obp.utils
        sys.modules["torch"] = stand_in
    spec = importlib.util.find_spec("obp")
    if spec is None:
        raise SystemExit("obp is not installed in this venv (bash tests/benchmarks/setup_peers.sh)")
    package = types.ModuleType("obp")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["obp"] = package
    import obp.ope

    return obp.ope


def parity(request_path: str) -> dict:
    """Every job of the request: {npz, labels, alpha, n_bootstrap_samples, random_state,
    legacy_state} -> {label: {point, mean, lower, upper}}."""
    ope = import_obp_ope()
    request = json.loads(Path(request_path).read_text())
    results = []
    for job in request["jobs"]:
        with np.load(job["npz"], allow_pickle=False) as archive:
            data = {k: archive[k] for k in archive.files}
        results.append(ope_cases.evaluate(
            ope, data, job["labels"], job["alpha"], job["n_bootstrap_samples"],
            job["random_state"], job.get("legacy_state", False)))
    return {"results": results}


def timing(rounds: int, actions: int, positions: int, seed: int, repeat: int, n_boot: int,
           interval_labels: list[str]) -> dict:
    ope = import_obp_ope()
    start = time.perf_counter()
    data = ope_cases.random_inputs(rounds, actions, positions, seed, with_extras=False)
    built = time.perf_counter() - start
    return {"digest": ope_cases.digest(data), "build_s": built,
            "times": ope_cases.time_cases(ope, data, ope_cases.TIMED, repeat, n_boot,
                                          tuple(interval_labels))}


def main() -> None:
    task = sys.argv[1]
    if task == "check":
        ope = import_obp_ope()
        data = ope_cases.random_inputs(50, 4, 2, 0)
        out = {"obp.ope": "ok", "ipw": ope.InverseProbabilityWeighting().estimate_policy_value(
            **ope_cases.case_arguments("ipw", data))}
    elif task == "parity":
        out = parity(sys.argv[2])
    elif task == "timing":
        rounds, actions, positions, seed, repeat, n_boot = map(int, sys.argv[2:8])
        labels = [x for x in sys.argv[8].split(",") if x] if len(sys.argv) > 8 else []
        out = timing(rounds, actions, positions, seed, repeat, n_boot, labels)
    else:
        raise SystemExit(f"unknown task {task!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
