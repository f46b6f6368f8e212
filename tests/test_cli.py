"""`sandbox run` end to end, as a real subprocess: output, JSON and exit codes 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def sandbox_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_run_file_ok(tmp_path: Path):
    script = tmp_path / "job.py"
    script.write_text("print('hello')\n6 * 7\n")
    proc = sandbox_cli("run", str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello\n42\n"


def test_run_stdin_json():
    proc = sandbox_cli("run", "--json", "-", stdin="[1, 2]")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["value"] == [1, 2] and result["runtime"] == "restricted"


def test_guest_error_exits_1():
    proc = sandbox_cli("run", "-", stdin="1/0")
    assert proc.returncode == 1
    assert "guest_exception: ZeroDivisionError" in proc.stderr


def test_limit_exits_1_and_names_limit():
    proc = sandbox_cli("run", "--cpu", "0.2", "--json", "-", stdin="while True:\n    pass")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["error"]["kind"] == "limit_exceeded" and result["error"]["limit"] == "cpu"


def test_bad_usage_exits_2(tmp_path: Path):
    assert sandbox_cli("run", "--memory", "lots", "-", stdin="1").returncode == 2
    assert sandbox_cli("run", "--cpu", "-1", "-", stdin="1").returncode == 2
    assert sandbox_cli("run", "--runtime", "docker", "-", stdin="1").returncode == 2
    assert sandbox_cli("run", str(tmp_path / "missing.py")).returncode == 2
    assert sandbox_cli("frobnicate").returncode == 2
