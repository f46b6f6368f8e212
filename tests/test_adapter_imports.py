"""The adapters are optional extras: importing sandbox (or the CLI) never imports a framework."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("mcp", "smolagents", "langchain_core", "langchain")


def imported_after(statement: str) -> set[str]:
    code = (
        f"import sys\n{statement}\n"
        f"print(','.join(m for m in {FRAMEWORKS!r} if m in sys.modules or any(k.startswith(m + '.') for k in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {name for name in proc.stdout.strip().split(",") if name}


def test_import_sandbox_imports_no_framework():
    assert imported_after("import sandbox") == set()


def test_adapter_package_config_prompts_and_cli_import_no_framework():
    # sandbox.adapters.mcp imports the SDK only when a server is built, so the CLI can register it.
    statement = (
        "import sandbox.adapters, sandbox.adapters.config, sandbox.adapters.prompts, sandbox.adapters.mcp, sandbox.cli"
    )
    assert imported_after(statement) == set()
