"""`sandbox` end to end, as a real subprocess: run (output, JSON, exit codes 0/1/2, governance
options), keygen, verify, prepare, and the README's policy example."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sandbox_cli(*args: str, stdin: str | bytes | None = None, cwd: Path | None = None,
                env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args], input=stdin, capture_output=True, text=not isinstance(stdin, bytes),
        timeout=timeout, cwd=cwd or ROOT, env=environment,
    )


def one_line_usage_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


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


def test_lone_surrogates_in_guest_output_are_printed_escaped():
    proc = sandbox_cli("run", "-", stdin="print('a\\udc80b')\nraise ValueError('c\\ud800')")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "a\\udc80b" in proc.stdout and "c\\ud800" in proc.stderr
    proc = sandbox_cli("run", "--json", "-", stdin="print('a\\udc80b')\n{'k\\ud800': 1}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["value"] == {"k\ud800": 1}


@pytest.mark.parametrize("args", [
    ["--memory", "lots"], ["--cpu", "-1"], ["--cpu", "inf"], ["--cpu", "nan"], ["--wall", "nan"], ["--wall", "0"],
    ["--wall", "-inf"], ["--runtime", "docker"], ["--input", "x=not json"], ["--input", "x=NaN"], ["--input", "1x=2"],
    ["--input", "_x=2"], ["--capabilities", "no_such_module_here"], ["--capabilities", "json:nope"],
    ["--policy", "examples/policy.toml"], ["--signing-key", "README.md"], ["--files", "/no/such/dir"],
    ["--isolation", "process", "--runtime", "wasi"],
])
def test_bad_values_exit_2_with_one_line(args):
    one_line_usage_error(sandbox_cli("run", *args, "-", stdin="1"))


def test_bad_files_and_commands_exit_2_with_one_line(tmp_path: Path):
    one_line_usage_error(sandbox_cli("run", str(tmp_path / "missing.py")))
    latin1 = tmp_path / "latin1.py"
    latin1.write_bytes("print('caf\xe9')\n".encode("latin-1"))
    err = one_line_usage_error(sandbox_cli("run", str(latin1)))
    assert "not UTF-8" in err
    one_line_usage_error(sandbox_cli("run", "-", stdin=b"\xff\xfe1\n"))
    one_line_usage_error(sandbox_cli("frobnicate"))


def test_inputs_capabilities_and_policy(tmp_path: Path):
    tools = tmp_path / "mytools.py"
    tools.write_text(
        "from sandbox import capability\n"
        "@capability\n"
        "def double(x: int) -> int:\n"
        "    return 2 * x\n"
        "@capability(name='ops.neg')\n"
        "def neg(x: int) -> int:\n"
        "    return -x\n"
        "ONLY_NEG = [neg]\n"
    )
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "allow"\n[capabilities."ops.neg"]\nmax_calls = 1\n')
    code = "[double(rows[0]), ops.neg(limit), ops.neg(1)]"
    proc = sandbox_cli("run", "--capabilities", "mytools", "--input", "rows=[21, 2]", "--input", "limit=3",
                       "--json", "-", stdin=code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["value"] == [42, -3, -1]
    proc = sandbox_cli("run", "--capabilities", "mytools", "--policy", str(policy), "--input", "rows=[21]",
                       "--input", "limit=3", "-", stdin=code, cwd=tmp_path)
    assert proc.returncode == 1 and "policy" in proc.stderr.lower(), proc.stderr  # the policy really applies
    policy.write_text('default = "allow"\n[capabilities."ops.neg"]\nmax_calls = 1\n[capabilities.doubel]\nmax_calls = 1\n')
    proc = sandbox_cli("run", "--capabilities", "mytools", "--policy", str(policy), "-", stdin="double(1)", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert "warning: the policy's rule for 'doubel' matches no granted capability" in proc.stderr
    proc = sandbox_cli("run", "--capabilities", "mytools:ONLY_NEG", "-", stdin="double(1)", cwd=tmp_path)
    assert proc.returncode == 1 and "NameError" in proc.stderr, proc.stderr


def test_files_overlay_and_apply(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("one\n")
    code = "files.write('a.txt', files.read('a.txt') + 'two\\n')\n'ok'"
    proc = sandbox_cli("run", "--files", str(data), "-", stdin=code)
    assert proc.returncode == 0, proc.stderr
    assert "[file modified: a.txt]" in proc.stderr and (data / "a.txt").read_text() == "one\n"
    proc = sandbox_cli("run", "--files", str(data), "--apply", "-", stdin=code)
    assert proc.returncode == 0, proc.stderr
    assert (data / "a.txt").read_text() == "one\ntwo\n"


def test_keygen_writes_a_private_key_only_the_owner_reads(tmp_path: Path):
    private = tmp_path / "audit.pem"
    proc = sandbox_cli("keygen", str(private))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = tmp_path / "audit.pub"
    assert public.read_text() == proc.stdout and proc.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    from sandbox.audit import load_private_key, load_public_key, public_key_pem

    assert public_key_pem(load_private_key(private)) == public_key_pem(load_public_key(public))
    before = private.read_bytes()
    one_line_usage_error(sandbox_cli("keygen", str(private)))  # never overwritten silently
    assert private.read_bytes() == before
    private.chmod(0o644)
    assert sandbox_cli("keygen", str(private), "--force").returncode == 0
    assert private.read_bytes() != before and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_records_signed_and_unsigned_verify(tmp_path: Path):
    unsigned = tmp_path / "unsigned.jsonl"
    for _ in range(2):
        assert sandbox_cli("run", "--records", str(unsigned), "-", stdin="1").returncode == 0
    proc = sandbox_cli("verify", str(unsigned))
    assert proc.returncode == 0 and "2 record(s)" in proc.stdout and "unsigned" in proc.stdout, proc.stderr
    assert sandbox_cli("keygen", str(tmp_path / "k.pem")).returncode == 0
    signed = tmp_path / "signed.jsonl"
    proc = sandbox_cli("run", "--records", str(signed), "--signing-key", str(tmp_path / "k.pem"),
                       "--principal", "agent:cli", "-", stdin="1")
    assert proc.returncode == 0, proc.stderr
    proc = sandbox_cli("verify", str(signed), "--public-key", str(tmp_path / "k.pub"))
    assert proc.returncode == 0 and "signatures verified" in proc.stdout, proc.stderr
    one_line_usage_error(sandbox_cli("verify", str(signed)))  # signed records need the key
    assert "agent:cli" in sandbox_cli("audit", str(signed)).stdout


def test_readme_policy_example_runs_end_to_end(tmp_path: Path):
    readme = (ROOT / "README.md").read_text()
    assert "sandbox run --capabilities examples.cli_tools --policy examples/policy.toml" in readme
    assert (ROOT / "examples" / "policy.toml").read_text().split("\n", 1)[1] in readme.replace("```toml\n", "")
    assert sandbox_cli("keygen", str(tmp_path / "audit.pem")).returncode == 0
    records = tmp_path / "runs.jsonl"
    proc = sandbox_cli(
        "run", "--capabilities", "examples.cli_tools", "--policy", "examples/policy.toml", "--records", str(records),
        "--signing-key", str(tmp_path / "audit.pem"), "--principal", "agent:etl", "examples/cli_job.py",
    )
    assert proc.returncode == 0, proc.stderr
    assert "denied: fs.read('/etc/passwd')" in proc.stdout and "denied: sql.query('SELECT email FROM customers')" in proc.stdout
    assert "{'notes': 'Quarterly notes" in proc.stdout and "'totals': {'customer 1': 162.75, 'customer 2': 80.0}" in proc.stdout
    verified = sandbox_cli("verify", str(records), "--public-key", str(tmp_path / "audit.pub"))
    assert verified.returncode == 0 and "signatures verified" in verified.stdout, verified.stderr
    summary = sandbox_cli("audit", str(records)).stdout
    assert "agent:etl" in summary and "4 call(s), 2 denied" in summary, summary


# ----------------------------------------------------------------------------- wasi first use


def test_prepare_reports_a_ready_cache_and_its_path():
    path = sandbox_cli("prepare", "--print-path")
    assert path.returncode == 0 and path.stdout.strip().endswith(".cwasm")
    proc = sandbox_cli("prepare")  # the suite's cache is built already: validated and loaded, not rebuilt
    assert proc.returncode == 0, proc.stderr
    assert "wasi guest ready" in proc.stderr and "building" not in proc.stderr
    assert Path(path.stdout.strip()).is_file()


@pytest.mark.slow
def test_prepare_builds_a_shared_cache_that_workers_then_load(tmp_path: Path):
    cache = tmp_path / "shared-cache"
    env = {"SANDBOX_WASI_CACHE": str(cache)}
    proc = sandbox_cli("prepare", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "building the wasi guest" in proc.stderr  # not a terminal: a log line, no progress bar
    assert "\x1b[" not in proc.stderr
    (artifact,) = cache.glob("guest-*.cwasm")
    assert stat.S_IMODE(artifact.stat().st_mode) & 0o044 == 0o044  # other workers can read it
    worker = subprocess.run(
        [sys.executable, "-c", "from sandbox import Sandbox\nprint(Sandbox('wasi').run('6 * 7').value)"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert worker.stdout == "42\n" and "building" not in worker.stderr, worker.stderr


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(caplog):
    import io
    import logging

    from sandbox.wasi.build import BuildProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with caplog.at_level(logging.INFO, logger="sandbox.wasi.build"):
        with BuildProgress(stream=screen) as progress:
            progress.step(1)
            progress.step(2)
    assert "building the wasi guest" in screen.getvalue() and "3/3" in screen.getvalue()
    assert caplog.records == []
    plain = io.StringIO()
    with caplog.at_level(logging.INFO, logger="sandbox.wasi.build"):
        with BuildProgress(stream=plain) as progress:
            progress.step(1)
    assert plain.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records]
    assert "building the wasi guest" in messages[0] and caplog.records[0].levelname == "WARNING"
    assert "built and cached" in messages[-1]


AOPEN_SCRIPT = """
import asyncio, sys, time
import sandbox.wasi.build as wasi_build
from sandbox import Sandbox

real = wasi_build.load_component

def slow_load(*args, **kwargs):  # a build on first use: seconds of blocking work
    time.sleep(1.5)
    return real(*args, **kwargs)

wasi_build.load_component = slow_load

async def main():
    ticks = []
    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    sb = await Sandbox.aopen("wasi")
    took = time.monotonic() - started
    task.cancel()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    value = (await sb.arun("6 * 7")).value
    sb.close()
    print(took, max(gaps), len(ticks), value)

asyncio.run(main())
"""


def test_aopen_never_blocks_the_event_loop():
    proc = subprocess.run([sys.executable, "-c", AOPEN_SCRIPT], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    took, max_gap, ticks, value = proc.stdout.split()
    assert float(took) >= 1.5 and value == "42"
    assert float(max_gap) < 1.0 and int(ticks) > 20  # the loop kept ticking through the slow construction
