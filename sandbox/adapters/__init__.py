"""Adapters that let agent frameworks use a `Sandbox` through their own interfaces.

Each adapter lives in its own module and imports its framework only when that module is
imported, so ``import sandbox`` (and ``import sandbox.adapters``) never pulls in a framework:

- `sandbox.adapters.mcp`: an MCP server on the official ``mcp`` SDK, stdio transport
  (``sandbox mcp --config FILE``; ``pip install 'sandbox[mcp]'``);
- `sandbox.adapters.smolagents`: `SandboxExecutor`, a smolagents ``PythonExecutor``, and
  `code_agent`, a ``CodeAgent`` whose prompt lists the sandbox's imports
  (``code_agent(tools, model, executor=SandboxExecutor())``; ``pip install 'sandbox[smolagents]'``);
- `sandbox.adapters.langchain`: `SandboxTool`, a langchain-core ``BaseTool``
  (``pip install 'sandbox[langchain]'``);
- `sandbox.adapters.config`: the TOML configuration the MCP server (and anyone else) loads;
- `sandbox.adapters.prompts`: the code-mode prompt built from `Sandbox.describe()`.
"""

from __future__ import annotations
