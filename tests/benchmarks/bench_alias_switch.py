"""Alias move → first slate served by the new champion, on the live system.

    .venv/bin/python tests/benchmarks/bench_alias_switch.py [--quick] [--moves 20]

The stack is the product's (``streaming.live.live_stack``: streaming pipeline + Ray Serve app, real
Kafka, an mlflow sqlite store). Two versions of a scored offline model (``LinearScorePolicy``,
dense mode, ε-greedy with exact propensities, over ``--items`` items at d = ``--dim``: a cheap
slate, so the poll interval does not blur the figure) are registered; the app
serves one arm, ``models:/NAME@champion``. A client polls ``POST /recommend`` back to back (one
connection, as fast as it is answered); the benchmark moves the alias to the other version
(``MlflowClient.set_registered_model_alias``) after a random pause, so moves fall at any phase of
the replica's look-up cycle, and times from the moment the move is committed to the first
response served by the new version. Rows: the default ``serve.model_refresh_s`` (2 s) and a
smaller one (0.25 s). Expected: about ``U(0, model_refresh_s)`` (when the next look-up comes) plus
the load of the new version in the replica's background thread; zero non-200 answers.

Writes ``tests/benchmarks/results/alias_switch.json`` and prints the table with the core count and
load average (this machine is shared: read the numbers with that in mind).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recsys.config import (
    KafkaSettings,
    MlflowSettings,
    ServeSettings,
    Settings,
    StreamSettings,
)
from recsys.policies.linear import LinearScorePolicy
from streaming.broker import free_port
from streaming.live import live_stack
from streaming.services import kafka_cluster, ray_runtime
from streaming.shards import dense_statistics

MODEL = "bench-champion"
K = 10
RESULTS = Path(__file__).parent / "results"


def register_versions(store: str, artifacts: Path, n_items: int, dim: int) -> None:
    """Versions 1 and 2 of MODEL (different item vectors); the champion alias on version 1."""
    import mlflow
    from mlflow import MlflowClient

    from recsys.registry import log_policy_model, scored_model

    mlflow.set_tracking_uri(store)
    experiment = mlflow.create_experiment("alias-switch", artifact_location=artifacts.as_uri())
    rng = np.random.default_rng(0)
    for seed in (1, 2):
        vectors = np.random.default_rng(seed).standard_normal((n_items, dim)) / np.sqrt(dim)
        policy = LinearScorePolicy(exploration="epsilon_greedy", epsilon=0.05,
                                   random_state=0).fit(np.arange(n_items), vectors,
                                                       rng.standard_normal(n_items) * 0.1)
        with mlflow.start_run(experiment_id=experiment):
            log_policy_model(scored_model(policy), registered_model_name=MODEL)
    MlflowClient(tracking_uri=store).set_registered_model_alias(MODEL, "champion", "1")


class Poller:
    """Requests slates back to back in a thread; every answer: (received at, status, version,
    seconds it took)."""

    def __init__(self, url: str, dim: int) -> None:
        self.url = url
        self.body = {"user_id": "u1", "context": {"dense": [0.1] * dim}, "k": K}
        self.answers: list[tuple[float, int, int | None, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = session.post(f"{self.url}/recommend", json=self.body, timeout=30)
                    status = r.status_code
                    version = r.json().get("model_version") if status == 200 else None
                except requests.RequestException:
                    status, version = 0, None
                done = time.monotonic()
                self.answers.append((done, status, version, done - sent))

    def first_at(self, version: int, after: float, timeout_s: float) -> float | None:
        """When the first answer from ``version`` that was *sent* after ``after`` arrived."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            answers = self.answers
            for at, _status, v, took in answers[seen:]:
                if v == version and at - took >= after:
                    return at
            seen = max(0, len(answers) - 1)
            time.sleep(0.002)
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def run_setting(kafka, store: str, tmp: Path, refresh_s: float, moves: int, n_items: int,
                dim: int) -> dict:
    """``moves`` alias moves on a stack whose replicas look the alias up every ``refresh_s``."""
    from mlflow import MlflowClient

    settings = Settings(
        data_dir=tmp, kafka=KafkaSettings(partitions=1), mlflow=MlflowSettings(tracking_uri=store),
        stream=StreamSettings(learners=1, shards=1, joiners=1, n_items=n_items, dim=dim,
                              window_ms=5_000, allowed_lateness_ms=1_000,
                              checkpoint_interval_s=3600.0),
        serve=ServeSettings(port=free_port(), policies=json.dumps(
            {"champ": f"models:/{MODEL}@champion"}), traffic="champ=1",
            model_refresh_s=refresh_s))
    client = MlflowClient(tracking_uri=store)
    client.set_registered_model_alias(MODEL, "champion", "1")
    latencies, target = [], 1
    with live_stack(settings, kafka.bootstrap, dense_statistics(np.arange(n_items), dim),
                    str(tmp / "ckpt"), client_options=kafka.client_options,
                    shard_name_prefix=f"bench-alias-{refresh_s}-") as live:
        poller = Poller(live.url, dim).start()
        try:
            if poller.first_at(1, 0.0, 60.0) is None:
                raise RuntimeError("the replica never served version 1")
            started, begin = time.monotonic(), len(poller.answers)
            rng = random.Random(0)
            for _ in range(moves):
                time.sleep(rng.uniform(0.2, 0.2 + refresh_s))  # any phase of the look-up
                target = 3 - target
                client.set_registered_model_alias(MODEL, "champion", str(target))
                moved = time.monotonic()
                at = poller.first_at(target, moved, 30.0 + 3 * refresh_s)
                if at is None:
                    raise RuntimeError(f"version {target} not served 30 s after the move")
                latencies.append(at - moved)
            window = poller.answers[begin:]
            elapsed = time.monotonic() - started
        finally:
            poller.stop()
    ms = np.array(latencies) * 1000
    request_ms = np.array([took for *_, took in window]) * 1000
    return {"model_refresh_s": refresh_s, "moves": moves,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean()),
            "requests": len(window), "requests_per_s": len(window) / elapsed,
            "non_200": sum(1 for _, status, *_ in window if status != 200),
            "request_p50_ms": float(np.percentile(request_ms, 50)),
            "request_p99_ms": float(np.percentile(request_ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=20, help="alias moves per setting")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--refresh", type=float, nargs="+", default=[2.0, 0.25],
                        help="serve.model_refresh_s values (default: the default 2 s and 0.25)")
    parser.add_argument("--quick", action="store_true", help="8 moves per setting")
    args = parser.parse_args()
    moves = 8 if args.quick else args.moves
    rows = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        base = Settings(data_dir=tmp, mlflow=MlflowSettings(tracking_uri=store))
        kafka = stack.enter_context(kafka_cluster(base))
        stack.enter_context(ray_runtime(replace(base, ray=replace(base.ray, num_cpus=2))))
        register_versions(store, tmp / "artifacts", args.items, args.dim)
        for i, refresh_s in enumerate(args.refresh):
            rows.append(run_setting(kafka, store, tmp / f"run{i}", refresh_s, moves, args.items,
                                    args.dim))
    load = os.getloadavg()
    print(f"\nAlias move → first slate from the new champion (scored model, {args.items:,} "
          f"items, d = {args.dim}, top-{K}, one client polling back to back); "
          f"{os.cpu_count()} cores, load average {load[0]:.1f}")
    print(f"  {'model_refresh_s':>15}{'moves':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'requests/s':>12}{'non-200':>9}{'req p50 ms':>12}{'req p99 ms':>12}")
    for r in rows:
        print(f"  {r['model_refresh_s']:>15.2f}{r['moves']:>7}{r['p50_ms']:>9.0f}"
              f"{r['p99_ms']:>9.0f}{r['max_ms']:>9.0f}{r['requests_per_s']:>12.0f}"
              f"{r['non_200']:>9}{r['request_p50_ms']:>12.1f}{r['request_p99_ms']:>12.1f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "alias_switch.json").write_text(json.dumps(
        {"items": args.items, "dim": args.dim, "k": K, "load_average": load[0],
         "cores": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
