"""The live system in one process: the streaming pipeline driven in a background thread and the
serving app on Ray Serve reading its shards. ``recsys serve``, the demo, the integration tests and
the serving benchmarks all start it the same way, with :func:`live_stack`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from recsys.bandits.protocol import Statistics
from recsys.config import Settings
from recsys.serving.server import start_serving, stop_serving
from recsys.serving.service import ServiceConfig
from streaming.pipeline import StreamPipeline, Topics
from streaming.registrar import schedule_for, served_policy_spec
from streaming.topics import ensure_topics

SHARD_NAME_PREFIX = "recsys-shard-"


class PipelineDriver:
    """Steps a :class:`StreamPipeline` in a daemon thread until stopped; an exception in a step
    stops the driver and is re-raised by :meth:`stop` (never swallowed)."""

    def __init__(self, pipeline: StreamPipeline) -> None:
        self.pipeline = pipeline
        self.records = 0
        self.steps = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pipeline-driver", daemon=True)

    def start(self) -> PipelineDriver:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    self.records += self.pipeline.step()
                self.steps += 1
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    @contextlib.contextmanager
    def paused(self) -> Iterator[StreamPipeline]:
        """Hold the driver between steps (to checkpoint or read the pipeline from this thread)."""
        with self._lock:
            yield self.pipeline

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self.error is not None:
            raise RuntimeError(f"the pipeline driver failed: {self.error!r}") from self.error


@dataclass
class LiveStack:
    """What :func:`live_stack` started."""

    url: str
    pipeline: StreamPipeline
    driver: PipelineDriver
    service_config: ServiceConfig
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def live_stack(
    settings: Settings,
    bootstrap: str,
    template: Statistics,
    checkpoint_uri: str,
    *,
    client_options: Mapping[str, Any] | None = None,
    topics: Topics | None = None,
    lake_uri: str | None = None,
    shard_name_prefix: str = SHARD_NAME_PREFIX,
    service_overrides: Mapping[str, Any] | None = None,
    check_stop: Callable[[], None] | None = None,
) -> Iterator[LiveStack]:
    """Ensure the topics, start the pipeline (resuming from its newest checkpoint), drive it,
    deploy the serving app on its shards, and tear everything down on exit, also when the start
    is interrupted: the app first, then the pipeline, checkpointed last if its driver ran without
    error. ``check_stop`` is called between the steps of the start (it raises to stop there:
    ``recsys.shutdown.Stopping.check``). Ray must be initialised; Kafka must be reachable at
    ``bootstrap``."""
    check_stop = check_stop or (lambda: None)
    topics = topics or Topics()
    options = dict(client_options or {})
    timings: dict[str, float] = {}
    started = time.monotonic()
    partitions = settings.kafka.partitions
    ensure_topics(bootstrap, {topics.impressions: partitions, topics.feedback: partitions,
                              topics.rewards: partitions, topics.dead_letter: 1},
                  settings.kafka.replication_factor, **options)
    pipeline = StreamPipeline(bootstrap, settings.stream, template, checkpoint_uri,
                              lake_uri=lake_uri, topics=topics, client_options=options,
                              shard_name_prefix=shard_name_prefix,
                              policy_spec=served_policy_spec(settings),
                              registrar=schedule_for(settings, checkpoint_uri))
    driver: PipelineDriver | None = None
    try:  # everything started is stopped, even when a stop signal interrupts the start
        check_stop()
        pipeline.start()
        timings["pipeline_start_s"] = time.monotonic() - started
        check_stop()
        driver = PipelineDriver(pipeline).start()
        config = ServiceConfig.from_settings(
            settings, bootstrap=bootstrap, shard_names=pipeline.shard_names(),
            shard_namespace=ray.get_runtime_context().namespace, client_options=options,
            impressions_topic=topics.impressions, feedback_topic=topics.feedback)
        if service_overrides:  # [serve] settings to change for this stack only
            config = replace(config, serve=replace(config.serve, **service_overrides))
        try:
            began = time.monotonic()
            url = start_serving(config, host=settings.serve.host, port=settings.serve.port,
                                replicas=settings.serve.replicas)
            timings["serving_start_s"] = time.monotonic() - began
            yield LiveStack(url, pipeline, driver, config, timings)
        finally:
            stop_serving()  # first: no request is taken while the rest stops
    finally:
        try:
            if driver is not None:
                driver.stop()
        finally:
            pipeline.stop(checkpoint=driver is not None and driver.error is None)
