"""The MCP server against the real ``mcp`` SDK: its own stdio client talks to the server in a subprocess.

Each test starts ``python -m sandbox.adapters.mcp --config FILE`` (the module behind
``sandbox mcp``) and drives it with ``mcp.ClientSession`` over ``mcp.client.stdio``. The
capabilities live in a small module written next to the config file.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

from sandbox import Sandbox  # noqa: E402
from sandbox.adapters.config import SessionSettings  # noqa: E402
from sandbox.adapters.mcp import SessionTable  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOKEN = "tok-3f9a7c21e5d84b6f"  # what the server's environment holds; must never come back

TOOLS_MODULE = '''
import os

from sandbox import capability
from sandbox.runtime import CapabilityFault


@capability
def get_weather(city: str) -> dict:
    """Current weather for a city: {"city": ..., "temp": degrees Celsius}."""
    return {"city": city, "temp": 21 if city == "Paris" else 12}


@capability
def delete_file(path: str) -> str:
    """Delete a file on the host."""
    raise CapabilityFault("PolicyDenied", f"delete_file({path!r}) is denied: the host grants no deletions")


@capability
def leaky_status() -> str:
    """A badly written capability that echoes its credentials."""
    return "connected with token " + os.environ["REPORT_TOKEN"]
'''

CONFIG = '''
runtime = "restricted"
python_path = ["."]
capabilities = [
    "agent_tools:get_weather",
    "agent_tools:delete_file",
    "agent_tools:leaky_status",
]

[limits]
cpu_seconds = 0.5
wall_seconds = 5

[sessions]
ttl_seconds = 600
max_sessions = 2

[secrets.report_token]
env = "REPORT_TOKEN"
capabilities = ["leaky_status"]
'''


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "agent_tools.py").write_text(TOOLS_MODULE)
    path = tmp_path / "server.toml"
    path.write_text(CONFIG)
    return path


def with_client(
    config: Path, scenario: Callable[[ClientSession], Awaitable[Any]], *extra: str, module: str = "sandbox.adapters.mcp"
) -> Any:
    command = ["-m", module] + (["mcp"] if module == "sandbox.cli" else [])
    params = StdioServerParameters(
        command=sys.executable,
        args=[*command, "--config", str(config), *extra],
        env={"REPORT_TOKEN": TOKEN},
        cwd=str(REPO),
    )

    async def main() -> Any:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await scenario(session)

    return asyncio.run(asyncio.wait_for(main(), timeout=120))


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


def test_tools_run_python_and_describe(config: Path):
    async def scenario(session: ClientSession) -> dict[str, Any]:
        listed = await session.list_tools()
        ok = await session.call_tool("run_python", {"code": "w = get_weather('Paris')\nprint(w)\nw['temp'] * 2"})
        with_inputs = await session.call_tool("run_python", {"code": "sum(xs)", "inputs": {"xs": [1, 2, 3]}})
        failed = await session.call_tool("run_python", {"code": "x = 1\n1 / 0"})
        refused = await session.call_tool("run_python", {"code": "import os\nos.listdir('/')"})
        api = await session.call_tool("describe_capabilities", {})
        return {"tools": listed.tools, "ok": ok, "inputs": with_inputs, "failed": failed, "refused": refused, "api": api}

    out = with_client(config, scenario)
    assert {t.name for t in out["tools"]} == {
        "run_python", "describe_capabilities", "session_open", "session_run", "session_close",
    }
    ok = out["ok"]
    assert not ok.is_error
    assert ok.structured_content["ok"] is True and ok.structured_content["value"] == 42
    assert ok.structured_content["stdout"] == "{'city': 'Paris', 'temp': 21}\n"
    assert ok.structured_content["usage"]["capability_calls"] == 1
    assert "value: 42" in text(ok)
    assert out["inputs"].structured_content["value"] == 6

    failed = out["failed"]
    assert failed.is_error
    assert failed.structured_content["error"]["kind"] == "guest_exception"
    assert failed.structured_content["error"]["type"] == "ZeroDivisionError"
    assert failed.structured_content["error"]["lineno"] == 2
    assert "ZeroDivisionError" in text(failed)

    refused = out["refused"].structured_content["error"]
    assert refused["type"] == "ImportError" and "'os' is not allowed" in refused["message"]

    api = out["api"]
    assert "def get_weather(city: str) -> dict:" in api.structured_content["stub"]
    assert "Current weather for a city" in api.structured_content["stub"]
    assert {t["name"] for t in api.structured_content["tools"]} == {"get_weather", "delete_file", "leaky_status"}
    assert "def get_weather(city: str) -> dict:" in text(api)


def wasi_available() -> bool:
    try:
        Sandbox("wasi").close()
    except Exception:
        return False
    return True


@pytest.mark.parametrize("runtime", ["restricted", "wasi"])
def test_denied_capability_and_limit_through_the_client(config: Path, runtime: str):
    if runtime == "wasi" and not wasi_available():
        pytest.skip("the wasi runtime is not available here")

    async def scenario(session: ClientSession) -> dict[str, Any]:
        denied = await session.call_tool("run_python", {"code": "delete_file('/etc/passwd')"})
        caught = await session.call_tool(
            "run_python",
            {"code": "try:\n    delete_file('/tmp/x')\nexcept PolicyDenied as e:\n    print('refused:', e)\n'done'"},
        )
        limit = await session.call_tool("run_python", {"code": "n = 0\nwhile True:\n    n += 1"})
        after = await session.call_tool("run_python", {"code": "'still serving'"})
        return {"denied": denied, "caught": caught, "limit": limit, "after": after}

    out = with_client(config, scenario, "--runtime", runtime)
    denied = out["denied"]
    assert denied.is_error
    assert denied.structured_content["error"]["type"] == "PolicyDenied"
    assert "denied" in denied.structured_content["error"]["message"]
    caught = out["caught"].structured_content
    assert caught["ok"] is True and caught["value"] == "done"
    assert "refused: delete_file('/tmp/x') is denied" in caught["stdout"]

    limit = out["limit"]
    assert limit.is_error
    error = limit.structured_content["error"]
    assert error["kind"] == "limit_exceeded" and error["limit"] == "cpu"
    assert "limit_exceeded [cpu]" in text(limit)
    assert out["after"].structured_content["value"] == "still serving"


def test_sessions_keep_state_and_close(config: Path):
    async def scenario(session: ClientSession) -> dict[str, Any]:
        opened = await session.call_tool("session_open", {})
        sid = opened.structured_content["session_id"]
        first = await session.call_tool("session_run", {"session_id": sid, "code": "import math\ntotal = 10"})
        second = await session.call_tool("session_run", {"session_id": sid, "code": "total += 5\nmath.sqrt(total - 6)"})
        fresh = await session.call_tool("run_python", {"code": "total"})
        other = (await session.call_tool("session_open", {})).structured_content["session_id"]
        too_many = await session.call_tool("session_open", {})
        closed = await session.call_tool("session_close", {"session_id": sid})
        gone = await session.call_tool("session_run", {"session_id": sid, "code": "total"})
        again = await session.call_tool("session_close", {"session_id": sid})
        await session.call_tool("session_close", {"session_id": other})
        return {"opened": opened, "first": first, "second": second, "fresh": fresh, "too_many": too_many,
                "closed": closed, "gone": gone, "again": again}

    out = with_client(config, scenario)
    assert out["opened"].structured_content["expires_after_idle_seconds"] == 600
    assert out["first"].structured_content["ok"] is True
    assert out["second"].structured_content["value"] == 3.0
    assert out["second"].structured_content["session_id"] == out["opened"].structured_content["session_id"]
    assert out["fresh"].structured_content["error"]["type"] == "NameError"  # run_python has fresh state
    assert out["too_many"].is_error and "limit is 2" in text(out["too_many"])
    assert out["closed"].structured_content["closed"] is True
    assert out["gone"].is_error and "closed or expired" in text(out["gone"])
    assert out["again"].structured_content["closed"] is False


def test_secret_values_never_reach_tool_results(config: Path):
    async def scenario(session: ClientSession) -> dict[str, Any]:
        printed = await session.call_tool("run_python", {"code": "s = leaky_status()\nprint(s)\ns"})
        raised = await session.call_tool("run_python", {"code": "raise ValueError(leaky_status())"})
        described = await session.call_tool("describe_capabilities", {})
        return {"printed": printed, "raised": raised, "described": described}

    out = with_client(config, scenario)
    for result in out.values():
        dumped = json.dumps(result.model_dump(mode="json"))
        assert TOKEN not in dumped
        assert TOKEN.encode().hex() not in dumped
    printed = out["printed"].structured_content
    assert printed["ok"] is True and "[REDACTED:report_token]" in printed["stdout"]
    assert "[REDACTED:report_token]" in printed["value"]
    assert "secrets" in out["described"].structured_content["stub"]  # the handle's name, never its value


def test_policy_file_denies_through_the_client_and_runs_are_recorded(config: Path, tmp_path: Path):
    if "policy" not in inspect.signature(Sandbox).parameters:
        pytest.skip("Sandbox(policy=...) has not landed yet")
    from sandbox.audit import generate_signing_key, private_key_pem, read_records, verify

    key = generate_signing_key()
    (tmp_path / "records.pem").write_bytes(private_key_pem(key))
    config.write_text(
        'principal = "agent:mcp-test"\n' + CONFIG + '\n[records]\npath = "runs.jsonl"\nsigning_key = "records.pem"\n'
    )
    policy = tmp_path / "policy.toml"
    policy.write_text(textwrap.dedent('''
        default = "allow"

        [capabilities.get_weather]
        args.city = { one_of = ["Paris", "Oslo"] }
    '''))

    async def scenario(session: ClientSession) -> dict[str, Any]:
        allowed = await session.call_tool("run_python", {"code": "get_weather('Oslo')['temp']"})
        denied = await session.call_tool("run_python", {"code": "get_weather('Atlantis')"})
        return {"allowed": allowed, "denied": denied}

    out = with_client(config, scenario, "--policy", str(policy))
    assert out["allowed"].structured_content["value"] == 12
    error = out["denied"].structured_content["error"]
    assert out["denied"].is_error and error["type"] == "PolicyDenied" and "city" in error["message"]

    records = list(read_records(tmp_path / "runs.jsonl"))
    assert [r.run_id for r in records] == [out["allowed"].structured_content["run_id"],
                                          out["denied"].structured_content["run_id"]]
    assert all(r.principal is not None and r.principal.id == "agent:mcp-test" for r in records)
    denied = records[1].calls[0]
    assert denied.capability == "get_weather" and denied.status == "denied" and denied.decision == "deny"
    assert verify(tmp_path / "runs.jsonl", key.public_key()).ok


def test_bad_config_is_a_usage_error(tmp_path: Path):
    import subprocess

    bad = tmp_path / "bad.toml"
    bad.write_text('capabilities = ["no_such_module_xyz:thing"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox.adapters.mcp", "--config", str(bad)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=str(REPO),
    )
    assert proc.returncode == 2
    assert "no_such_module_xyz" in proc.stderr


def test_session_table_expires_idle_sessions():
    now = [0.0]
    with Sandbox() as sb:
        table = SessionTable(sb, SessionSettings(ttl_seconds=10, max_sessions=4), clock=lambda: now[0])
        a = table.open()
        b = table.open()
        now[0] = 8.0
        table.acquire(b)  # b is in use: it cannot expire while running
        now[0] = 30.0
        assert table.sweep() == [a]
        table.release(b)
        with pytest.raises(LookupError, match="closed or expired"):
            table.acquire(a)
        now[0] = 41.0
        assert table.sweep() == [b]
        assert len(table) == 0


def test_sandbox_mcp_command_of_the_main_cli(config: Path):
    from sandbox.cli import main

    if "mcp" not in main.commands:
        pytest.skip("`sandbox mcp` is not registered in sandbox/cli.py yet")

    async def scenario(session: ClientSession) -> Any:
        return await session.call_tool("run_python", {"code": "get_weather('Oslo')['temp']"})

    result = with_client(config, scenario, module="sandbox.cli")
    assert result.structured_content["value"] == 12


def test_idle_session_expires_through_the_client(config: Path):
    config.write_text(CONFIG.replace("ttl_seconds = 600", "ttl_seconds = 0.4"))

    async def scenario(session: ClientSession) -> dict[str, Any]:
        sid = (await session.call_tool("session_open", {})).structured_content["session_id"]
        kept = await session.call_tool("session_run", {"session_id": sid, "code": "x = 1\nx"})
        await asyncio.sleep(1.2)
        expired = await session.call_tool("session_run", {"session_id": sid, "code": "x"})
        return {"kept": kept, "expired": expired}

    out = with_client(config, scenario)
    assert out["kept"].structured_content["value"] == 1
    assert out["expired"].is_error and "closed or expired" in text(out["expired"])


def test_server_sweeps_idle_sessions_without_tool_calls():
    from mcp import Client

    from sandbox.adapters.mcp import create_server

    async def main(server: Any) -> tuple[int, int]:
        async with Client(server, mode="legacy") as client:
            await client.call_tool("session_open", {})
            before = len(server.session_table)
            await asyncio.sleep(1.0)
            return before, len(server.session_table)

    with Sandbox() as sb:
        server = create_server(sb, sessions=SessionSettings(ttl_seconds=0.2))
        assert asyncio.run(asyncio.wait_for(main(server), timeout=60)) == (1, 0)
