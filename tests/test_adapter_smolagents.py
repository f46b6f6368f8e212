"""The smolagents adapter against the real package: a real `CodeAgent` driven by a scripted `Model`.

No LLM and no network: `ScriptedModel` returns canned code, one reply per step, and records
every message list it was given so the tests can check what the agent showed it.
"""

from __future__ import annotations

from typing import Any

import pytest

smolagents = pytest.importorskip("smolagents")

from smolagents import CodeAgent, Tool, tool  # noqa: E402
from smolagents.models import ChatMessage, MessageRole, Model  # noqa: E402

from sandbox import Limits  # noqa: E402
from sandbox.adapters.smolagents import SandboxExecutionError, SandboxExecutor, tool_to_capability  # noqa: E402
from sandbox.runtime import CapabilityFault  # noqa: E402


class ScriptedModel(Model):
    """A smolagents `Model` that replies with canned code blocks, in order."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(model_id="scripted")
        self.replies = list(replies)
        self.seen: list[list[Any]] = []

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        self.seen.append(list(messages))
        if not self.replies:
            raise AssertionError("the agent asked for more steps than the script has")
        code = self.replies.pop(0)
        return ChatMessage(role=MessageRole.ASSISTANT, content=f"Thought: next step.\n<code>\n{code}\n</code>")


def text_of(messages: list[Any]) -> str:
    parts = []
    for message in messages:
        content = message.content if hasattr(message, "content") else message.get("content")
        if isinstance(content, list):
            parts += [c.get("text", "") for c in content if isinstance(c, dict)]
        elif content:
            parts.append(str(content))
    return "\n".join(parts)


CALLS: list[tuple[str, Any]] = []


@tool
def get_weather(city: str) -> dict:
    """Current weather for a city.

    Args:
        city: The city name, e.g. "Paris".
    """
    CALLS.append(("get_weather", city))
    return {"city": city, "temp": 21 if city == "Paris" else 12}


class Multiply(Tool):
    name = "multiply"
    description = "Multiply two numbers."
    inputs = {
        "a": {"type": "number", "description": "first factor"},
        "b": {"type": "number", "description": "second factor", "nullable": True},
    }
    output_type = "number"

    def forward(self, a: float, b: float | None = None) -> float:
        CALLS.append(("multiply", (a, b)))
        return int(a * (2 if b is None else b))


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()
    yield
    CALLS.clear()


def make_agent(replies: list[str], **executor_kwargs: Any) -> tuple[CodeAgent, ScriptedModel, SandboxExecutor]:
    model = ScriptedModel(replies)
    executor = SandboxExecutor(limits=Limits(cpu_seconds=2, wall_seconds=10), **executor_kwargs)
    agent = CodeAgent(tools=[get_weather, Multiply()], model=model, executor=executor, max_steps=6, verbosity_level=0)
    return agent, model, executor


def test_final_answer_and_tools_called_through_the_sandbox():
    agent, model, executor = make_agent([
        "w = get_weather('Paris')\nprint('temp is', w['temp'])",
        "final_answer({'city': w['city'], 'double': multiply(w['temp'])})",
    ])
    with agent:
        answer = agent.run("What is twice the temperature in Paris?")
    assert answer == {"city": "Paris", "double": 42}
    # Both tools ran on the host, reached through capability calls of the sandbox runs.
    assert CALLS == [("get_weather", "Paris"), ("multiply", (21.0, None))]
    assert [r.usage.capability_calls for r in executor.results] == [1, 2]
    assert executor.results[0].ok and executor.results[0].stdout == "temp is 21\n"
    # The observation of step 1 (the sandbox's stdout) was shown to the model in step 2.
    assert "temp is 21" in text_of(model.seen[1])
    assert executor.sandbox is None  # leaving `with agent:` cleaned up


def test_import_os_is_refused_as_an_observation_and_the_agent_keeps_going():
    agent, model, executor = make_agent([
        "import os\nprint(os.listdir('/'))",
        "import json\nfinal_answer(json.dumps({'temp': get_weather('Oslo')['temp']}))",
    ])
    answer = agent.run("List the root directory, then report the weather in Oslo.")
    assert answer == '{"temp": 12}'
    first = agent.memory.steps[1]
    assert first.error is not None and "import of 'os' is not allowed" in str(first.error)
    # The refusal reached the model as the observation of the failed step.
    assert "import of 'os' is not allowed" in text_of(model.seen[1])
    assert executor.results[0].error.kind == "guest_exception"
    assert executor.results[0].error.type == "ImportError"
    assert CALLS == [("get_weather", "Oslo")]
    agent.cleanup()


def test_state_persists_across_steps_through_a_session():
    agent, _, executor = make_agent([
        "import math\ndef area(r):\n    return round(math.pi * r * r, 2)\ncache = {'r': 2}",
        "cache['a'] = area(cache['r'])\ncache",
        "final_answer(cache['a'])",
    ])
    assert agent.run("Compute an area in steps.") == 12.57
    assert executor.results[1].value == {"r": 2, "a": 12.57}
    agent.cleanup()


def test_final_answer_ends_the_step_even_inside_try_except():
    agent, _, executor = make_agent([
        "try:\n    final_answer('first')\nexcept Exception:\n    pass\nget_weather('Paris')\nfinal_answer('second')",
    ])
    assert agent.run("Answer once.") == "first"
    # The run was ended by the host: no capability call after final_answer reached the host.
    assert CALLS == []
    assert executor.results[0].usage.capability_calls == 1
    agent.cleanup()


def test_additional_args_become_guest_variables():
    agent, _, _ = make_agent(["final_answer(sum(numbers) * factor)"])
    assert agent.run("Sum them.", additional_args={"numbers": [1, 2, 3], "factor": 10}) == 60
    agent.cleanup()


def test_limits_and_guest_errors_are_observations():
    agent, model, executor = make_agent([
        "while True:\n    pass",
        "1 / 0",
        "final_answer('gave up')",
    ])
    assert agent.run("Loop forever.") == "gave up"
    limit = executor.results[0].error
    assert limit.kind == "limit_exceeded" and limit.limit in ("cpu", "wall")
    assert "limit exceeded" in str(agent.memory.steps[1].error)
    assert "ZeroDivisionError" in str(agent.memory.steps[2].error)
    assert "ZeroDivisionError" in text_of(model.seen[2])
    agent.cleanup()


def test_a_denied_call_is_an_observation():
    from sandbox import capability

    @capability
    def delete_everything(path: str) -> str:
        """Delete a directory tree."""
        raise CapabilityFault("PolicyDenied", f"deleting {path} is not allowed")

    agent, model, executor = make_agent(
        [
            "delete_everything('/')",
            "try:\n    delete_everything('/tmp')\nexcept PolicyDenied as exc:\n    print('refused:', exc)\n"
            "final_answer('ok')",
        ],
        capabilities=[delete_everything],
    )
    assert agent.run("Clean up.") == "ok"
    assert "PolicyDenied" in str(agent.memory.steps[1].error)
    assert "refused: deleting /tmp is not allowed" in executor.results[1].stdout
    agent.cleanup()


def test_direct_use_and_bad_variables():
    executor = SandboxExecutor()
    executor.send_tools({"get_weather": get_weather})
    out = executor("get_weather('Paris')['temp'] + 1")
    assert out.output == 22 and out.is_final_answer is False
    with pytest.raises(SandboxExecutionError) as info:
        executor("open('/etc/passwd')")
    assert info.value.result.ok is False
    with pytest.raises(TypeError, match="cannot enter the sandbox"):
        executor.send_variables({"obj": object()})
    executor.cleanup()


def test_tool_signature_becomes_a_typed_stub():
    cap = tool_to_capability(Multiply())
    stub = cap.stub()
    assert stub.startswith("def multiply(a: float, b: Optional[float] = None) -> float:") or stub.startswith(
        "def multiply(a: float, b: float | None = None) -> float:"
    ), stub
    assert "first factor" in stub


def test_tool_calls_are_decided_by_the_policy():
    import inspect

    from sandbox import Sandbox

    if "policy" not in inspect.signature(Sandbox).parameters:
        pytest.skip("Sandbox(policy=...) has not landed yet")
    from sandbox.policy import Policy

    policy = Policy(rules={"get_weather": {"args": {"city": {"one_of": ["Paris", "Oslo"]}}}, "multiply": {"max_calls": 1}})
    agent, model, executor = make_agent(
        [
            "try:\n    get_weather('Atlantis')\nexcept PolicyDenied as e:\n    print('denied:', e)\n"
            "w = get_weather('Paris')\nm = multiply(w['temp'])\n"
            "try:\n    multiply(m)\nexcept PolicyDenied as e:\n    print('denied again')",
            "final_answer(m)",
        ],
        policy=policy,
    )
    assert agent.run("Weather with a policy.") == 42.0
    # Only the allowed calls reached the tools; the denials were observations the code handled.
    assert CALLS == [("get_weather", "Paris"), ("multiply", (21.0, None))]
    assert "denied:" in executor.results[0].stdout and "denied again" in executor.results[0].stdout
    assert "denied again" in text_of(model.seen[1])
    agent.cleanup()


def test_agent_run_again_without_reset_keeps_the_session():
    agent, _, executor = make_agent(["kept = 7\nfinal_answer('first')", "final_answer(kept * 6)"])
    assert agent.run("First task.") == "first"
    assert agent.run("Second task.", reset=False) == 42
    agent.cleanup()


def test_code_agent_prompt_lists_exactly_the_imports_the_sandbox_accepts():
    from smolagents.utils import BASE_BUILTIN_MODULES

    from sandbox.adapters.smolagents import code_agent
    from sandbox.errors import ConfigurationError

    model = ScriptedModel(["final_answer(1)"])
    executor = SandboxExecutor(limits=Limits(cpu_seconds=2, wall_seconds=10))
    with code_agent([get_weather], model, executor=executor, max_steps=2, verbosity_level=0) as agent:
        assert agent.run("one") == 1
        prompt = text_of(model.seen[0][:1])
        # Every module the prompt authorizes imports in the sandbox ...
        imports = "\n".join(f"import {name}" for name in executor.authorized_imports)
        assert executor(imports + "\n'ok'").output == "ok"
    assert str(executor.authorized_imports) in prompt
    # ... and smolagents' defaults that the sandbox refuses are not offered.
    refused = [name for name in BASE_BUILTIN_MODULES if name not in executor.authorized_imports]
    assert {"queue", "stat", "unicodedata"} <= set(refused)
    for name in refused:
        assert f"'{name}'" not in prompt, name
        with pytest.raises(SandboxExecutionError, match="not allowed"):
            executor(f"import {name}")
    executor.cleanup()
    with pytest.raises(ConfigurationError, match="additional_authorized_imports"):
        code_agent([get_weather], model, additional_authorized_imports=["queue"])
