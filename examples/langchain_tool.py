"""A LangChain tool-calling loop whose tool runs Python in the sandbox.

    python examples/langchain_tool.py

`SandboxTool` is a langchain-core ``BaseTool``: its description is the code-mode prompt (rules
plus the typed stub of the capabilities), the model calls it with ``{"code": ...}``, and the
result comes back as a ``ToolMessage`` (the full ``RunResult`` in ``.artifact``). A scripted
chat model (langchain-core's ``GenericFakeChatModel`` with canned tool calls) stands where the
LLM would be, so this runs offline. Needs ``pip install 'sandbox[langchain]'``.
"""

from __future__ import annotations

import sys

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from sandbox import Limits, Sandbox, capability
from sandbox.adapters.langchain import SandboxTool

ORDERS = [
    {"id": 1, "customer": "ada", "total": 120.0},
    {"id": 2, "customer": "bob", "total": 35.5},
    {"id": 3, "customer": "ada", "total": 64.5},
]


@capability
def list_orders(customer: str) -> list[dict]:
    """The orders of one customer: [{"id": int, "customer": str, "total": float}]."""
    return [order for order in ORDERS if order["customer"] == customer]


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model that accepts bind_tools (the replies are canned anyway)."""

    def bind_tools(self, tools, **kwargs):
        return self


def main() -> int:
    sandbox = Sandbox(limits=Limits(cpu_seconds=1), capabilities=[list_orders])
    tool = SandboxTool(sandbox=sandbox)
    replies = iter([
        AIMessage(content="", tool_calls=[{
            "name": "run_python", "id": "call_1",
            "args": {"code": "import os\nos.getcwd()"},
        }]),
        AIMessage(content="", tool_calls=[{
            "name": "run_python", "id": "call_2",
            "args": {"code": "orders = list_orders('ada')\nprint(len(orders), 'orders')\nsum(o['total'] for o in orders)"},
        }]),
        AIMessage(content="Ada spent 184.5 in total."),
    ])
    model = ScriptedChatModel(messages=replies).bind_tools([tool])

    messages = [SystemMessage(tool.description), HumanMessage("How much has ada spent?")]
    while True:
        reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            result: ToolMessage = tool.invoke({**call, "type": "tool_call"})
            print(f"--- {call['id']} ({result.status})\n{result.content}\n")
            messages.append(result)
    sandbox.close()
    print("answer:", reply.content)
    return 0 if "184.5" in reply.content and messages[3].status == "error" else 1


if __name__ == "__main__":
    sys.exit(main())
