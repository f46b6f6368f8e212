"""Code-mode prompts: tell a model what it may call, as a typed Python stub.

`Sandbox.describe()` renders the capabilities as a Python stub (signatures, docstrings and the
types they use) and lists the modules the sandbox's runtime lets guest code import;
`code_mode_prompt` wraps both in the few rules a model needs to write code against them.
The adapters use it for the MCP server's instructions, the LangChain tool's description, and
it is what you paste into a system prompt of your own (see docs/code-mode.md).
"""

from __future__ import annotations

import json
from typing import Any

from sandbox.capabilities import ApiDescription

RULES = """\
Write Python 3 and it runs in a sandbox. The rules:
- The functions below are already defined in your code's globals: call them directly, do not import them.
- {imports}
  There is no file system, network, subprocess or environment access except through the functions below.
- print() what you want to read; the value of the last expression is returned too.
- Arguments and results are data, not objects: the TypedDict classes below describe the dicts you pass
  and get back (build and read them as dicts), and Literal types list the allowed values.
- A refused call raises PolicyDenied; a failing call raises CapabilityError. Both can be caught.
- CPU time, wall time, memory and output size are limited; keep loops bounded."""
"""The rules of `code_mode_prompt`; ``{imports}`` becomes the sandbox's import allowlist."""


def rules_for(api: ApiDescription) -> str:
    """`RULES` with the import allowlist of ``api`` (the modules of its sandbox's runtime)."""
    if api.modules:
        imports = f"You may import only these modules: {', '.join(api.modules)}."
    else:
        imports = "Imports are limited to a safe standard-library subset."
    return RULES.format(imports=imports)


def code_mode_prompt(api: Any, *, rules: str | None = None, fence: str = "python") -> str:
    """The code-mode prompt for ``api``: a `Sandbox`, a `Session`'s sandbox, or an `ApiDescription`.

    Returns the rules (default: `rules_for` the description, which names exactly the modules
    the sandbox's runtime accepts) followed by the stub in a fenced block, ready for a system
    prompt or a tool description.
    """
    description = api if isinstance(api, ApiDescription) else api.describe()
    text = rules_for(description) if rules is None else rules
    return f"{text}\n\nAvailable functions:\n```{fence}\n{description.stub.rstrip()}\n```\n"


def render_result(result: Any) -> str:
    """A run's outcome as text for a model: stdout, stderr, then the value or the error.

    ``result`` is a `RunResult` (or anything with its ``stdout``, ``stderr``,
    ``output_truncated``, ``error`` and ``value`` fields).
    """
    parts = []
    if result.stdout:
        parts.append(f"stdout:\n{result.stdout.rstrip()}")
    if result.stderr:
        parts.append(f"stderr:\n{result.stderr.rstrip()}")
    if result.output_truncated:
        parts.append("(output truncated at the sandbox's limit)")
    err = result.error
    if err is not None:
        where = f" at line {err.lineno}" if err.lineno else ""
        limit = f" [{err.limit}]" if err.limit else ""
        parts.append(f"error: {err.kind}{limit}{where}: {err.type}: {err.message}")
    elif result.value is not None:
        parts.append(f"value: {json.dumps(result.value, ensure_ascii=False, default=repr)}")
    return "\n".join(parts) or "ok (no output, no value)"
