from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cluster, running_cluster

pytest_plugins = ["tests.client_fixtures"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three real node processes, started and healthy."""
    with running_cluster(tmp_path / "deploy") as c:
        yield c
