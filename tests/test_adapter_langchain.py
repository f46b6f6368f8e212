"""The LangChain adapter through langchain-core's real tool interface: ``invoke`` with args and with a ToolCall."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import ToolMessage  # noqa: E402
from langchain_core.tools import BaseTool  # noqa: E402
from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: E402

from sandbox import Limits, Sandbox, capability  # noqa: E402
from sandbox.adapters.langchain import SandboxTool  # noqa: E402
from sandbox.runtime import CapabilityFault  # noqa: E402

CALLS: list[str] = []


@capability
def get_weather(city: str) -> dict:
    """Current weather for a city: {"city": ..., "temp": degrees Celsius}."""
    CALLS.append(city)
    return {"city": city, "temp": 21}


@capability
def drop_table(name: str) -> str:
    """Drop a database table."""
    raise CapabilityFault("PolicyDenied", f"drop_table({name!r}) is denied")


@pytest.fixture
def sandbox():
    CALLS.clear()
    with Sandbox(limits=Limits(cpu_seconds=0.5), capabilities=[get_weather, drop_table]) as sb:
        yield sb


def test_invoke_with_args(sandbox: Sandbox):
    tool = SandboxTool(sandbox=sandbox)
    assert isinstance(tool, BaseTool) and tool.name == "run_python"
    out = tool.invoke({"code": "w = get_weather('Paris')\nprint(w['city'])\nw['temp'] + 1"})
    assert out == "stdout:\nParis\nvalue: 22"
    assert CALLS == ["Paris"]


def test_invoke_with_a_tool_call_gives_a_tool_message_with_the_result_as_artifact(sandbox: Sandbox):
    tool = SandboxTool(sandbox=sandbox)
    message = tool.invoke(
        {"name": "run_python", "args": {"code": "sorted({3, 1, 2})"}, "id": "call_1", "type": "tool_call"}
    )
    assert isinstance(message, ToolMessage)
    assert message.tool_call_id == "call_1" and message.status == "success"
    assert message.content == "value: [1, 2, 3]"
    assert message.artifact["ok"] is True and message.artifact["value"] == [1, 2, 3]
    assert message.artifact["runtime"] == "restricted"


def test_failures_are_error_tool_messages(sandbox: Sandbox):
    tool = SandboxTool(sandbox=sandbox)

    def call(code: str, call_id: str) -> ToolMessage:
        return tool.invoke({"name": "run_python", "args": {"code": code}, "id": call_id, "type": "tool_call"})

    refused = call("import subprocess", "c1")
    assert refused.status == "error" and "ImportError" in refused.content and "'subprocess'" in refused.content
    denied = call("drop_table('users')", "c2")
    assert denied.status == "error" and "PolicyDenied" in denied.content
    limit = call("while True:\n    pass", "c3")
    assert limit.status == "error" and "limit_exceeded [cpu]" in limit.content
    crashed = call("print('before')\nraise KeyError('k')", "c4")
    assert crashed.status == "error" and "stdout:\nbefore" in crashed.content and "KeyError" in crashed.content


def test_description_is_the_code_mode_prompt_and_schema_has_code(sandbox: Sandbox):
    tool = SandboxTool(sandbox=sandbox)
    assert "def get_weather(city: str) -> dict:" in tool.description
    assert "Drop a database table." in tool.description
    schema = convert_to_openai_tool(tool)
    assert schema["function"]["name"] == "run_python"
    assert list(schema["function"]["parameters"]["properties"]) == ["code"]
    assert schema["function"]["parameters"]["required"] == ["code"]


def test_persistent_tool_keeps_state_and_async_invoke(sandbox: Sandbox):
    tool = SandboxTool(sandbox=sandbox, persistent=True, name="python")
    tool.invoke({"code": "total = 40"})
    assert tool.invoke({"code": "total += 2\ntotal"}) == "value: 42"
    assert asyncio.run(tool.ainvoke({"code": "total * 2"})) == "value: 84"
    tool.close()
    fresh = SandboxTool(sandbox=sandbox, response_format="content")
    assert "NameError" in fresh.invoke({"code": "total"})
