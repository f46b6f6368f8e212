"""The package surface: what ``import sandbox`` loads, the names it exports, the exception
hierarchy, and the packaging metadata (license, typing marker)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sandbox
from sandbox import errors

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("httpx", "httpcore", "wasmtime", "cryptography", "rich", "psutil", "pydantic", "RestrictedPython", "ray")


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (from the repository root) and return what it prints as JSON."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def loaded_after(statement: str) -> dict:
    return run_python(
        f"import json, logging, sys\n{statement}\n"
        f"roots = {{m.split('.')[0] for m in sys.modules}}\n"
        f"filters = [f for n in ('httpcore.http11', 'httpcore.connection') for f in logging.getLogger(n).filters]\n"
        f"print(json.dumps({{'heavy': sorted(r for r in roots if r in {HEAVY!r}), 'log_filters': len(filters)}}))"
    )


def test_import_sandbox_loads_no_heavy_dependency_and_installs_no_log_filter():
    seen = loaded_after("import sandbox")
    assert seen == {"heavy": [], "log_filters": 0}


def test_a_restricted_sandbox_never_loads_the_network_wasm_or_crypto_stacks():
    seen = loaded_after("from sandbox import Sandbox\nwith Sandbox() as sb:\n    assert sb.run('1 + 1').value == 2")
    assert not {"httpx", "httpcore", "wasmtime", "cryptography"} & set(seen["heavy"]), seen
    assert seen["log_filters"] == 0


@pytest.mark.parametrize("runtime", ["restricted", "wasi"])
def test_a_synchronous_run_loads_no_asyncio(runtime):
    seen = run_python(
        f"import json, sys\nfrom sandbox import Sandbox\nwith Sandbox({runtime!r}) as sb:\n"
        "    assert sb.run('1 + 1').value == 2\n"
        "print(json.dumps(sorted(m for m in ('asyncio', 'concurrent.futures') if m in sys.modules)))"
    )
    assert seen == []


@pytest.mark.parametrize("runtime", ["restricted", "wasi"])
def test_the_first_run_builds_no_pydantic_validator_and_reads_no_package_metadata(runtime):
    seen = run_python(
        "import json, sys\nfrom pydantic import BaseModel\nfrom sandbox import Sandbox\n"
        f"with Sandbox({runtime!r}) as sb:\n    assert sb.run('1 + 1').value == 2\n"
        "def models(cls):\n    for sub in cls.__subclasses__():\n        yield sub\n        yield from models(sub)\n"
        "print(json.dumps({'built': sorted(m.__name__ for m in models(BaseModel) if m.__pydantic_complete__),\n"
        "                  'metadata': 'importlib.metadata' in sys.modules}))"
    )
    assert seen == {"built": [], "metadata": False}


def test_models_first_validated_on_many_threads_at_once_validate_as_when_built_at_import():
    # The models build their validators on first use: the first uses race here, in fresh
    # interpreters, and every thread must see the model's own validation (a half-rebuilt model
    # must never fall back to another validator).
    code = """
import json, threading
from pydantic import ValidationError
from sandbox.limits import Limits
from sandbox.results import ErrorInfo, RunResult
from sandbox.runtime import Outcome

start, seen, lock = threading.Barrier(8), [], threading.Lock()

def check():
    start.wait()
    out = []
    out.append(Limits(cpu_seconds=2, memory_bytes="64M").memory_bytes == 64 << 20)
    for bad in ({"cpu": 1}, {"cpu_seconds": -1}, {"wall_seconds": float("inf")}):
        try:
            Limits(**bad)
            out.append(False)
        except ValidationError:
            out.append(True)
    out.append(ErrorInfo.model_validate({"kind": "internal", "type": "X" * 300, "message": "m"}).type.endswith("[truncated]"))
    try:
        ErrorInfo.model_validate({"kind": "bogus", "type": "T", "message": "m"})
        out.append(False)
    except ValidationError:
        out.append(True)
    out.append(RunResult(ok=True, run_id="r", runtime="wasi", isolation="wasm").model_dump()["usage"]["capability_calls"] == 0)
    out.append(Outcome(ok=False).model_dump_json().startswith("{"))
    with lock:
        seen.append(all(out))

threads = [threading.Thread(target=check) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(seen))
"""
    for _ in range(3):
        assert run_python(code) == [True] * 8


def test_the_default_limits_are_those_of_a_validated_limits():
    from sandbox.limits import DEFAULT_LIMITS, Limits

    validated = Limits()
    assert DEFAULT_LIMITS == validated and repr(DEFAULT_LIMITS) == repr(validated)
    assert DEFAULT_LIMITS.model_fields_set == validated.model_fields_set == set()
    assert DEFAULT_LIMITS.model_dump() == validated.model_dump()
    with sandbox.Sandbox() as sb:
        assert sb.limits is DEFAULT_LIMITS
    from sandbox.restricted import _limits_dict

    for limits in (DEFAULT_LIMITS, Limits(cpu_seconds=2, memory_bytes="64M", max_recursion_depth=50)):
        assert _limits_dict(limits) == limits.model_dump()


def test_egress_is_loaded_on_first_use_with_its_log_guard():
    seen = loaded_after("from sandbox import Egress\nEgress(allow=['example.com'])")
    assert "httpx" in seen["heavy"] and seen["log_filters"] > 0


def test_every_exported_name_resolves_to_the_object_of_its_module():
    for name, module in sandbox._LAZY.items():
        assert getattr(sandbox, name) is getattr(importlib.import_module(module), name)
    assert set(sandbox.__all__) <= set(dir(sandbox))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sandbox.nope  # noqa: B018
    from sandbox import JsonlSink, Overlay, Policy, sql_capability
    from sandbox.audit import JsonlSink as audit_sink
    from sandbox.overlay import Overlay as overlay
    from sandbox.policy import Policy as policy
    from sandbox.runtime import CapabilityFault
    from sandbox.sql import sql_capability as sql

    assert (JsonlSink, Overlay, Policy, sql_capability) == (audit_sink, overlay, policy, sql)
    assert sandbox.CapabilityFault is CapabilityFault


def test_exception_hierarchy():
    from sandbox.wasi.build import WasiBuildError

    for name in errors.__all__:
        exc = getattr(errors, name)
        assert getattr(sandbox, name) is exc
        if name != "CapabilityFault":
            assert issubclass(exc, errors.SandboxError), name
    assert issubclass(errors.ConfigurationError, ValueError)
    assert issubclass(errors.SecretInTransit, errors.ConfigurationError)
    for unavailable in (errors.IsolationUnavailable, errors.GuestBuildError, errors.SecretUnavailable):
        assert issubclass(unavailable, errors.Unavailable) and issubclass(unavailable, RuntimeError)
    assert issubclass(WasiBuildError, errors.GuestBuildError)
    assert issubclass(errors.OverlayConflict, ValueError)
    from sandbox.overlay import OverlayConflict
    from sandbox.secrets import SecretUnavailable

    assert OverlayConflict is errors.OverlayConflict and SecretUnavailable is errors.SecretUnavailable
    for name in errors.__all__:  # the docstring's tree names every exception
        assert name in errors.__doc__, name


def test_license_and_typing_marker_ship_with_the_package():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert meta["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    package_data = meta["tool"]["setuptools"]["package-data"]
    for package in ("sandbox", "runtimes"):
        assert (ROOT / package / "py.typed").exists()
        assert "py.typed" in package_data[package]
    core = " ".join(meta["project"]["dependencies"])
    assert "psutil" not in core and "rich" not in core
