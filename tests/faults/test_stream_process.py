"""Check e: SIGKILL of the ``recsys stream`` process, then a relaunch that resumes from its
checkpoint and ends equal to the undisturbed run.

``recsys stream`` runs as a subprocess on the checks' broker (an external cluster to it,
``kafka.bootstrap``) and joins the session's Ray (``ray.address``), with a config file that
names its checkpoint directory and lake. The test produces the traffic, kills the process at a
seeded random moment after its first checkpoint, launches it again, waits until a checkpoint
stands at the end of the input, and stops it with SIGTERM (an orderly stop: a last checkpoint).
The end state is read from storage and Kafka: the newest checkpoint's statistics, the lake, and
the rewards topic read ``read_committed``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recsys.checkpoint import CheckpointError, CheckpointStore
from recsys.topics import DEAD_LETTER, FEEDBACK, IMPRESSIONS, REWARDS
from streaming.pipeline import Topics
from streaming.topics import ensure_topics
from tests.faults.harness import (
    N_PARTS,
    PARTITIONS,
    SETTINGS_TOML,
    PacedTraffic,
    assert_statistics_equal,
    check_outputs,
    checkpoint_statistics,
    cut,
    input_offsets,
    moments,
    traffic_log,
)

# Minutes on a loaded machine (the first check also starts the broker and the reference run).
pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(900)]

STANDARD = Topics(IMPRESSIONS, FEEDBACK, REWARDS, DEAD_LETTER)


class Stream:
    """One ``recsys stream`` subprocess; its output is collected by a thread (for failures)."""

    def __init__(self, config: Path, data_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env["RECSYS_CONFIG"] = str(config)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "--data-dir", str(data_dir), "stream",
             "--status-interval", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    def wait_for(self, predicate, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(f"recsys stream exited ({self.process.returncode}) before "
                                     f"{what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"recsys stream: no {what} in {timeout_s:.0f}s:\n"
                                     f"{self.output()}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)


def _config(tmp_path: Path, bootstrap: str, ray_address: str) -> Path:
    path = tmp_path / "recsys.toml"
    path.write_text(
        f'[kafka]\nbootstrap = "{bootstrap}"\npartitions = {PARTITIONS}\n\n'
        f'[ray]\naddress = "{ray_address}"\n'
        + SETTINGS_TOML
        + f'checkpoint_uri = "{tmp_path / "checkpoints"}"\nlake_uri = "{tmp_path / "lake"}"\n')
    return path


def test_e_a_killed_stream_process_resumes_from_its_checkpoint(fault_broker, reference,
                                                               ray_session, tmp_path) -> None:
    bootstrap = fault_broker.bootstrap
    ensure_topics(bootstrap, {IMPRESSIONS: PARTITIONS, FEEDBACK: PARTITIONS,
                              REWARDS: PARTITIONS, DEAD_LETTER: 1})
    assert sum(input_offsets(bootstrap, IMPRESSIONS).values()) == 0, (
        "the standard topics must be empty: check e runs once per broker")
    config = _config(tmp_path, bootstrap, ray_session.get_runtime_context().gcs_address)
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    traffic = PacedTraffic(bootstrap, STANDARD, cut(traffic_log(), N_PARTS), interval_s=0.8)
    first = Stream(config, tmp_path / "data")
    second = None
    try:
        first.wait_for(lambda: any("resuming from the beginning" in x for x in first.lines),
                       "start-up line", timeout_s=180)
        traffic.start()
        first.wait_for(lambda: bool(store.list()), "first checkpoint", timeout_s=120)
        time.sleep(moments(1805, 1, 0.5, 5.0)[0])
        first.kill()  # SIGKILL: no last checkpoint, actors die with their driver
        assert first.process.returncode == -signal.SIGKILL
        killed_at = store.list()[-1]

        second = Stream(config, tmp_path / "data")
        second.wait_for(lambda: any("resuming from checkpoint" in x for x in second.lines),
                        "resume line", timeout_s=180)
        assert any(f"resuming from checkpoint {killed_at}" in x for x in second.lines), (
            f"the relaunch did not resume from the last checkpoint {killed_at}:\n"
            f"{second.output()}")
        traffic.done.wait(timeout=300)
        traffic.check()
        ends = {(topic, p): o for topic in (IMPRESSIONS, FEEDBACK)
                for p, o in input_offsets(bootstrap, topic).items()}

        def at_the_end() -> bool:
            try:
                ids = store.list()
                return bool(ids) and all(store.read(ids[-1]).offsets.get(tp) == o
                                         for tp, o in ends.items())
            except (OSError, CheckpointError):  # pruned while we read it: ask again
                return False

        second.wait_for(at_the_end, "checkpoint at the end of the input", timeout_s=180)
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=120) == 0, second.output()
    finally:
        for stream in (first, second):
            if stream is not None:
                stream.kill()
    context = f"first run:\n{first.output()}\nsecond run:\n{second.output()}"
    try:
        assert_statistics_equal(checkpoint_statistics(str(tmp_path / "checkpoints")),
                                reference.stats, "newest checkpoint's statistics")
        check_outputs(reference, bootstrap, STANDARD, tmp_path / "lake")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{context}") from None
