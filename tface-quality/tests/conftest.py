"""Fixtures: the fake distribution with the toy backbone (see ``qualitytoys``), installed per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from qualitytoys import install_toys


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The toy backbone ``qtoynet`` registered for this module's tests; yields the module."""
    yield from install_toys(tmp_path_factory.mktemp("qsite"))
