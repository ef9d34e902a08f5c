"""HTTP serving on the live system: latency at a fixed rate, Thompson sampling's cost, click
freshness, and the highest sustained rate — loopback only, bounded runs.

    .venv/bin/python tests/benchmarks/bench_serving.py [--quick] [--duration 60] [--generator-only]
        [--only ucb,sweep,ts,overload,...] [--saturation 250] [--overload-duration 30]
        [--inline-baseline]

The stack is the product's (``streaming.live.live_stack``): the streaming pipeline (1 learner,
2 shards, 1 joiner) running on the impressions the load produces, and the Ray Serve app scoring
top-10 of 10k items at d = 32 with statistics warm-started from 50k random events. The load comes
from ``recsys loadtest`` in a separate process (open loop, fixed rate, latency measured from the
scheduled send time too, so a slow server cannot hide its queueing). Rows:

* ε-mixed Diag-LinUCB (exact propensities) at ``--rate`` (200) requests/s for ``--duration`` s:
  target p99 ≤ 25 ms and zero 5xx (issue 9); and at ``--low-rate`` (50/s), which this 2-core
  machine sustains with the whole stack on it, so the latency without queueing is shown too;
* Diag-LinTS with 100 Monte Carlo replays per request for its propensities at ``--rate``
  (issue 17: aim p99 ≤ 50 ms at 200/s), numpy backend and torch (CPU, 1 thread) backend;
* freshness: click posted → served score changed, on probe items, measured while the
  ``--low-rate`` UCB load runs: target p99 ≤ 1 s;
* the highest rate (×``--sweep-factor`` steps from ``--sweep-start``, 10 s each) whose intended
  p99 stays ≤ 50 ms with no errors;
* overload (issue 17): ``--overload-factor`` (2) × ``--saturation`` requests/s of ε-Diag-LinUCB
  for ``--overload-duration`` s from one client process (timeout 10 s, up to 20,000 in flight),
  while a second process sends a light probe load (``--probe-rate``, 20/s) that goes on for
  ``--recovery-window`` s after the overload stops, and this process times ``GET /metrics``
  every 250 ms. Reported: the share of 503s (every other 5xx and transport error counted
  apart), the intended p99 of the accepted (200) requests (aim ≤ 100 ms, 2× the SLO), the
  recovery time (from the end of the overload until every later 1 s window of probe requests
  has an intended p99 ≤ 50 ms; aim ≤ 5 s), the worst probe window after it, the slowest
  ``/metrics`` answer during the overload (aim ≤ 100 ms) and the replica's shed counters;
* first, the load generator alone (``recsys.client.load``) against a stub that answers at once,
  in this process: the rate it achieves and how late it sends (sent − scheduled), i.e. the
  client's own share of the latencies above. ``--generator-only`` runs just this table, without
  Kafka or Ray (the figures the client tests do not assert, since they depend on the machine).

Writes ``tests/benchmarks/results/serving.json`` and prints the table with the core count and load
average (this machine is shared: read the numbers with that in mind).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recsys.bandits import DiagLinTS, DiagLinUCB, EpsilonGreedy, policy_spec
from recsys.client.freshness import measure_freshness, wait_until_served
from recsys.client.load import run_loadtest
from recsys.config import KafkaSettings, ServeSettings, Settings, StreamSettings
from streaming.broker import free_port
from streaming.live import live_stack
from streaming.services import kafka_cluster, ray_runtime
from streaming.shards import dense_statistics
from tests.benchmarks.text_table import print_table
from tests.client.stub_server import serve_app

N_ITEMS, DIM, K = 10_000, 32, 10
RESULTS = Path(__file__).parent / "results"
POLICIES = {
    "ucb": policy_spec(DiagLinUCB(alpha=0.5, epsilon=0.1, centred=True)),
    "ts": policy_spec(DiagLinTS(v=0.5, n_mc_draws=100, exploration_floor=0.02, centred=True)),
    "uniform": policy_spec(EpsilonGreedy(epsilon=1.0, centred=True)),
}




GENERATOR_RATES = (50.0, 200.0, 800.0, 2000.0)


def instant_app() -> FastAPI:
    """A stub ``POST /recommend`` that answers at once: what is left is the client's cost."""
    app = FastAPI()

    @app.post("/recommend")
    async def recommend() -> dict:
        return {"items": [1, 2, 3]}

    return app


