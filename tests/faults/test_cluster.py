"""The pipeline on a real cluster, really disturbed (issue 18, deliverable 6).

A three-broker KRaft Kafka cluster (``streaming.broker_cluster``: topics replicated 3 times,
``min.insync.replicas`` 2) and a Ray cluster of separate ``ray start`` processes (a head without
CPUs and two worker nodes, ``tests.faults.ray_cluster``). The pipeline runs in a driver process of
its own connected with ``ray.init(address=...)`` (this module run as a script): the test process
may hold the session's local Ray, and a driver outside the test is what production has.

1. Half of a seeded messy log is produced before the pipeline starts (a backlog): the driver
   reports how fast the learners drained it (events/s into the shards, no fault yet).
2. The other half is produced at a pace while, at seeded random wall-clock moments, the leader
   broker of an input partition is SIGKILLed (and started again a few seconds later) and the
   Ray worker node holding the most pipeline actors loses all its processes (raylet, workers,
   agents). Nothing outside the pipeline restarts an actor or retries a call.
3. The end checks of ``tests.faults.harness``: statistics equal to the undisturbed run's
   (``truth_stats`` of the log, which the undisturbed run equals: ``harness.compute_reference``),
   every lake offset once, and the ``read_committed`` rewards holding each (request_id, item_id)
   once.

The figures (throughput, each recovery's duration, from each fault to the pipeline flowing
again) are printed; run with ``-s`` to see them::

    .venv/bin/python -m pytest -q -s -m faults tests/faults/test_cluster.py
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pickle
import random
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streaming.pipeline import Topics
from tests.faults.harness import (
    SETTINGS,
    Faults,
    PacedTraffic,
    assert_lake_exactly_once,
    assert_rewards_exactly_once,
    assert_statistics_equal,
    cut,
    lake_offsets,
    produce_all,
    rewards_in_kafka,
    template,
)
from tests.streaming.event_log import Log, dense_contexts, generate_log, truth_stats

SEED = 1806
N_REQUESTS = 12_000  # about 50k input records
PARTITIONS, SLATE, N_ITEMS = 2, 4, 50
PACED_PARTS, INTERVAL_S = 10, 2.0  # the second half over 20 s
BROKER_KILL_S = (2.0, 8.0)  # after the paced traffic starts
BROKER_DOWN_S = (4.0, 8.0)
NODE_KILL_S = (8.0, 14.0)
DRIVER_TIMEOUT_S = 240.0


def _log() -> Log:
    return generate_log(SEED, n_requests=N_REQUESTS, partitions=PARTITIONS, slate_size=SLATE,
                        n_items=N_ITEMS, messy=True)


def _concat(parts: list[Log]) -> Log:
    """The parts one after the other (each stream of each partition in order)."""
    out = Log({p: [] for p in parts[0].impressions}, {p: [] for p in parts[0].feedback})
    for part in parts:
        for source, target in ((part.impressions, out.impressions),
                               (part.feedback, out.feedback)):
            for p, keyed in source.items():
                target[p] += keyed
    return out


# ---------------------------------------------------------------------------- the tests


def test_every_ray_node_gets_its_own_ports_and_directory() -> None:
    """Nodes on one host must not share a port or a temporary directory (nothing is started)."""
    from tests.faults.ray_cluster import RayCluster

    cluster = RayCluster(workers=2, worker_cpus=4)
    try:
        def flag(node, name: str) -> str:
            return node.command[node.command.index(name) + 1]

        head, *workers = cluster.nodes
        assert "--head" in head.command and flag(head, "--num-cpus") == "0"
        assert all(flag(w, "--address") == cluster.address and flag(w, "--num-cpus") == "4"
                   for w in workers)
        port_flags = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
                      "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                      "--runtime-env-agent-port", "--min-worker-port"]
        ports = [int(flag(n, f)) for n in cluster.nodes for f in port_flags]
        assert len(set(ports)) == len(ports)
        assert len({flag(n, "--temp-dir") for n in cluster.nodes}) == 3
        assert all(len(str(n.temp_dir)) < 40 for n in cluster.nodes)  # unix socket paths
    finally:
        cluster.stop()
    assert not cluster.root.exists()


@pytest.mark.faults
@pytest.mark.integration
@pytest.mark.timeout(600)  # about 2.5 min on a quiet 2-core machine; much more under load
def test_the_pipeline_rides_through_a_broker_and_a_ray_node_lost_mid_run(tmp_path) -> None:
    from streaming.broker_cluster import KafkaBrokerCluster
    from streaming.topics import ensure_topics
    from tests.faults.ray_cluster import RayCluster

    log = _log()
    halves = cut(log, 2 * PACED_PARTS)
    backlog, paced = _concat(halves[:PACED_PARTS]), halves[PACED_PARTS:]
    rng = random.Random(SEED)
    broker_kill = rng.uniform(*BROKER_KILL_S)
    broker_back = broker_kill + rng.uniform(*BROKER_DOWN_S)
    node_kill = rng.uniform(*NODE_KILL_S)
    victim_topic = rng.choice(["impressions", "feedback"])
    victim_partition = rng.randrange(PARTITIONS)

    kafka = KafkaBrokerCluster(3)
    ray_cluster = RayCluster(workers=2, worker_cpus=4)
    driver: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(kafka.start), pool.submit(ray_cluster.start)]
    try:
        for future in futures:
            future.result()
        clusters_up = time.monotonic() - started
        bootstrap = kafka.bootstrap
        topics = Topics("c.imps", "c.fbs", "c.rewards", "c.dead")
        ensure_topics(bootstrap, {topics.impressions: PARTITIONS, topics.feedback: PARTITIONS,
                                  topics.rewards: PARTITIONS, topics.dead_letter: 1},
                      replication_factor=3)
        for topic in (topics.impressions, topics.feedback, topics.rewards):
            assert all(len(p["replicas"]) == 3 for p in kafka.partitions(topic).values())
            assert _topic_config(bootstrap, topic)["min.insync.replicas"] == "2"
        produce_all(bootstrap, backlog, topics)

        config = {"address": ray_cluster.address, "bootstrap": bootstrap, "root": str(tmp_path),
                  "topics": [topics.impressions, topics.feedback, topics.rewards,
                             topics.dead_letter],
                  "backlog_records": backlog.n_events}
        (tmp_path / "driver.json").write_text(json.dumps(config))
        with open(tmp_path / "driver.log", "wb") as out:
            driver = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.test_cluster", str(tmp_path / "driver.json")],
                stdout=out, stderr=subprocess.STDOUT, env=ray_cluster._environment(),
                cwd=Path(__file__).resolve().parents[2])
        drained = _wait_for(tmp_path / "backlog_drained", driver, tmp_path, DRIVER_TIMEOUT_S)

        victims: dict[str, Any] = {}

        def kill_leader() -> None:
            topic = getattr(topics, victim_topic)
            victims["broker"] = kafka.leader_of(topic, victim_partition)
            victims["broker_topic"] = f"{topic}[{victim_partition}]"
            kafka.kill(victims["broker"])
            victims["broker_killed_at"] = time.monotonic()

        def restart_broker() -> None:
            victims["broker_rejoined_s"] = kafka.restart(victims["broker"])

        def kill_node() -> None:
            workers = [n.name for n in ray_cluster.nodes if not n.head]
            on = {name: ray_cluster.actors(name) for name in workers}
            victims["node"] = max(workers, key=lambda n: ("Learner" in on[n], len(on[n])))
            victims["node_actors"] = on[victims["node"]]
            victims["node_pids"] = len(ray_cluster.kill(victims["node"]))
            victims["node_killed_at"] = time.monotonic()

        traffic = PacedTraffic(bootstrap, topics, paced, INTERVAL_S).start()
        faults = Faults()
        faults.at(broker_kill, "SIGKILL the leader broker of an input partition", kill_leader)
        faults.at(broker_back, "restart that broker", restart_broker)
        faults.at(node_kill, "kill a Ray worker node", kill_node)
        faults.start(traffic.started_at)
        deadline = time.monotonic() + DRIVER_TIMEOUT_S
        while not (traffic.done.is_set() and faults.finished()):
            assert driver.poll() is None, f"the driver died:\n{_tail(tmp_path / 'driver.log')}"
            assert time.monotonic() < deadline, "the traffic or the faults did not finish"
            time.sleep(0.2)
        traffic.check()
        assert not faults.errors, "\n".join(faults.errors)
        (tmp_path / "to_end").touch()
        try:
            driver.wait(timeout=max(10.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not finish:\n{_tail(tmp_path / 'driver.log')}\n"
                        f"hook events:\n{_tail(tmp_path / 'events.jsonl', 30)}")
        results = json.loads((tmp_path / "results.json").read_text())
        context = _describe(results, faults, victims)
        assert driver.returncode == 0 and "error" not in results, (
            f"the pipeline failed:\n{results.get('error', _tail(tmp_path / 'driver.log'))}"
            f"\n{context}")

        from tests.benchmarks.text_table import print_table

        print()
        print_table(_figures(results, victims, drained, clusters_up, log.n_events,
                             time.monotonic() - started), ["cluster test", "figure"])

        # the faults happened as planned, and the cluster saw them
        assert victims["node_actors"], f"the killed node held no pipeline actor\n{context}"
        dead = [n for n in results["ray_nodes"] if not n["Alive"]]
        assert len(dead) == 1 and len(results["ray_nodes"]) == 3, results["ray_nodes"]
        assert results["recoveries"] >= 1, f"no recovery after the node was lost\n{context}"

        # the three end checks
        with open(tmp_path / "statistics.pkl", "rb") as file:
            stats = pickle.load(file)
        try:
            assert_statistics_equal(stats, truth_stats(template(), log, dense_contexts))
            keys, offsets = rewards_in_kafka(bootstrap, topics.rewards)
            assert_rewards_exactly_once(keys, Counter(log.truth))
            assert_lake_exactly_once(lake_offsets(tmp_path / "lake"), bootstrap, topics, offsets)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{context}") from None
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        with contextlib.suppress(Exception):
            ray_cluster.stop()
        kafka.stop()


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    """The topic's effective configuration (broker defaults included)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                           config_filter="all")
    finally:
        admin.close()
    return {key: str(entry["value"]) for key, entry in described["topic"][topic].items()}


