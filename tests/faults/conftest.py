"""Fixtures of the fault-injection checks: a broker of their own that they may kill and restart
(never the session's ``kafka_bootstrap``), and the undisturbed reference run, computed once."""

from __future__ import annotations

import pytest

from tests.faults.harness import Reference, RestartableBroker, compute_reference


@pytest.fixture(scope="session")
def restartable_broker(tmp_path_factory: pytest.TempPathFactory):
    """The checks' broker (persistent data in a session temporary folder); a check may kill it,
    the next check finds it running again (``fault_broker``)."""
    broker = RestartableBroker(tmp_path_factory.mktemp("faults-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def fault_broker(restartable_broker: RestartableBroker) -> RestartableBroker:
    """The checks' broker, running (restarted if an earlier check left it killed)."""
    restartable_broker.ensure_running()
    return restartable_broker


@pytest.fixture(scope="session")
def reference(restartable_broker: RestartableBroker, ray_session,
              tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The undisturbed run of the checks' traffic (see ``harness.compute_reference``)."""
    restartable_broker.ensure_running()
    return compute_reference(restartable_broker, tmp_path_factory.mktemp("faults-reference"))
