"""Adversarial suite fixtures: one sandbox per runtime with the canary secret, an echo and a
secret-using capability, and the detectors' environment; plus the per-runtime summary line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import Limits, Sandbox, capability
from sandbox.secrets import Secret, SecretValue

from . import tally
from .detectors import CANARY_SECRET, SECRET_NAME, Environment

try:  # the root conftest, as pytest imports it (rootdir-relative, no package)
    from conftest import RUNTIMES  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - imported as tests.conftest
    from tests.conftest import RUNTIMES

CASE_LIMITS = Limits(cpu_seconds=0.5, wall_seconds=2.0, memory_bytes=128 << 20, max_output_bytes=64 << 10, max_recursion_depth=200)
"""Small limits keep the whole corpus fast; resource cases still have to trip them."""


@capability
def echo(text: str) -> str:
    """Returns its argument: a capability that would carry anything the guest got hold of."""
    return text


@capability
def use_secret(token: SecretValue) -> int:
    """A well-behaved capability in the canary secret's scope: uses the value, returns its length."""
    return len(token.reveal())


def runtime_id(runtime: tuple[str, str | None]) -> str:
    name, isolation = runtime
    return f"{name}+{isolation}" if isolation else name


def make_sandbox(runtime: tuple[str, str | None], limits: Limits = CASE_LIMITS, **kwargs) -> Sandbox:
    name, isolation = runtime
    return Sandbox(
        name,  # type: ignore[arg-type]
        isolation=isolation,  # type: ignore[arg-type]
        limits=limits,
        capabilities=[echo, use_secret],
        secrets={SECRET_NAME: Secret(value=CANARY_SECRET, capabilities=["use_secret"])},
        **kwargs,
    )


@pytest.fixture(scope="module", params=RUNTIMES)
def adv_runtime(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    return request.param


@pytest.fixture(scope="module")
def adv_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    env = Environment(tmp_path_factory.mktemp("adversarial"))
    yield env
    env.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    lines = tally.lines()
    if lines:
        terminalreporter.section("adversarial summary")
        for line in lines:
            terminalreporter.write_line(line)
