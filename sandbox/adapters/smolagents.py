"""smolagents: `SandboxExecutor`, a ``PythonExecutor`` that runs a ``CodeAgent``'s code in a `Sandbox`.

::

    from sandbox import Limits
    from sandbox.adapters.smolagents import SandboxExecutor, code_agent

    agent = code_agent(tools=[...], model=model, executor=SandboxExecutor(limits=Limits(cpu_seconds=2)))
    agent.run("...")

How it maps onto smolagents:

- **Tools become capabilities.** ``send_tools`` (called by ``agent.run``) turns every smolagents
  ``Tool`` (and managed agent) into a `Capability` whose typed signature comes from the tool's
  ``inputs`` and ``output_type``. The guest calls them like functions; each call crosses the
  boundary, is validated, counted and (with ``policy=``) decided by the policy, then runs on the
  host. Arguments and results must be JSON-like data.
- **final_answer** is a capability too: it records the answer on the host and ends the run at
  once (even inside ``try``/``except``), and the executor reports ``is_final_answer=True``.
- **State persists across steps** through a `Session`: variables, functions and imports defined
  in one step are visible in the next. ``send_variables`` (the agent's ``additional_args``)
  installs JSON-compatible variables into the session.
- **The prompt names the sandbox's imports.** `code_agent` builds a ``CodeAgent`` whose system
  prompt lists exactly the modules the sandbox accepts (`SandboxExecutor.authorized_imports`),
  not smolagents' defaults (``queue``, ``stat``, ``unicodedata`` are refused by the sandbox).
  With ``CodeAgent(..., executor=executor)`` directly, set
  ``agent.authorized_imports = executor.authorized_imports`` for the same prompt.
- **Failures are observations.** A refused import, a guest exception, a policy denial or a limit
  raises `SandboxExecutionError` (a smolagents ``InterpreterError``); the agent records it as the
  step's error, shows it to the model and keeps going, exactly as with its local executor.

Importing this module imports smolagents; ``import sandbox`` never does.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Union

from smolagents import CodeAgent
from smolagents.local_python_executor import CodeOutput, InterpreterError, PythonExecutor

from runtimes.wire import WireError, plain
from sandbox.capabilities import Capability
from sandbox.errors import ConfigurationError
from sandbox.limits import Limits
from sandbox.results import RunResult
from sandbox.runtime import CapabilityFault

__all__ = ["SandboxExecutionError", "SandboxExecutor", "code_agent", "tool_to_capability"]

_TYPES: dict[str, Any] = {
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": float,
    "array": list,
    "object": dict,
    "any": Any,
    "null": type(None),
    "image": Any,
    "audio": Any,
}

FINAL_ANSWER = "final_answer"
_NO_ANSWER = object()


class SandboxExecutionError(InterpreterError):
    """A step's code failed in the sandbox; the message is what the model sees.

    ``result`` is the `RunResult` of the failed run.
    """

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


def _annotation(spec: Mapping[str, Any]) -> Any:
    kinds = spec.get("type", "any")
    names = kinds if isinstance(kinds, (list, tuple)) else [kinds]
    types = []
    for name in names:
        if name not in _TYPES:
            raise ConfigurationError(f"smolagents type {name!r} has no sandbox equivalent: use one of {sorted(_TYPES)}")
        types.append(_TYPES[name])
    if Any in types:
        return Any
    annotation = types[0] if len(types) == 1 else Union[tuple(types)]  # noqa: UP007
    if spec.get("nullable") and type(None) not in types:
        annotation = Optional[annotation]  # noqa: UP007
    return annotation


def _coerce(value: Any, output_type: str) -> Any:
    """Tools often return ``int`` for "number" or a str subclass for "string": make them exact."""
    if output_type == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if output_type == "string" and isinstance(value, str) and type(value) is not str:
        return str(value)
    return value


def tool_to_capability(tool: Any, *, call: Callable[..., Any] | None = None) -> Capability:
    """A `Capability` for a smolagents ``Tool`` (or managed agent), typed from its ``inputs``.

    Nullable inputs become optional parameters defaulting to None. ``call`` replaces the
    function that runs the tool (default: ``tool(**arguments)``).
    """
    name = getattr(tool, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigurationError(f"smolagents tool name {name!r} is not a Python identifier, so guest code cannot call it")
    inputs: Mapping[str, Mapping[str, Any]] = getattr(tool, "inputs", None) or {}
    output_type = getattr(tool, "output_type", "any")
    params = []
    annotations: dict[str, Any] = {}
    optional = False
    for arg, spec in inputs.items():
        annotation = _annotation(spec)
        nullable = bool(spec.get("nullable"))
        # A required input after an optional one: keyword-only keeps the signature valid.
        kind = inspect.Parameter.KEYWORD_ONLY if optional and not nullable else inspect.Parameter.POSITIONAL_OR_KEYWORD
        optional = optional or nullable
        params.append(inspect.Parameter(arg, kind, default=None if nullable else inspect.Parameter.empty,
                                        annotation=annotation))
        annotations[arg] = annotation
    returns = _annotation({"type": output_type})
    annotations["return"] = returns

    runner = call or (lambda **kwargs: tool(**kwargs))

    def invoke(**kwargs: Any) -> Any:
        return _coerce(runner(**kwargs), output_type)

    invoke.__name__ = invoke.__qualname__ = name
    invoke.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    invoke.__annotations__ = annotations
    doc = (getattr(tool, "description", "") or "").strip()
    if inputs:
        lines = [f"    {arg}: {spec.get('description', '')}".rstrip() for arg, spec in inputs.items()]
        doc = f"{doc}\n\nArgs:\n" + "\n".join(lines)
    return Capability(invoke, name=name, description=doc)


def format_error(result: RunResult) -> str:
    """The observation for a failed run: what failed, where, and how."""
    err = result.error
    if err is None:
        return "Code execution failed."
    where = f" at line {err.lineno}" if err.lineno else ""
    if err.kind == "limit_exceeded":
        what = f"the sandbox stopped the code{where}: {err.limit or 'a'} limit exceeded: {err.message}"
    elif err.kind == "policy_denied":
        what = f"the sandbox policy ended the run{where}: {err.type}: {err.message}"
    elif err.kind == "compile_error":
        what = f"the code was refused before it ran{where}: {err.type}: {err.message}"
    elif err.kind == "internal":
        what = f"the sandbox failed internally: {err.message}"
    else:
        what = f"code execution failed{where}: {err.type}: {err.message}"
    return what[0].upper() + what[1:]


class SandboxExecutor(PythonExecutor):
    """A smolagents ``PythonExecutor`` that runs each step's code in a `Sandbox` session.

    Args:
        runtime: ``"restricted"`` or ``"wasi"``, as for `Sandbox`.
        limits: per-step `Limits` (each step is one run).
        capabilities: host capabilities granted besides the agent's tools.
        sandbox_factory: builds the `Sandbox` from keyword arguments (default: `Sandbox`);
            override it to configure a sandbox your own way.
        **sandbox_kwargs: passed to `Sandbox` (``isolation=``, ``policy=``, ``secrets=``, ...).

    ``results`` lists the `RunResult` of every step run so far (for inspection and tests); a
    step that called ``final_answer`` shows as ok, with the answer as its value.
    Call `cleanup` (the agent does, on ``agent.cleanup()`` or leaving ``with agent:``) to
    release the sandbox.
    """

    def __init__(
        self,
        runtime: str = "restricted",
        *,
        limits: Limits | None = None,
        capabilities: Iterable[Any] = (),
        sandbox_factory: Callable[..., Any] | None = None,
        **sandbox_kwargs: Any,
    ) -> None:
        self.runtime = runtime
        self.limits = limits
        self.extra_capabilities = list(capabilities)
        self.sandbox_kwargs = sandbox_kwargs
        self._factory = sandbox_factory
        self.state: dict[str, Any] = {"_print_outputs": ""}
        """Mirrors smolagents' executor state: ``_print_outputs`` holds the last step's output."""
        self.results: list[RunResult] = []
        self.sandbox: Any = None
        self._session: Any = None
        self._tools: dict[str, Any] = {}
        self._variables: dict[str, Any] = {}
        self._final: Any = _NO_ANSWER
        self._lock = threading.RLock()

    @property
    def authorized_imports(self) -> list[str]:
        """The modules guest code may import in this executor's sandbox (its runtime's
        allowlist plus the ``modules=`` it was given), for the agent's system prompt."""
        from sandbox.stub import guest_modules

        return list(guest_modules(self.sandbox_kwargs.get("modules", ())))

    # -- PythonExecutor ------------------------------------------------------------------

    def send_tools(self, tools: dict[str, Any]) -> None:
        """Grant ``tools`` as capabilities. A new tool set starts a fresh sandbox session."""
        with self._lock:
            if self.sandbox is not None and tools.keys() == self._tools.keys() and all(
                tools[name] is self._tools[name] for name in tools
            ):
                return
            capabilities = [self._final_answer_capability(tool) if name == FINAL_ANSWER else tool_to_capability(tool)
                            for name, tool in tools.items()]
            capabilities += self.extra_capabilities
            self._close()
            kwargs = dict(self.sandbox_kwargs)
            if self.limits is not None:
                kwargs["limits"] = self.limits
            if self._factory is not None:
                self.sandbox = self._factory(runtime=self.runtime, capabilities=capabilities, **kwargs)
            else:
                from sandbox.sandbox import Sandbox

                self.sandbox = Sandbox(self.runtime, capabilities=capabilities, **kwargs)  # type: ignore[arg-type]
            self._tools = dict(tools)
            self._session = self.sandbox.session()
            if self._variables:
                self._install(self._variables)

    def send_variables(self, variables: dict[str, Any]) -> None:
        """Make ``variables`` guest globals; each must be JSON-compatible (`TypeError` otherwise)."""
        checked: dict[str, Any] = {}
        for name, value in variables.items():
            if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
                raise ConfigurationError(f"variable {name!r} cannot be a guest global: use an identifier not starting with '_'")
            try:
                checked[name] = plain(value)
            except WireError as exc:
                raise TypeError(f"variable {name!r} cannot enter the sandbox: {exc}") from None
        with self._lock:
            self._variables.update(checked)
            if self._session is not None and checked:
                self._install(checked)

    def __call__(self, code_action: str) -> CodeOutput:
        """Run one step's code in the session; raise `SandboxExecutionError` when it fails."""
        with self._lock:
            if self._session is None:
                self.send_tools({})
            self._final = _NO_ANSWER
            try:
                result: RunResult = self._session.run(code_action)
                final, self._final = self._final, _NO_ANSWER
            finally:
                self._final = _NO_ANSWER
            if final is not _NO_ANSWER:
                # The host ended the run on purpose: record it as the successful run it was.
                result = result.model_copy(update={"ok": True, "error": None, "value": final})
            self.results.append(result)
            logs = result.stdout
            if result.stderr:
                logs += ("" if not logs or logs.endswith("\n") else "\n") + result.stderr
            if result.output_truncated:
                logs += "\n[output truncated at the sandbox's limit]"
            self.state["_print_outputs"] = logs
            if final is not _NO_ANSWER:
                return CodeOutput(output=final, logs=logs, is_final_answer=True)
            if not result.ok:
                raise SandboxExecutionError(format_error(result), result)
            return CodeOutput(output=result.value, logs=logs, is_final_answer=False)

    def cleanup(self) -> None:
        """Close the session and the sandbox. The executor can be used again (a new sandbox starts)."""
        with self._lock:
            self._close()
            self._tools = {}

    # -- internals -------------------------------------------------------------------------

    def _final_answer_capability(self, tool: Any) -> Capability:
        def record(**kwargs: Any) -> None:
            self._final = tool(**kwargs)
            raise CapabilityFault(
                "CapabilityError", "final_answer() was called: the step ends here", terminate="guest_exception"
            )

        return tool_to_capability(tool, call=record)

    def _install(self, variables: Mapping[str, Any]) -> None:
        result = self._session.run("None", inputs=variables)
        if not result.ok:
            raise RuntimeError(f"could not install variables in the sandbox: {format_error(result)}")

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None


def code_agent(tools: list[Any], model: Any, *, executor: SandboxExecutor | None = None, **kwargs: Any) -> CodeAgent:
    """A smolagents ``CodeAgent`` whose code runs in ``executor`` (default: a new
    `SandboxExecutor`) and whose system prompt lists exactly the imports the sandbox accepts.

    ``kwargs`` go to ``CodeAgent``; ``additional_authorized_imports`` is refused with
    `ConfigurationError` (the sandbox's allowlist decides imports: add optional modules with
    ``SandboxExecutor(isolation="process", modules=[...])``).
    """
    if "additional_authorized_imports" in kwargs or "executor_type" in kwargs:
        raise ConfigurationError(
            "code_agent: the sandbox decides imports and runs the code; drop additional_authorized_imports "
            "and executor_type (optional modules: SandboxExecutor(isolation='process', modules=[...]))"
        )
    executor = executor if executor is not None else SandboxExecutor()
    agent = CodeAgent(tools=tools, model=model, executor=executor, **kwargs)
    agent.authorized_imports = executor.authorized_imports
    return agent
