"""Ray for a command: connect to ``ray.address`` or start a local instance, and stop only what was
started here. Streaming, serving and the offline trainers share this one rule."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from recsys.config import Settings
from recsys.shutdown import current_handlers, reinstall_stop_handlers

_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def ray_runtime(
    settings: Settings, before_local_start: Callable[[Settings], None] | None = None
) -> Iterator[str]:
    """Yield where Ray runs; reuse an instance already initialised in this process (tests start
    Ray once per session). A new connection joins the namespace ``ray.namespace``, where a Serve
    app deployed by import path finds the stream's named shards. ``before_local_start`` runs
    before a local instance starts (e.g. to set environment variables that its processes
    inherit). The SIGTERM and SIGINT handlers in place
    before ``ray.init`` are put back after it; ``ray.shutdown`` on exit stops a local instance's
    processes and only disconnects from a cluster."""
    import ray

    if ray.is_initialized():
        yield "already initialised"
        return
    handlers = current_handlers()
    if settings.ray.address:
        ray.init(address=settings.ray.address, namespace=settings.ray.namespace or None,
                 logging_level=logging.WARNING)
        origin = f"cluster at {settings.ray.address}"
    else:
        if before_local_start is not None:
            before_local_start(settings)
        # Ray enables token authentication for a new local instance (the safe default, kept)
        # and warns about it on every start; the user has nothing to do about it.
        quiet = _DropMessages("Token authentication is enabled")
        logging.getLogger(_TOKEN_AUTH_LOGGER).addFilter(quiet)
        try:
            ray.init(
                num_cpus=settings.ray.num_cpus,
                namespace=settings.ray.namespace or None,
                include_dashboard=False,
                object_store_memory=settings.ray.object_store_memory_mb * 1024 * 1024,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except BaseException:  # e.g. a stop signal during start-up: end what it had started
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise
        finally:
            logging.getLogger(_TOKEN_AUTH_LOGGER).removeFilter(quiet)
        origin = "local instance"
    try:
        # ray.init swapped SIGTERM's handler for a native one that dumps a stack and aborts,
        # skipping every cleanup (ours and ray.shutdown's): the command's own handlers come back.
        reinstall_stop_handlers(handlers)
        yield origin
    finally:
        ray.shutdown()