def generator_table(duration: float) -> list[dict]:
    """The load generator alone against ``instant_app``, one run per rate in
    ``GENERATOR_RATES``; prints the table and returns its rows."""
    rows = []
    with serve_app(instant_app()) as url:
        for rate in GENERATOR_RATES:
            result = run_loadtest(f"{url}/recommend", rate, duration, lambda i: {"user_id": "u"},
                                  warmup_s=1.0)
            lag_ms = (result.sent - result.scheduled) * 1e3
            service = result.percentiles("service")
            rows.append({"target_rate": rate, "achieved_rate": result.achieved_rate,
                         "requests": result.requests, "send_lag_p50_ms": float(np.median(lag_ms)),
                         "send_lag_p99_ms": float(np.percentile(lag_ms, 99)),
                         "service_p99_ms": service["p99"], "skipped": result.skipped,
                         "errors": result.transport_errors + result.count_class(5)})
    print(f"\nload generator alone (stub answering at once, same process), {duration:.0f} s per "
          f"rate; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"  {'target/s':>9}{'achieved/s':>12}{'requests':>10}{'lag p50 ms':>12}"
          f"{'lag p99 ms':>12}{'svc p99 ms':>12}{'skipped':>9}{'errors':>8}")
    for r in rows:
        print(f"  {r['target_rate']:>9.0f}{r['achieved_rate']:>12.1f}{r['requests']:>10,}"
              f"{r['send_lag_p50_ms']:>12.2f}{r['send_lag_p99_ms']:>12.2f}"
              f"{r['service_p99_ms']:>12.2f}{r['skipped']:>9}{r['errors']:>8}")
    return rows


def warm_template():
    stats = dense_statistics(np.arange(N_ITEMS), DIM)
    rng = np.random.default_rng(0)
    contexts = rng.standard_normal((50_000, DIM)) / np.sqrt(DIM)
    items = rng.integers(N_ITEMS, size=50_000)
    stats.learn(contexts, items, (rng.random(50_000) < 0.1).astype(float))
    return stats


