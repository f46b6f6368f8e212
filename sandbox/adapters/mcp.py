"""An MCP server that runs Python in a `Sandbox`: ``sandbox mcp --config FILE``.

Built on the official ``mcp`` SDK (``MCPServer``), stdio transport. Tools:

- ``run_python(code, inputs=None)``: run code with fresh state; returns stdout, stderr, value,
  error (kind, type, message, line, limit) and usage. A failed run is a tool error
  (``isError``) whose structured content still carries the whole result.
- ``describe_capabilities()``: the code-mode API stub (typed Python signatures with docstrings)
  and the same capabilities as JSON tool schemas.
- ``session_open()`` / ``session_run(session_id, code, inputs=None)`` / ``session_close(session_id)``:
  runs that share globals. A session expires after ``[sessions] ttl_seconds`` without use;
  at most ``max_sessions`` are open at once.

Capabilities (``module:function`` import paths), secrets, limits and the policy come from the
configuration file (`sandbox.adapters.config`). Secret values never appear in tool results:
the sandbox redacts them from outputs, values and errors, and this server redacts every result
once more before it leaves the process.

The ``mcp`` SDK is imported only when a server is built, so ``sandbox --help`` works without
the extra. Register the command in the main CLI with ``main.add_command(mcp_command)``.

(No ``from __future__ import annotations`` here: the SDK reads the tool functions' annotations,
which refer to names imported lazily inside `create_server`.)
"""

import logging
import secrets as _random
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
from pydantic import BaseModel, ConfigDict, Field

from sandbox.adapters.config import SessionSettings, load_config
from sandbox.adapters.prompts import code_mode_prompt, render_result
from sandbox.results import ErrorInfo, RunResult, Usage

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["RunOutput", "SessionTable", "create_server", "mcp_command", "serve"]

log = logging.getLogger("sandbox.mcp")

SERVER_NAME = "sandbox"


