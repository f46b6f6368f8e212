"""Drive the sandbox MCP server with the official MCP client, over stdio.

    python examples/mcp_client.py

Starts ``python -m sandbox.adapters.mcp --config examples/mcp_server.toml`` (the same server
as ``sandbox mcp --config ...``), reads the code-mode API from ``describe_capabilities``, and
lets a *scripted* model write the code (where an LLM would be): a one-off run, a secret used
through its handle, a session that keeps state, a denied capability and a limit being hit.
Needs ``pip install 'sandbox[mcp]'``; no network, no API key.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

HERE = Path(__file__).resolve().parent


class ScriptedModel:
    """Stands in for an LLM: given the API stub and a task, returns canned code."""

    CODE = {
        "warmest": (
            "temps = {c: get_weather(c)['temp'] for c in ['Paris', 'Oslo', 'Lima']}\n"
            "warmest = max(temps, key=temps.get)\n"
            "print('temperatures:', temps)\n"
            "warmest"
        ),
        "forecast": "get_forecast('Cairo', secrets.weather_api_key)",
        "session-1": "history = []\nhistory.append(get_weather('Oslo')['temp'])\nlen(history)",
        "session-2": "history.append(get_weather('Paris')['temp'])\nsum(history) / len(history)",
        "cleanup": "delete_file('/etc/hosts')",
        "spin": "n = 0\nwhile True:\n    n += 1",
    }

    def __init__(self) -> None:
        self.prompt = ""

    def system(self, prompt: str) -> None:
        self.prompt = prompt  # an LLM would read the stub here

    def write_code(self, task: str) -> str:
        assert "def get_weather(city: str) -> dict:" in self.prompt, "the model was not shown the API"
        return self.CODE[task]


def show(title: str, result: object) -> None:
    text = "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")
    flag = "  [isError]" if result.is_error else ""
    print(f"--- {title}{flag}\n{text}\n")


async def main() -> int:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sandbox.adapters.mcp", "--config", str(HERE / "mcp_server.toml")],
        env={"WEATHER_API_KEY": "demo-weather-key-5a1c9e"},
    )
    model = ScriptedModel()
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            print("tools:", ", ".join(t.name for t in tools.tools), "\n")

            api = await session.call_tool("describe_capabilities", {})
            model.system(api.structured_content["stub"])
            print("--- describe_capabilities (the stub the model reads)")
            print(api.structured_content["stub"])

            warmest = await session.call_tool("run_python", {"code": model.write_code("warmest")})
            show("run_python: warmest city", warmest)

            forecast = await session.call_tool("run_python", {"code": model.write_code("forecast")})
            show("run_python: forecast through a secret handle", forecast)

            opened = await session.call_tool("session_open", {})
            sid = opened.structured_content["session_id"]
            for step in ("session-1", "session-2"):
                result = await session.call_tool("session_run", {"session_id": sid, "code": model.write_code(step)})
                show(f"session_run: {step}", result)
            await session.call_tool("session_close", {"session_id": sid})

            denied = await session.call_tool("run_python", {"code": model.write_code("cleanup")})
            show("run_python: a denied capability", denied)

            spin = await session.call_tool("run_python", {"code": model.write_code("spin")})
            show("run_python: a limit being hit", spin)

    ok = (
        warmest.structured_content["value"] == "Paris"
        and forecast.structured_content["value"]["high"] == 33
        and denied.structured_content["error"]["type"] == "PolicyDenied"
        and spin.structured_content["error"]["kind"] == "limit_exceeded"
    )
    print("example ok" if ok else "example FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