def _wait_for(marker: Path, driver: subprocess.Popen[bytes], root: Path, timeout_s: float
              ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if driver.poll() is not None:
            results = root / "results.json"
            error = json.loads(results.read_text()).get("error") if results.exists() else None
            pytest.fail(f"the driver exited ({driver.returncode}) before {marker.name}:\n"
                        f"{error or _tail(root / 'driver.log')}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {marker.name} in {timeout_s:.0f}s:\n{_tail(root / 'driver.log')}")
        time.sleep(0.2)
    time.sleep(0.1)
    return json.loads(marker.read_text())


def _tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _describe(results: dict[str, Any], faults: Faults, victims: dict[str, Any]) -> str:
    events = "\n".join(f"  {at:9.2f} {kind} {detail}" for kind, at, detail in
                       results.get("events", []))
    return (f"faults (s after the paced traffic started):\n{faults.describe()}\n"
            f"victims: {victims}\nhook events (monotonic s):\n{events}\n"
            f"health: {results.get('health')}\nrecoveries: {results.get('recoveries')}")


def _figures(results: dict[str, Any], victims: dict[str, Any], drained: dict[str, Any],
             clusters_up: float, n_events: int, total_s: float) -> list[tuple[str, str]]:
    """The figures: throughput, each recovery's duration, and from each fault to the end of the
    first recovery after it (times are time.monotonic(), shared by the test and the driver)."""
    rows = [
        ("cores / load average (1 min)", f"{os.cpu_count()} / {os.getloadavg()[0]:.1f}"),
        ("clusters up (3 brokers; head + 2 Ray workers)", f"{clusters_up:.1f} s"),
        ("backlog drained into the shards, no fault",
         f"{drained['records'] / drained['seconds']:,.0f} events/s "
         f"({drained['records']:,} records in {drained['seconds']:.1f} s)"),
        ("whole log: pipeline start to the last checkpoint",
         f"{n_events:,} records in {results['run_s']:.1f} s (half paced, with the faults)"),
    ]
    for kind, at, detail in results.get("events", []):
        if kind == "recovery.completed":
            rows.append((f"recovery ({detail.get('scope', '?')}), completed at {at:.1f}",
                         f"{float(detail.get('duration_s', 'nan')):.2f} s"))
    recovered = [at for kind, at, _ in results.get("events", []) if kind == "recovery.completed"]
    for fault, key in (("broker SIGKILLed", "broker_killed_at"),
                       ("Ray node killed", "node_killed_at")):
        at = victims.get(key)
        if at is None:
            continue
        after = [t for t in recovered if t > at]
        rows.append((f"{fault} at {at:.1f} -> the next recovery completed",
                     f"{after[0] - at:.1f} s" if after else "none (rode through)"))
    if "broker_rejoined_s" in victims:
        rows.append(("killed broker restarted -> registered again",
                     f"{victims['broker_rejoined_s']:.1f} s"))
    rows.append(("test wall time", f"{total_s:.0f} s"))
    return rows


# ---------------------------------------------------------------------------- the driver


def _learner_records(pipeline: Any) -> int:
    """Records the learners have consumed (their partitions of impressions and feedback)."""
    import ray

    assert pipeline.actors is not None
    counters = ray.get([a.counters.remote() for a in pipeline.actors.learners], timeout=30)
    return sum(int(c.get("consumed", 0)) for c in counters)


def driver_main(config_path: str) -> int:
    """Run the pipeline on the cluster: drain the backlog (timed), run until told, run to the
    end; leave the statistics and the hook events beside the config."""
    import ray

    from tests.faults.harness import HookLog, make_pipeline, subscribe

    config = json.loads(Path(config_path).read_text())
    root = Path(config["root"])
    results: dict[str, Any] = {"events": []}
    hooks = HookLog(t0=0.0)  # absolute time.monotonic(): comparable with the test's clock
    journal = open(root / "events.jsonl", "a")  # noqa: SIM115 - closed in finally
    hooks.callbacks.append(lambda e: journal.write(json.dumps(
        [e.kind, e.at_s, {k: repr(v) for k, v in e.detail.items()}]) + "\n") or journal.flush())
    pipeline = None
    try:
        ray.init(address=config["address"], log_to_driver=False, logging_level="WARNING")
        pipeline = make_pipeline(config["bootstrap"], Topics(*config["topics"]), root, SETTINGS)
        subscribe(pipeline, hooks)
        pipeline.start()
        began = time.monotonic()
        while (records := _learner_records(pipeline)) < config["backlog_records"]:
            pipeline.run_for(0.2)
            if time.monotonic() - began > DRIVER_TIMEOUT_S:
                raise TimeoutError(f"the backlog was not drained in {DRIVER_TIMEOUT_S:.0f}s")
        drained = {"records": records, "seconds": time.monotonic() - began}
        (root / "backlog_drained").write_text(json.dumps(drained))
        while not (root / "to_end").exists():
            pipeline.run_for(0.5)
            if time.monotonic() - began > DRIVER_TIMEOUT_S:
                raise TimeoutError("the test never said to run to the end")
        pipeline.run_to_end(timeout_s=120.0)
        results["run_s"] = time.monotonic() - began
        with open(root / "statistics.pkl", "wb") as file:
            pickle.dump(pipeline.statistics(), file)
        results["recoveries"] = pipeline.recoveries
        health = getattr(pipeline, "health", None)
        results["health"] = health() if callable(health) else None
        results["ray_nodes"] = [{"NodeID": n["NodeID"], "Alive": n["Alive"]} for n in ray.nodes()]
        return 0
    except BaseException:  # the test reports it
        results["error"] = traceback.format_exc()
        return 1
    finally:
        results["events"] = [(k, at, {key: repr(v) if not isinstance(v, int | float | str)
                                      else v for key, v in d.items()})
                             for k, at, d in hooks.events]
        (root / "results.json").write_text(json.dumps(results, default=repr))
        journal.close()
        if pipeline is not None:
            with contextlib.suppress(Exception):
                pipeline.stop(checkpoint=False)


if __name__ == "__main__":
    sys.exit(driver_main(sys.argv[1]))
