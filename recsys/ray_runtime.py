"""Ray for a command: connect to ``ray.address`` or start a local instance, and stop only what was
started here. Streaming, serving and the offline trainers share this one rule."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from recsys.config import Settings


@contextlib.contextmanager
def ray_runtime(
    settings: Settings, before_local_start: Callable[[Settings], None] | None = None
) -> Iterator[str]:
    """Yield where Ray runs; reuse an instance already initialised in this process (tests start
    Ray once per session). ``before_local_start`` runs before a local instance starts (e.g. to set
    environment variables that its processes inherit)."""
    import ray

    if ray.is_initialized():
        yield "already initialised"
        return
    if settings.ray.address:
        ray.init(address=settings.ray.address, logging_level=logging.WARNING)
        origin = f"cluster at {settings.ray.address}"
    else:
        if before_local_start is not None:
            before_local_start(settings)
        ray.init(
            num_cpus=settings.ray.num_cpus,
            include_dashboard=False,
            object_store_memory=settings.ray.object_store_memory_mb * 1024 * 1024,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        origin = "local instance"
    try:
        yield origin
    finally:
        ray.shutdown()