class RunOutput(BaseModel):
    """What ``run_python`` and ``session_run`` return (the structured content of the result)."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    error: ErrorInfo | None = None
    usage: Usage = Field(default_factory=Usage)
    run_id: str = ""
    session_id: str | None = None


class SessionInfo(BaseModel):
    """What ``session_open`` returns."""

    session_id: str
    expires_after_idle_seconds: float


class SessionClosed(BaseModel):
    """What ``session_close`` returns."""

    session_id: str
    closed: bool


class ApiOutput(BaseModel):
    """What ``describe_capabilities`` returns."""

    stub: str
    tools: list[dict[str, Any]]
    modules: list[str] = []
    """The modules guest code may import."""


@dataclass
class _Entry:
    session: Any
    last_used: float
    busy: int = 0


@dataclass
class SessionTable:
    """Open sandbox sessions by id, with idle expiry and a cap. Thread-safe.

    ``clock`` is injectable for tests. Expired sessions are closed by `sweep`, which every tool
    call runs and the server also runs periodically (every quarter of the TTL, at most 30 s).
    """

    sandbox: Any
    settings: SessionSettings = field(default_factory=SessionSettings)
    clock: Any = time.monotonic
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> str:
        self.sweep()
        with self._lock:
            if len(self._entries) >= self.settings.max_sessions:
                raise LookupError(
                    f"{len(self._entries)} sessions are open, the limit is {self.settings.max_sessions}: "
                    "close one with session_close or wait for one to expire"
                )
            session_id = _random.token_urlsafe(16)
            self._entries[session_id] = _Entry(self.sandbox.session(), self.clock())
            return session_id

    def acquire(self, session_id: str) -> Any:
        """The session for ``session_id``, marked busy (it cannot expire while running)."""
        self.sweep()
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                raise LookupError(f"no open session {session_id!r}: it was closed or expired; open a new one")
            entry.busy += 1
            entry.last_used = self.clock()
            return entry.session

    def release(self, session_id: str) -> None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None:
                entry.busy -= 1
                entry.last_used = self.clock()

    def close(self, session_id: str) -> bool:
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            return False
        entry.session.close()
        return True

    def sweep(self) -> list[str]:
        """Close sessions idle for longer than the TTL; return their ids."""
        now = self.clock()
        with self._lock:
            expired = [
                sid for sid, e in self._entries.items()
                if not e.busy and now - e.last_used > self.settings.ttl_seconds
            ]
            entries = [self._entries.pop(sid) for sid in expired]
        for entry in entries:
            entry.session.close()
        if expired:
            log.info("expired %d idle session(s)", len(expired))
        return expired

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.session.close()

    def __len__(self) -> int:
        return len(self._entries)


def render_text(output: RunOutput) -> str:
    """The result as text for the model: output, then the value or the error, then the session."""
    text = render_result(output)
    return f"{text}\nsession: {output.session_id}" if output.session_id else text


def create_server(
    sandbox: Any,
    *,
    sessions: SessionSettings | None = None,
    name: str = SERVER_NAME,
    clock: Any = time.monotonic,
) -> "MCPServer":
    """An ``MCPServer`` exposing ``sandbox`` through the five tools (see the module docstring).

    Results are redacted by the sandbox itself (every secret value and its encodings), so
    nothing here reads a secret. The server owns neither the sandbox nor its
    sessions' lifetime beyond the table: close the sandbox when the server stops.
    """
    from typing import Annotated

    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import CallToolResult, TextContent

    table = SessionTable(sandbox, sessions or SessionSettings(), clock)

    def finish(result: RunResult, session_id: str | None = None) -> CallToolResult:
        output = RunOutput.model_validate(
            {**result.model_dump(include=set(RunOutput.model_fields)), "session_id": session_id}
        )
        data = output.model_dump(mode="json")
        return CallToolResult(
            content=[TextContent(type="text", text=render_text(output))],
            structured_content=data,
            is_error=not output.ok,
        )

    async def execute(run: Any, code: str, inputs: dict[str, Any] | None, session_id: str | None) -> CallToolResult:
        try:
            result = await run(code, inputs=inputs)
        except (TypeError, ValueError) as exc:  # inputs that are not JSON data or not identifiers
            raise ToolError(f"invalid inputs: {exc}") from None
        return finish(result, session_id)

    instructions = (
        "Runs Python code in a sandbox. Use run_python for one-off code, or session_open and "
        "session_run to keep variables between runs. Call describe_capabilities to get the API "
        "stub again.\n\n" + code_mode_prompt(sandbox)
    )
    @asynccontextmanager
    async def sweeper(_: Any) -> AsyncIterator[None]:
        # Expire idle sessions even when no tool is called (each tool call sweeps too).
        import anyio

        async def sweep_forever() -> None:
            interval = min(max(table.settings.ttl_seconds / 4, 0.05), 30.0)
            while True:
                await anyio.sleep(interval)
                await anyio.to_thread.run_sync(table.sweep)

        async with anyio.create_task_group() as group:
            group.start_soon(sweep_forever)
            try:
                yield None
            finally:
                group.cancel_scope.cancel()

    server = MCPServer(name=name, instructions=instructions, log_level="WARNING", lifespan=sweeper)

    @server.tool()
    async def run_python(code: str, inputs: dict[str, Any] | None = None) -> Annotated[CallToolResult, RunOutput]:
        """Run Python code in the sandbox with fresh state and return its stdout, the value of its
        last expression, any error (kind, type, message, line) and resource usage. `inputs`
        become global variables (JSON values). Call describe_capabilities for the functions
        the code may call."""
        table.sweep()
        return await execute(sandbox.arun, code, inputs, None)

    @server.tool()
    async def describe_capabilities() -> Annotated[CallToolResult, ApiOutput]:
        """The functions your code may call, as a typed Python stub with docstrings (code mode),
        and the same functions as JSON tool schemas."""
        api = sandbox.describe()
        data = ApiOutput(stub=api.stub, tools=api.tools, modules=api.modules).model_dump(mode="json")
        return CallToolResult(content=[TextContent(type="text", text=code_mode_prompt(api))], structured_content=data)

    @server.tool()
    async def session_open() -> SessionInfo:
        """Open a session: runs in it (session_run) share global variables, functions and imports.
        It expires when unused for a while; close it with session_close when done."""
        try:
            session_id = table.open()
        except LookupError as exc:
            raise ToolError(str(exc)) from None
        return SessionInfo(session_id=session_id, expires_after_idle_seconds=table.settings.ttl_seconds)

    @server.tool()
    async def session_run(
        session_id: str, code: str, inputs: dict[str, Any] | None = None
    ) -> Annotated[CallToolResult, RunOutput]:
        """Run Python code in an open session: globals from its earlier runs are visible. Returns
        the same fields as run_python."""
        try:
            session = table.acquire(session_id)
        except LookupError as exc:
            raise ToolError(str(exc)) from None
        try:
            return await execute(session.arun, code, inputs, session_id)
        finally:
            table.release(session_id)

    @server.tool()
    async def session_close(session_id: str) -> SessionClosed:
        """Close a session and discard its state. Closing an unknown or expired session is not an error."""
        table.sweep()
        return SessionClosed(session_id=session_id, closed=table.close(session_id))

    server.session_table = table  # type: ignore[attr-defined]
    return server


def serve(sandbox: Any, *, sessions: SessionSettings | None = None) -> None:
    """Serve ``sandbox`` as MCP on stdin/stdout until the client leaves; then close its sessions
    and the sandbox."""
    server = create_server(sandbox, sessions=sessions)
    try:
        server.run("stdio")
    finally:
        server.session_table.close_all()  # type: ignore[attr-defined]
        sandbox.close()


@click.command("mcp")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML file: runtime, limits, capabilities, secrets, policy, sessions.")
@click.option("--runtime", type=click.Choice(["restricted", "wasi"]), default=None,
              help="Override the config's runtime (default: restricted).")
@click.option("--isolation", type=click.Choice(["process"]), default=None, help="Confine each run in a child process.")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Policy TOML file (overrides the config's policy).")
def mcp_command(config_path: str | None, runtime: str | None, isolation: str | None, policy_path: str | None) -> None:
    """Serve the sandbox as an MCP server over stdio (tools: run_python, describe_capabilities,
    session_open, session_run, session_close)."""
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        raise click.ClickException("the MCP server needs the mcp extra: pip install 'sandbox[mcp]'") from None
    try:
        config = load_config(config_path)
        sandbox = config.build_sandbox(runtime=runtime, isolation=isolation, policy=policy_path)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        serve(sandbox, sessions=config.sessions)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    mcp_command()
