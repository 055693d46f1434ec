from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three real node processes, started and healthy."""
    c = Cluster(tmp_path / "deploy")
    c.start()
    try:
        c.wait_healthy()
        yield c
    finally:
        c.close()
