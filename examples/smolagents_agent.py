"""A smolagents CodeAgent whose code runs in the sandbox.

    python examples/smolagents_agent.py

The agent's tools become sandbox capabilities, every step runs in one sandbox session (state
persists), and a refused import or a failed step comes back to the model as an observation.
The system prompt lists exactly the imports the sandbox accepts (`code_agent`).
A scripted ``Model`` stands where the LLM would be, so this runs offline. Needs
``pip install 'sandbox[smolagents]'``.
"""

from __future__ import annotations

import sys

from smolagents import tool
from smolagents.models import ChatMessage, MessageRole, Model

from sandbox import Limits
from sandbox.adapters.smolagents import SandboxExecutor, code_agent


@tool
def get_weather(city: str) -> dict:
    """Current weather for a city.

    Args:
        city: The city name, e.g. "Paris".
    """
    return {"city": city, "temp": {"Paris": 21, "Oslo": 12, "Lima": 19}.get(city, 15)}


class ScriptedModel(Model):
    """Stands in for an LLM: one canned reply per step. Step 2 reacts to step 1's refusal."""

    def __init__(self) -> None:
        super().__init__(model_id="scripted")
        self.step = 0

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        self.step += 1
        if self.step == 1:
            thought, code = "I'll look at the files first.", "import os\nprint(os.listdir('.'))"
        elif self.step == 2:
            last = str(messages[-1].content if hasattr(messages[-1], "content") else messages[-1])
            assert "not allowed" in last, "the refusal should be the observation of step 1"
            thought = "os is refused in this sandbox; I'll use the weather tool instead."
            code = "temps = {c: get_weather(c)['temp'] for c in ['Paris', 'Oslo', 'Lima']}\nprint(temps)"
        else:
            thought = "temps is still defined from the previous step."
            code = "final_answer(max(temps, key=temps.get))"
        return ChatMessage(role=MessageRole.ASSISTANT, content=f"Thought: {thought}\n<code>\n{code}\n</code>")


def main() -> int:
    executor = SandboxExecutor(limits=Limits(cpu_seconds=2, wall_seconds=10))
    with code_agent([get_weather], ScriptedModel(), executor=executor, max_steps=5, verbosity_level=1) as agent:
        answer = agent.run("Which of Paris, Oslo and Lima is warmest right now?")
        runs = list(executor.results)
    print(f"\nfinal answer: {answer}")
    for number, result in enumerate(runs, 1):
        status = "ok" if result.ok else f"{result.error.kind}: {result.error.type}"
        print(f"step {number}: {status}, capability calls: {result.usage.capability_calls}")
    return 0 if answer == "Paris" else 1


if __name__ == "__main__":
    sys.exit(main())
