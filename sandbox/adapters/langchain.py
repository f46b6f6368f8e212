"""LangChain: `SandboxTool`, a langchain-core ``BaseTool`` that runs Python in a `Sandbox`.

::

    from sandbox import Sandbox, capability
    from sandbox.adapters.langchain import SandboxTool

    tool = SandboxTool(sandbox=Sandbox(capabilities=[get_weather]))
    tool.invoke({"code": "get_weather('Paris')['temp']"})            # -> "value: 21"
    model.bind_tools([tool])                                         # tool calling as usual

The tool's description is the code-mode prompt: the rules and the typed stub of the sandbox's
capabilities, so the model writes code against them (see docs/code-mode.md).

- A successful run returns text (stdout and the value) and, with ``response_format
  ="content_and_artifact"`` (the default), the `RunResult` as a dict in ``ToolMessage.artifact``.
- A failed run (guest exception, refused import, policy denial, limit) raises ``ToolException``;
  with ``handle_tool_error=True`` (the default) the model sees the error as the tool's output and
  the ``ToolMessage`` has ``status="error"``.
- ``persistent=True`` keeps one `Session` across calls, so variables survive between them.

Importing this module imports langchain-core; ``import sandbox`` never does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from sandbox.adapters.prompts import code_mode_prompt, render_result
from sandbox.results import RunResult

__all__ = ["RunPythonInput", "SandboxTool", "render_result"]


class RunPythonInput(BaseModel):
    """The tool's arguments."""

    code: str = Field(description="Python code to run. print() what you need; the last expression's value is returned.")


class SandboxTool(BaseTool):
    """Runs the model's Python code in ``sandbox`` and returns what it printed and produced.

    Args:
        sandbox: the `Sandbox` to run in (its capabilities, limits, policy and secrets apply).
        persistent: keep one `Session` across calls (variables persist); default False
            (fresh state per call).
        name / description: override the defaults (``run_python`` and the code-mode prompt).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "run_python"
    description: str = ""
    args_schema: type[BaseModel] = RunPythonInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], Any] | None = True
    sandbox: Any = Field(exclude=True)
    persistent: bool = False

    _session: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if not self.description:
            self.description = (
                "Run Python code in a sandbox and get back its output and the value of its last expression.\n\n"
                + code_mode_prompt(self.sandbox)
            )

    def _runner(self) -> Any:
        if not self.persistent:
            return self.sandbox
        with self._lock:
            if self._session is None:
                self._session = self.sandbox.session()
            return self._session

    def _finish(self, result: RunResult) -> Any:
        text = render_result(result)
        if not result.ok:
            raise ToolException(text)
        if self.response_format == "content":
            return text
        return text, result.model_dump(mode="json")

    def _run(self, code: str, run_manager: CallbackManagerForToolRun | None = None) -> Any:
        return self._finish(self._runner().run(code))

    async def _arun(self, code: str, run_manager: AsyncCallbackManagerForToolRun | None = None) -> Any:
        return self._finish(await self._runner().arun(code))

    def close(self) -> None:
        """Discard the persistent session (the sandbox itself is the caller's to close)."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
