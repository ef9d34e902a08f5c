"""The harness itself: the paced traffic, undisturbed, ends equal to the reference run (so a
failing fault check is the fault's doing, not the harness's)."""

from __future__ import annotations

import pytest

from tests.faults.harness import drive, end_checks, faulted_run, report

# Minutes on a loaded machine (the first check also starts the broker and the reference run).
pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(900)]


def test_paced_traffic_without_faults_ends_equal_to_the_reference(
        fault_broker, reference, ray_session, tmp_path) -> None:
    with faulted_run(fault_broker, tmp_path) as (pipeline, traffic, faults, hooks, topics):
        traffic.start()
        faults.start(traffic.started_at)
        drive(pipeline, traffic, faults)
        end_checks(pipeline, reference, fault_broker.bootstrap, topics, tmp_path / "lake",
                   context=report(faults, hooks, pipeline))
