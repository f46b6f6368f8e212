"""The process children's warm-up job (`runtimes.process.child.warm_loop`, `warmup_frame`) and the
capability names a `ProcessDriver` warms its children with."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("process isolation is Linux-only", allow_module_level=True)

from runtimes.wire import Fault  # noqa: E402
from sandbox.errors import ConfigurationError, IsolationUnavailable  # noqa: E402
from sandbox.limits import Limits  # noqa: E402
from sandbox.process import ProcessDriver  # noqa: E402
from sandbox.process import driver as driver_module  # noqa: E402
from sandbox.runtime import Job  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS = Limits(cpu_seconds=2, wall_seconds=5, memory_bytes=64 << 20)


class Bridge:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, name: str, args: list, kwargs: dict) -> object:
        self.calls.append(name)
        if name == "deny":
            raise Fault("PolicyDenied", "no")
        return f"{name} from the host"


def job(code: str, capabilities: tuple[str, ...] = (), bridge: Bridge | None = None) -> Job:
    return Job(run_id="t", code=code, limits=LIMITS, bridge=bridge or Bridge(), capabilities=capabilities)


def test_capabilities_named_like_what_the_warmup_calls_do_not_stall_the_children():
    """A capability's global shadows the builtin of the same name, and the warm-up calls
    ``sorted``: such names are left out of the warm-up, so the children still come up, and a job
    granting the name calls the host under it while one that does not gets the builtin."""
    started = time.monotonic()
    with ProcessDriver(workers=1, capabilities=("sorted", "f", "tools.g")) as d:
        assert time.monotonic() - started < 30
        for _ in range(2):
            bridge = Bridge()
            out = d.run(job("[sorted([3, 1]), f(), tools.g()]", capabilities=("sorted", "f", "tools.g"), bridge=bridge))
            assert out.ok and out.value == ["sorted from the host", "f from the host", "tools.g from the host"], out.error
            assert bridge.calls == ["sorted", "f", "tools.g"]
        out = d.run(job("[sorted([3, 1]), len('ab')]"))
        assert out.ok and out.value == [[1, 3], 2], out.error


def test_the_warmup_leaves_out_every_name_its_code_refers_to():
    """Names the warm-up's code (its nested comprehension's included) refers to are left out,
    dotted ones by their first part; the others are kept for the warm-up to bind."""
    from runtimes.process.child import warmup_frame
    from runtimes.process.framing import decode

    frame = decode(warmup_frame(("sorted", "len.x", "range", "max", "total", "f", "tools.g"))[4:])
    assert frame["capabilities"] == ["f", "tools.g"]


_WARM_LOOP = """\
import json, sys, time
from runtimes.process import child, zygote
from runtimes.process.framing import decode, encode
job = decode(child.warmup_frame(())[4:])
job.update(json.loads(sys.argv[1]))
print(json.dumps(child.warm_loop(zygote._load_executor(()), encode(job))))
"""


def _warm_loop(**changes: object) -> dict:
    """The outcome of `warm_loop` run in a fresh interpreter on the warm-up job with ``changes``."""
    import json

    proc = subprocess.run([sys.executable, "-c", _WARM_LOOP, json.dumps(changes)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_warmup_never_waits_on_a_host():
    """A warm-up job that calls a capability (none does) reads end-of-file instead of a reply and
    ends with an error: the child goes on to report ready instead of blocking for good."""
    outcome = _warm_loop(code="f()", bytecode=None, capabilities=["f"])
    assert outcome["ok"] is False and outcome["error"]["kind"] == "internal", outcome


def test_each_warmup_has_a_deadline_of_its_own():
    """The warm-up frame is built once, when the zygote starts; each child's warm-up sets its own
    deadline, so a child forked long after (a deadline from the frame long past) still runs it."""
    outcome = _warm_loop(deadline=time.monotonic() - 3600)
    assert outcome["ok"] is True and outcome["value"] == [40425, 5], outcome


def test_a_first_child_that_never_comes_is_a_typed_error_and_closes_the_driver(monkeypatch):
    """No spare within the start timeout: `IsolationUnavailable`, and the zygote is shut down."""
    monkeypatch.setattr(driver_module, "START_TIMEOUT", 1.0)
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(IsolationUnavailable, match="failed to start"):
        ProcessDriver(workers=1, spares=0)
    assert {p.pid for p in psutil.Process().children()} <= before


@pytest.mark.parametrize("capabilities", ["sorted", ("1x",), ("a-b",), ("_x",), ("print",), ("class",), (3,), 3, ([],)])
def test_capability_names_are_checked(capabilities):
    with pytest.raises(ConfigurationError, match="capabilit"):
        ProcessDriver(capabilities=capabilities)
