"""Host-side configuration: bad input fails fast, with a message that says what to change."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sandbox import ConfigurationError, IsolationUnavailable, Limits, Sandbox, SandboxClosed, capability
from sandbox.limits import parse_size


def test_unknown_runtime():
    with pytest.raises(ValueError, match="unknown runtime 'docker'.*restricted, wasi"):
        Sandbox("docker")  # type: ignore[arg-type]


def test_process_isolation_is_for_restricted_only():
    with pytest.raises(ValueError, match="isolation='process' applies to the restricted runtime"):
        Sandbox("wasi", isolation="process")


@pytest.mark.parametrize(
    "field, value",
    [("cpu_seconds", -1), ("cpu_seconds", 0), ("wall_seconds", float("inf")), ("wall_seconds", float("nan")),
     ("memory_bytes", -5), ("memory_bytes", "lots"), ("max_output_bytes", 0), ("max_recursion_depth", 0)],
)
def test_bad_limits(field, value):
    with pytest.raises(ValidationError, match=field):
        Limits(**{field: value})


def test_limits_reject_unknown_fields():
    with pytest.raises(ValidationError, match="cpu"):
        Limits(cpu=1)  # type: ignore[call-arg]


def test_sizes_parse():
    assert parse_size("256M") == 256 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size(4096) == 4096
    assert Limits(memory_bytes="64M").memory_bytes == 64 << 20
    with pytest.raises(ValueError, match="suffix"):
        parse_size("12 parsecs")


def test_capability_without_type_hints():
    def untyped(city):
        return city

    with pytest.raises(TypeError, match="parameter 'city' has no type hint"):
        capability(untyped)


def test_capability_without_return_hint():
    def no_return(city: str):
        return city

    with pytest.raises(TypeError, match="return type hint"):
        capability(no_return)


def test_capability_varargs_refused():
    def varargs(*items: int) -> int:
        return 0

    with pytest.raises(TypeError, match=r"\*items is not supported"):
        capability(varargs)


def test_duplicate_capability_names():
    @capability
    def dup(x: int) -> int:
        return x

    @capability(name="dup")
    def other(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="two capabilities are named 'dup'"):
        Sandbox(capabilities=[dup, other])


def test_reserved_and_invalid_capability_names():
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="reserved"):
        capability(name="secrets")(f)
    with pytest.raises(ValueError, match="not valid"):
        capability(name="bad-name")(f)
    with pytest.raises(ValueError, match="not valid"):
        capability(name="sql.class")(f)


def test_plain_typed_functions_are_accepted():
    def double(x: int) -> int:
        return 2 * x

    sb = Sandbox(capabilities=[double])
    assert list(sb.capabilities) == ["double"]


def test_bad_workers_and_layers():
    with pytest.raises(ConfigurationError, match="workers"):
        Sandbox(workers=0)
    with pytest.raises(ConfigurationError, match="workers applies only"):
        Sandbox(workers=2)
    with pytest.raises(ConfigurationError, match="unknown isolation layer"):
        Sandbox(require=("magic",))


def test_required_layer_missing_is_refused_not_degraded():
    with pytest.raises(IsolationUnavailable, match="seccomp"):
        Sandbox("restricted", require=("seccomp",))


def test_inputs_must_be_plain_data():
    sb = Sandbox()
    with pytest.raises(TypeError, match="plain data"):
        sb.run("x", inputs={"x": object()})
    with pytest.raises(ConfigurationError, match="identifier"):
        sb.run("x", inputs={"_private": 1})
    with pytest.raises(ConfigurationError, match="keyword"):
        sb.run("x", inputs={"class": 1})


def test_closed_sandbox_refuses_runs():
    sb = Sandbox()
    sb.close()
    sb.close()
    with pytest.raises(SandboxClosed):
        sb.run("1")


def test_configuration_error_is_a_value_error():
    assert issubclass(ConfigurationError, ValueError)


def test_configuration_errors_are_one_type_and_say_what_to_change():
    from sandbox.egress import Egress
    from sandbox.secrets import normalize_host_pattern

    with pytest.raises(ConfigurationError, match=r"use bytes or a suffix K, M, G, T \(e.g. '256M'\)"):
        parse_size("12 parsecs")
    with pytest.raises(ConfigurationError, match="must be a host .*not a URL"):
        normalize_host_pattern("https://api.github.com/")
    with pytest.raises(ConfigurationError, match=r"max_rows=2"):
        Sandbox().transform("rows", [{"a": 1}, {"a": 2}, {"a": 3}], max_rows=2)
    # a pydantic config model reports the field; the cause is the same ConfigurationError
    with pytest.raises(ValidationError, match="needs at least one host pattern") as info:
        Egress(allow=[])
    assert isinstance(info.value.errors()[0]["ctx"]["error"], ConfigurationError)


def test_describe_renders_stub_and_tool_schemas():
    @capability
    def get_weather(city: str, units: str = "metric") -> dict:
        """Current weather for a city."""
        return {}

    @capability(name="sql.query")
    def query(text: str, params: list[str] | None = None) -> list[dict]:
        """Run a read-only SQL query."""
        return []

    api = Sandbox(capabilities=[get_weather, query]).describe()
    assert "def get_weather(city: str, units: str = 'metric') -> dict:" in api.stub
    assert '"""Current weather for a city."""' in api.stub
    assert "class sql:" in api.stub and "def query(text: str" in api.stub
    compile(api.stub, "<stub>", "exec")
    tools = {t["name"]: t for t in api.tools}
    assert tools["get_weather"]["parameters"]["required"] == ["city"]
    assert tools["sql.query"]["parameters"]["properties"]["text"]["type"] == "string"
