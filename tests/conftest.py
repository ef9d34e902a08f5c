"""Session-wide fixtures: real services are started once per test session, never per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Per-example deadlines make property tests flaky on a shared 2-core machine.
settings.register_profile("recsys", deadline=None, print_blob=True)
settings.load_profile("recsys")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Where the real data sets live: $RECSYS_SHARED_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests that need it skip with a reason when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set RECSYS_SHARED_DATA to its location)")
    return path


# -- real services, started once per test session ------------------------------------------------

SERVICE_FIXTURES = frozenset({"kafka_bootstrap", "unique_topics", "ray_session"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that asks for a real service must say so, so ``-m "not integration"`` starts none."""
    unmarked = [
        item.nodeid for item in items
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use a Kafka or Ray fixture without @pytest.mark.integration: "
            + ", ".join(unmarked[:10]) + (" ..." if len(unmarked) > 10 else "")
        )


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request: pytest.FixtureRequest):
    """A test without the integration marker must not start Ray (directly or through our code)."""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    before = _ray_running()
    yield
    if not before and _ray_running():
        pytest.fail("this test started Ray but is not marked @pytest.mark.integration")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """A real Kafka broker: $RECSYS_KAFKA_BOOTSTRAP if set, else the embedded one, started once."""
    external = os.environ.get("RECSYS_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from streaming.broker import EmbeddedKafka

    broker = EmbeddedKafka(startup_timeout_s=90)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique_topics(kafka_bootstrap: str):
    """Fresh topics for one test: ``unique_topics({"events": 3})`` -> ``{"events": name}``."""
    import uuid

    from streaming.topics import ensure_topics

    def make(spec: dict[str, int]) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:8]
        names = {role: f"test.{role}.{suffix}" for role in spec}
        counts = ensure_topics(kafka_bootstrap, {names[r]: n for r, n in spec.items()})
        assert all(counts[names[r]] == n for r, n in spec.items()), counts
        return names

    return make


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray instance for the whole session."""
    import ray

    if not ray.is_initialized():
        from recsys.config import Settings
        from streaming.services import serving_ingress_environment

        serving_ingress_environment(Settings())  # the default serve.ingress, on free ports
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            log_to_driver=False,
            logging_level="WARNING",
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_store(tmp_path: Path) -> str:
    """A real mlflow store in a fresh sqlite file; returns its tracking URI."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for this test (seeded results and no oversubscription on 2 cores),
    with the process-wide setting restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def services_never_started(monkeypatch: pytest.MonkeyPatch):
    """Fail the test if the code under test reaches the point where it starts or connects to
    Kafka or Ray: for errors that must be reported before anything starts. (Asking
    ``ray.is_initialized()`` cannot tell, once an integration test started the session's Ray.)"""
    import recsys.ray_runtime
    import streaming.services

    reached: list[str] = []

    def refuse(what: str):
        def start(*args, **kwargs):
            reached.append(what)
            raise AssertionError(f"{what} was started before the error was reported")

        return start

    monkeypatch.setattr(recsys.ray_runtime, "ray_runtime", refuse("Ray"))
    monkeypatch.setattr(streaming.services, "ray_runtime", refuse("Ray"))
    monkeypatch.setattr(streaming.services, "kafka_cluster", refuse("Kafka"))
    yield reached
    assert not reached, f"{' and '.join(reached)} started before the error was reported"
