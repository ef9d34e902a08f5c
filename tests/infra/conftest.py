"""The vendored public schemas the deployment-file tests validate against (../shared/schemas)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared_data_dir


def shared_schemas_dir() -> Path:
    """../shared/schemas beside the repository (the sibling of the shared data folder)."""
    return shared_data_dir().parent / "schemas"


@pytest.fixture(scope="session")
def schemas() -> Path:
    """The schema folder; tests that need it skip with the reason when it is absent."""
    path = shared_schemas_dir()
    if not (path / "SOURCES.md").is_file():
        pytest.skip(f"vendored schemas not found at {path} (the compose-spec and KubeRay CRD "
                    "schemas listed in its SOURCES.md); only the schema checks skip")
    return path