def loadtest(url: str, rate: float, duration: float, policy: str, out: Path, *,
             sweep: bool = False, factor: float = 1.5) -> dict:
    """``recsys loadtest`` in its own process; its JSON summary."""
    cmd = [sys.executable, "-m", "recsys.cli", "loadtest", "--url", url, "--rate", str(rate),
           "--duration", str(duration), "--warmup", "2", "--k", str(K), "--dim", str(DIM),
           "--policy", policy, "--json", str(out), "--plot", str(out.with_suffix(".png"))]
    if sweep:
        cmd += ["--sweep", "--factor", str(factor), "--p99-limit-ms", "50"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if not out.exists():
        raise RuntimeError(f"loadtest failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return json.loads(out.read_text())


def settings_for(data_dir: Path, backend: str) -> Settings:
    return Settings(
        data_dir=data_dir, kafka=KafkaSettings(partitions=2),
        stream=StreamSettings(learners=1, shards=2, joiners=1, n_items=N_ITEMS, dim=DIM,
                              window_ms=5_000, allowed_lateness_ms=1_000,
                              checkpoint_interval_s=30.0),
        serve=ServeSettings(port=free_port(), policies=json.dumps(POLICIES),
                            traffic="ucb=1", backend=backend,
                            torch_threads=1 if backend == "torch" else None))


def row(name: str, summary: dict, target: str) -> tuple:
    """One table row; a percentile is None when nothing succeeded."""
    ms = summary["intended_ms"]
    p50, p99 = (float("nan") if ms[q] is None else ms[q] for q in ("p50", "p99"))
    return (name, f"{summary['achieved_rate']:.0f}/s", summary["requests"], p50, p99,
            summary["5xx"] + summary["transport_errors"], summary["skipped"], target)


OVERLOAD_TIMEOUT_S = 10.0
OVERLOAD_MAX_IN_FLIGHT = 20_000
SLO_MS = 50.0
SCENARIOS = ("ucb_low", "sweep", "ucb", "ts", "ts_torch", "overload")


def client_main(argv: list[str]) -> None:
    """``--client URL RATE DURATION OUT``: one open-loop load in this process, its summary and
    per-request samples written to OUT with the ``time.perf_counter`` (system-wide monotonic on
    Linux, so comparable between processes) at which its schedule started."""
    from recsys.client.loadtest import recommend_bodies

    url, rate, duration, out = argv[0], float(argv[1]), float(argv[2]), Path(argv[3])
    make_body = recommend_bodies(10_000, DIM, K, seed=int(rate), policy="ucb")
    began = time.perf_counter() + 0.05  # run_loadtest starts its schedule 50 ms from now
    result = run_loadtest(f"{url}/recommend", rate, duration, make_body,
                          timeout_s=OVERLOAD_TIMEOUT_S, max_in_flight=OVERLOAD_MAX_IN_FLIGHT)
    out.write_text(json.dumps({"began": began, **result.to_dict(samples=True)}))


def start_client(url: str, rate: float, duration: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--client", url, str(rate), str(duration),
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def finish_client(process: subprocess.Popen, out: Path) -> dict:
    _, err = process.communicate(timeout=600)
    if process.returncode or not out.exists():
        raise RuntimeError(f"the load client failed: {err[-2000:]}")
    return json.loads(out.read_text())


def shed_counters(url: str) -> dict[str, float]:
    """The replica's ``recsys_serve_shed_total`` by reason."""
    import requests

    found = {}
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("recsys_serve_shed_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            found[reason] = float(line.split()[-1])
    return found


def window_p99s(result: dict, start: float, end: float) -> list[tuple[float, float]]:
    """``(window start, intended p99 ms)`` of each 1 s window of ``result``'s requests (by
    schedule time, seconds from ``start``) up to ``end``; a window's failed requests (no HTTP
    answer or not 200) count as infinitely slow."""
    samples = result["samples"]
    at = np.asarray(samples["scheduled_s"], dtype=float) + result["began"] - start
    latency = np.asarray([np.inf if v is None else v for v in samples["intended_s"]]) * 1e3
    latency[np.asarray(samples["status"]) != 200] = np.inf
    windows = []
    for w in np.arange(np.floor(at.min()), end, 1.0):
        inside = latency[(at >= w) & (at < w + 1.0)]
        if inside.size:
            windows.append((float(w), float(np.percentile(inside, 99, method="higher"))))
    return windows


def overload_run(url: str, rate: float, duration: float, probe_rate: float, recovery_s: float,
                 out: Path) -> dict:
    """``rate``/s for ``duration`` s from one client, a ``probe_rate``/s probe for ``duration +
    recovery_s`` s from another, ``/metrics`` timed every 250 ms meanwhile (see the docs)."""
    import requests

    before = shed_counters(url)
    probe = start_client(url, probe_rate, duration + recovery_s, out / "probe.json")
    flood = start_client(url, rate, duration, out / "flood.json")
    scrapes: list[float] = []
    failures = 0
    time.sleep(3.0)  # the clients have imported and started sending
    while flood.poll() is None:
        began = time.perf_counter()
        try:
            ok = requests.get(f"{url}/metrics", timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        scrapes.append((time.perf_counter() - began) * 1e3)
        failures += not ok
        time.sleep(max(0.0, 0.25 - (time.perf_counter() - began)))
    flood_result = finish_client(flood, out / "flood.json")
    probe_result = finish_client(probe, out / "probe.json")
    start = flood_result["began"]  # probe windows are timed from the flood's first send
    after = shed_counters(url)
    status = np.asarray(flood_result["samples"]["status"])
    intended = np.asarray([np.nan if v is None else v for v in
                           flood_result["samples"]["intended_s"]], dtype=float) * 1e3
    accepted = intended[status == 200]
    windows = window_p99s(probe_result, start, duration + recovery_s)
    late = [(w, p) for w, p in windows if w >= duration]
    recovered = next((w for i, (w, _) in enumerate(late)
                      if all(p <= SLO_MS for _, p in late[i:])), None)
    return {
        "rate": rate, "duration_s": duration, "sent": int(status.size),
        "achieved_rate": flood_result["achieved_rate"],
        "status_counts": flood_result["status_counts"],
        "share_503": float(np.mean(status == 503)) if status.size else float("nan"),
        "other_5xx": int(np.count_nonzero((status >= 500) & (status != 503))),
        "transport_errors": flood_result["transport_errors"],
        "errors": flood_result["errors"], "skipped": flood_result["skipped"],
        "accepted_p50_ms": float(np.percentile(accepted, 50)) if accepted.size else None,
        "accepted_p99_ms": (float(np.percentile(accepted, 99, method="higher"))
                            if accepted.size else None),
        "recovery_s": None if recovered is None else recovered - duration,
        "worst_probe_p99_after_recovery_ms": (
            None if recovered is None else max(p for w, p in late if w >= recovered)),
        "probe_windows": windows,
        "metrics_scrape_ms": {"max": max(scrapes, default=float("nan")),
                              "p50": float(np.median(scrapes)) if scrapes else float("nan"),
                              "n": len(scrapes), "failures": failures},
        "shed": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after},
    }


def print_overload(o: dict, factor: float, saturation: float) -> None:
    print(f"\noverload: {o['rate']:.0f}/s ({factor:g}× the saturating {saturation:.0f}/s) for "
          f"{o['duration_s']:.0f} s; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    rec = "not within the run" if o["recovery_s"] is None else f"{o['recovery_s']:.0f} s"
    worst = o["worst_probe_p99_after_recovery_ms"]
    rows = [
        ("sent / achieved", f"{o['sent']:,} / {o['achieved_rate']:.0f}/s", ""),
        ("answers", ", ".join(f"{c}: {n:,}" for c, n in o["status_counts"].items())
         + f"; transport errors {o['transport_errors']}, skipped {o['skipped']}", "503 only"),
        ("share of 503", f"{100 * o['share_503']:.1f}%", ""),
        ("accepted p50 / p99", f"{o['accepted_p50_ms']:.1f} / {o['accepted_p99_ms']:.1f} ms",
         "p99 ≤ 100 ms"),
        ("recovery to p99 ≤ 50 ms", rec, "≤ 5 s"),
        ("worst 1 s probe p99 after", "-" if worst is None else f"{worst:.1f} ms", "≤ 50 ms"),
        ("/metrics during overload", f"max {o['metrics_scrape_ms']['max']:.1f} ms, p50 "
         f"{o['metrics_scrape_ms']['p50']:.1f} ms over {o['metrics_scrape_ms']['n']}, "
         f"{o['metrics_scrape_ms']['failures']} failed", "≤ 100 ms"),
        ("shed by the replica", ", ".join(f"{k} {v:,.0f}" for k, v in o["shed"].items()), ""),
    ]
    print_table([tuple(map(str, r)) for r in rows], ("figure", "value", "target"))


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=200.0, help="the target rate (issue 9)")
    parser.add_argument("--low-rate", type=float, default=50.0,
                        help="a rate this 2-core machine sustains with the whole stack, so the "
                             "latency without queueing is on the table too")
    parser.add_argument("--quick", action="store_true", help="20 s runs, a short sweep")
    parser.add_argument("--freshness-probes", type=int, default=50)
    parser.add_argument("--generator-only", action="store_true",
                        help="only the load generator against a stub (no Kafka, no Ray)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated runs among {', '.join(SCENARIOS)} (default all; "
                             "ucb_low includes the freshness probes)")
    parser.add_argument("--sweep-start", type=float, default=25.0)
    parser.add_argument("--sweep-factor", type=float, default=1.5)
    parser.add_argument("--saturation", type=float, default=None,
                        help="the saturating rate the overload doubles (default: the sweep's "
                             "first failing rate when it ran, else 250)")
    parser.add_argument("--overload-factor", type=float, default=2.0)
    parser.add_argument("--overload-duration", type=float, default=30.0)
    parser.add_argument("--probe-rate", type=float, default=20.0)
    parser.add_argument("--recovery-window", type=float, default=20.0)
    parser.add_argument("--inline-baseline", action="store_true",
                        help="score on Ray's user-code loop, nothing shed (the replica before "
                             "admission control), to compare with on the same machine")
    args = parser.parse_args()
    if args.inline_baseline:  # read by the replicas, which inherit this environment
        import recsys.serving.server as server
        from recsys.serving.admission import INLINE_ENV

        os.environ[INLINE_ENV] = "1"
        server.USER_CODE_ON_SERVER_LOOP = False
    only = set(args.only.split(","))
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"--only: expected some of {', '.join(SCENARIOS)}, got {sorted(unknown)}")
    duration = 20.0 if args.quick else args.duration
    RESULTS.mkdir(exist_ok=True)
    rows, results = [], {}
    if args.generator_only or args.only == ",".join(SCENARIOS):
        results["generator"] = generator_table(5.0 if args.quick else 10.0)
    if args.generator_only:
        (RESULTS / "serving_generator.json").write_text(json.dumps(results["generator"],
                                                                   indent=2))
        return
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        base = settings_for(Path(tmp), "numpy")
        kafka = stack.enter_context(kafka_cluster(base))
        stack.enter_context(ray_runtime(replace(base, ray=replace(base.ray, num_cpus=2))))
        template = warm_template()
        for backend in ("numpy", "torch"):
            if backend == "torch" and "ts_torch" not in only:
                continue
            settings = settings_for(Path(tmp) / backend, backend)
            with live_stack(settings, kafka.bootstrap, template, f"{tmp}/{backend}/ckpt",
                            client_options=kafka.client_options,
                            shard_name_prefix=f"bench-{backend}-") as live:
                if backend == "numpy" and "ucb_low" in only:
                    fresh: dict = {}
                    probes = list(range(N_ITEMS, N_ITEMS + args.freshness_probes))
                    with live.driver.paused() as pipeline:
                        pipeline.add_items(probes)
                    context = (np.ones(DIM) / np.sqrt(DIM)).tolist()
                    wait_until_served(live.url, probes[-1], context, policy="uniform")

                    def probe(into: dict = fresh, items: list = probes,
                              ctx: list = context, url: str = live.url) -> None:
                        time.sleep(3.0)  # under load
                        into["result"] = measure_freshness(url, items, ctx, policy="uniform")

                    # the sustainable rate (with the freshness probes) first: a saturating run
                    # leaves lag in the stream behind it for a while
                    prober = threading.Thread(target=probe)
                    prober.start()
                    low = loadtest(live.url, args.low_rate, duration, "ucb",
                                   RESULTS / "serving_ucb_low.json")
                    prober.join()
                    results["ucb_low"] = low
                    rows.append(row("Diag-LinUCB ε=0.1, numpy", low, "(below saturation)"))
                    f = fresh["result"]
                    results["freshness"] = {**f.percentiles_ms(), "timeouts": f.timeouts,
                                            "probes": len(f.latencies_s)}
                if backend == "numpy" and "sweep" in only:
                    sweep = loadtest(live.url, args.sweep_start, 8.0 if args.quick else 10.0,
                                     "ucb", RESULTS / "serving_sweep.json", sweep=True,
                                     factor=args.sweep_factor)
                    results["sweep"] = sweep
                if backend == "numpy" and "ucb" in only:
                    ucb = loadtest(live.url, args.rate, duration, "ucb",
                                   RESULTS / "serving_ucb.json")
                    results["ucb_target"] = ucb
                    rows.insert(0, row("Diag-LinUCB ε=0.1, numpy", ucb, "p99 ≤ 25 ms, 0 5xx"))
                    time.sleep(5.0)  # let the stream catch up before the next run
                if (backend == "numpy" and "ts" in only) or backend == "torch":
                    ts = loadtest(live.url, args.rate, duration, "ts",
                                  RESULTS / f"serving_ts_{backend}.json")
                    results[f"ts_{backend}"] = ts
                    rows.append(row(f"Diag-LinTS, 100 MC draws, {backend}", ts,
                                    "p99 ≤ 50 ms"))
                    time.sleep(5.0)
                if backend == "numpy" and "overload" in only:
                    saturation = args.saturation
                    if saturation is None:
                        tried = results.get("sweep", {}).get("results", [])
                        failed = [r["target_rate"] for r in tried
                                  if r["target_rate"] > (results["sweep"]["best_rate"] or 0)]
                        saturation = min(failed) if failed else 250.0
                    with tempfile.TemporaryDirectory() as out:
                        results["overload"] = overload_run(
                            live.url, args.overload_factor * saturation,
                            10.0 if args.quick else args.overload_duration, args.probe_rate,
                            args.recovery_window, Path(out))
                    results["overload"]["saturation"] = saturation
    load = os.getloadavg()
    if rows:
        print(f"\nHTTP serving, top-{K} of {N_ITEMS:,} items, d = {DIM}, stream running; "
              f"{os.cpu_count()} cores, load average {load[0]:.1f}; {duration:.0f} s per run, "
              "latency from the scheduled send (ms)")
        print_table([(r[0], r[1], f"{r[2]:,}", f"{r[3]:.1f}", f"{r[4]:.1f}", str(r[5]),
                      str(r[6]), r[7]) for r in rows],
                    ("run", "rate", "requests", "p50", "p99", "5xx+transport", "skipped",
                     "target"))
    if "freshness" in results:
        f = results["freshness"]
        print(f"  freshness, click → served score changed (under the {args.low_rate:.0f}/s "
              f"load): p50 {f['p50']:.0f} ms, p99 {f['p99']:.0f} ms, max {f['max']:.0f} ms over "
              f"{f['probes']} probes, {f['timeouts']} timeouts   target p99 ≤ 1 s")
    if "sweep" in results:
        sweep = results["sweep"]
        print(f"  highest sustained rate with intended p99 ≤ 50 ms and no errors: "
              f"{sweep['best_rate']}/s  (tried: " + ", ".join(
                  f"{r['target_rate']:.0f}/s p99 {r['intended_ms']['p99']:.0f} ms"
                  for r in sweep["results"]) + ")")
    if "overload" in results:
        print_overload(results["overload"], args.overload_factor,
                       results["overload"]["saturation"])
    name = "serving.json" if only == set(SCENARIOS) else f"serving_{'_'.join(sorted(only))}.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
