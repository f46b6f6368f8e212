"""Shared fixtures. `RUNTIMES` lists every (runtime, isolation) the conformance suite covers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox import Sandbox

RUNTIMES = [
    pytest.param(("restricted", None), id="restricted"),
    pytest.param(("restricted", "process"), id="restricted+process"),  # Linux: confined child processes
    pytest.param(("wasi", None), id="wasi"),
]


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    return request.param


@pytest.fixture
def make_sandbox(runtime: tuple[str, str | None]) -> Iterator[Callable[..., Sandbox]]:
    """Build sandboxes on the parametrized runtime; all are closed after the test."""
    made: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        name, isolation = runtime
        sb = Sandbox(name, isolation=isolation, **kwargs)  # type: ignore[arg-type]
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()
