"""Checkpoint duration and recovery time of the streaming pipeline at 1M items x d = 32.

Starts an embedded broker and a local Ray, fills unique topics with synthetic impressions and
clicks over the catalogue, runs the pipeline (2 learners, 2 shards, 1 joiner, no lake) to the
end, and reports the checkpoint's phases and size; then kills a learner, a shard and a joiner in
turn mid-stream and times each local recovery from the kill until events are processed again
(the supervisor finds the death itself), and a global rebuild of every actor for comparison.
Median of ``--repeat`` checkpoints; recovery rows are single runs (noisy on a busy machine).

Usage: python tests/benchmarks/bench_checkpoint.py [--items 1000000] [--dim 32] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from recsys.config import StreamSettings, load_settings
from recsys.events import Context, Feedback, Impression, SlateEntry
from recsys.producer import EventProducer
from streaming.pipeline import StreamPipeline, Topics
from streaming.services import kafka_cluster, ray_runtime
from streaming.shards import dense_statistics
from streaming.topics import ensure_topics


def produce(bootstrap: str, topics: Topics, n_requests: int, n_items: int, dim: int,
            start: int, seed: int) -> None:
    """Requests with 5-item slates over the catalogue and a click on a fifth of the slots."""
    rng = np.random.default_rng(seed)
    with EventProducer(bootstrap) as producer:
        for r in range(start, start + n_requests):
            t = 1_700_000_000_000 + r * 5
            items = rng.choice(n_items, 5, replace=False)
            rid = f"r{r}"
            producer.send(Impression(
                request_id=rid, event_time_ms=t, user_id=f"u{r % 1000}",
                context=Context(dense=tuple(rng.normal(size=dim).round(4).tolist())),
                policy_name="bench", policy_version=1,
                slate=tuple(SlateEntry(item_id=int(i), position=k, score=0.0, propensity=0.2)
                            for k, i in enumerate(items)),
            ), topics.impressions)
            for k in np.flatnonzero(rng.random(5) < 0.2):
                producer.send(Feedback(request_id=rid, event_time_ms=t + 50, user_id=f"u{r % 1000}",
                                       item_id=int(items[k]), position=int(k),
                                       event_type="click"), topics.feedback)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k items, 1 repetition")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeat, args.requests = 100_000, 1, 1_000
    settings = load_settings(cli={"ray.object_store_memory_mb": 6144, "ray.num_cpus": 2})
    stream = StreamSettings(learners=2, shards=2, joiners=1, dim=args.dim, n_items=args.items,
                            checkpoint_interval_s=1e9, window_ms=1_000, allowed_lateness_ms=100)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, kafka_cluster(settings) as cluster, \
            ray_runtime(settings):
        suffix = uuid.uuid4().hex[:8]
        topics = Topics(f"b.imps.{suffix}", f"b.fbs.{suffix}", f"b.rewards.{suffix}",
                        f"b.dead.{suffix}")
        ensure_topics(cluster.bootstrap, {topics.impressions: 2, topics.feedback: 2,
                                          topics.rewards: 2, topics.dead_letter: 1})
        produce(cluster.bootstrap, topics, args.requests, args.items, args.dim, 0, seed=0)
        template = dense_statistics(np.arange(args.items), args.dim)
        pipeline = StreamPipeline(cluster.bootstrap, stream, template, f"{tmp}/checkpoints",
                                  topics=topics)
        started = time.perf_counter()
        pipeline.start()
        rows.append(("pipeline start (build actors, ship shards)",
                     f"{time.perf_counter() - started:.2f} s"))
        reports = []
        for _ in range(args.repeat):
            pipeline.run_to_end()
            reports.append(pipeline.coordinator.last)
        def median(phase: str) -> str:
            return f"{statistics.median(getattr(r, phase) for r in reports):.2f} s"

        written = Path(tmp) / "checkpoints" / reports[-1].checkpoint_id
        rows += [
            (f"checkpoint total (median of {len(reports)})", median("duration_s")),
            ("  drain readers to the cut", median("drain_s")),
            ("  shard snapshots to the driver", median("snapshot_s")),
            ("  write npz + manifest", median("write_s")),
            ("checkpoint size on disk", f"{directory_bytes(written) / 2**20:,.0f} MiB"),
        ]
        import ray

        completed: list[float] = []
        pipeline.hooks.subscribe(lambda e: completed.append(e.detail["duration_s"])
                                 if e.kind == "recovery.completed" else None)
        start = args.requests
        for role in ("learners", "shards", "joiners", None):
            start += args.requests
            produce(cluster.bootstrap, topics, args.requests, args.items, args.dim, start,
                    seed=start)
            pipeline.step()
            before = pipeline.recoveries
            killed = time.perf_counter()
            if role is None:  # every actor rebuilt, as recovery did before it was local
                pipeline.recover()
            else:
                ray.kill(getattr(pipeline.actors, role)[0], no_restart=True)
            while pipeline.step() == 0 or pipeline.recoveries == before:
                pass
            what = (f"kill a {role[:-1]}: local recovery" if role else
                    "global rebuild of every actor (for comparison)")
            rows.append((f"{what}, kill -> events flow again",
                         f"{time.perf_counter() - killed:.2f} s "
                         f"(recovery itself {completed[-1]:.2f} s)"))
            pipeline.run_to_end()
        pipeline.stop(checkpoint=False)
    load = os.getloadavg()
    print(f"streaming checkpoints: {args.items:,} items x d={args.dim} (centred float64), "
          f"2 shards, 2 learners; {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
