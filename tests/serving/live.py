"""One live serving stack per test module: real Kafka, Ray Serve and the streaming pipeline over a
dense catalogue, on topics and shard names of its own (so modules never see each other's data)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recsys.bandits import EpsilonGreedy, policy_spec
from recsys.config import KafkaSettings, ServeSettings, Settings, StreamSettings
from streaming.broker import free_port
from streaming.live import LiveStack, live_stack
from streaming.pipeline import Topics
from streaming.shards import dense_statistics

UNIFORM_ONLY = {"uniform": policy_spec(EpsilonGreedy(epsilon=1.0, centred=True))}
"""The default arms: a uniformly random control (exact propensities, no learning needed)."""


def fresh_topics(suffix: str) -> Topics:
    """Impressions, feedback, rewards and dead-letter topics no other test uses."""
    return Topics(f"test.imp.{suffix}", f"test.fb.{suffix}", f"test.rw.{suffix}",
                  f"test.dl.{suffix}")


@contextlib.contextmanager
def serving_stack(kafka_bootstrap: str, tmp: Path, name: str, *, n_items: int, dim: int,
                  partitions: int = 1, policies: dict[str, Any] | None = None,
                  stream: dict[str, Any] | None = None, serve: dict[str, Any] | None = None,
                  settings: dict[str, Any] | None = None, lake: bool = False,
                  template: Any = None, client_options: dict[str, Any] | None = None,
                  ) -> Iterator[tuple[LiveStack, Topics]]:
    """The stack with one learner, shard and joiner (``stream`` overrides), the app on a free port
    serving ``policies`` (default :data:`UNIFORM_ONLY`, traffic to the first arm; ``serve``
    overrides), ``settings`` for other sections, ``client_options`` for Kafka (e.g. the
    client); yields it with its topics."""
    suffix = uuid.uuid4().hex[:8]
    topics = fresh_topics(suffix)
    arms = UNIFORM_ONLY if policies is None else policies
    stream_settings = StreamSettings(**{"learners": 1, "shards": 1, "joiners": 1,
                                        "n_items": n_items, "dim": dim,
                                        "checkpoint_interval_s": 3600.0, **(stream or {})})
    serve_settings = ServeSettings(**{"port": free_port(), "policies": json.dumps(arms),
                                      "traffic": f"{next(iter(arms))}=1", **(serve or {})})
    config = Settings(data_dir=tmp, kafka=KafkaSettings(partitions=partitions),
                      stream=stream_settings, serve=serve_settings, **(settings or {}))
    if template is None:
        template = dense_statistics(np.arange(n_items), dim)
    with live_stack(config, kafka_bootstrap, template, str(tmp / "checkpoints"), topics=topics,
                    lake_uri=str(tmp / "lake") if lake else None, client_options=client_options,
                    shard_name_prefix=f"test-{name}-{suffix}-") as stack:
        yield stack, topics
