"""A TOML file that describes one `Sandbox`: runtime, limits, capabilities, secrets, policy.

The MCP server (``sandbox mcp --config FILE``) reads it; any host can use `load_config` and
`AdapterConfig.build_sandbox` too::

    runtime = "restricted"               # or "wasi"
    # isolation = "process"              # restricted only: each run in a confined child
    python_path = ["."]                  # extra import roots, relative to this file
    capabilities = [                     # "module:function" import paths
        "my_tools:get_weather",
        "my_tools:send_report",
    ]
    policy = "policy.toml"               # optional, relative to this file (see sandbox.policy)
    principal = "agent:support-bot"      # who the runs are for (or a table: id, on_behalf_of, task, ...)

    [limits]                             # any field of sandbox.Limits
    cpu_seconds = 2
    wall_seconds = 5
    memory_bytes = "256M"

    [sessions]                           # MCP session tools
    ttl_seconds = 600                    # idle time after which a session expires
    max_sessions = 16                    # open sessions at once

    [records]                            # a signed, hash-chained run record per run
    path = "runs.jsonl"
    signing_key = "records.pem"          # Ed25519 private key; omit for unsigned records

    [secrets.report_token]               # any field of sandbox.Secret; never a value in the file
    env = "REPORT_TOKEN"                 # ... if you can avoid it: use env= or file=
    capabilities = ["send_report"]
    hosts = ["reports.example.com"]

Every path in the file is relative to the file's directory. Errors raise `ConfigurationError`
(a `ValueError`) naming the file and the key to fix. Secret values are never read here: the
sandbox reads them at the start of each run that needs them.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.capabilities import Capability
from sandbox.errors import ConfigurationError
from sandbox.limits import Limits


class SessionSettings(BaseModel):
    """How long MCP sessions live and how many may be open at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttl_seconds: float = Field(default=600.0, gt=0)
    """Idle seconds after which a session expires and its state is discarded. Default 10 minutes."""
    max_sessions: int = Field(default=16, gt=0)
    """Open sessions at once; opening one more fails until one is closed or expires. Default 16."""


class RecordSettings(BaseModel):
    """Where run records go: a signed, hash-chained JSONL file (`sandbox.audit.JsonlSink`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    """The JSONL file, relative to the config file; created if missing, appended to otherwise."""
    signing_key: str | None = None
    """An Ed25519 private key file (PEM or raw), relative to the config file; without one the
    records are chained but unsigned."""
    fsync: bool = False


class AdapterConfig(BaseModel):
    """The parsed configuration file (see the module docstring for the format)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    runtime: Literal["restricted", "wasi"] = "restricted"
    isolation: Literal["process"] | None = None
    limits: Limits = Field(default_factory=Limits)
    capabilities: tuple[str, ...] = ()
    python_path: tuple[str, ...] = ()
    policy: str | None = None
    principal: str | dict[str, Any] | None = None
    records: RecordSettings | None = None
    secrets: dict[str, Any] = Field(default_factory=dict)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)
    """Directory that relative paths are resolved against (the config file's directory)."""

    def resolve(self, path: str | Path) -> Path:
        """``path`` relative to the config file's directory (absolute paths unchanged)."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def load_capabilities(self) -> list[Capability]:
        """Import every ``module:function`` in ``capabilities`` (after adding ``python_path``)."""
        for entry in self.python_path:
            root = str(self.resolve(entry))
            if root not in sys.path:
                sys.path.insert(0, root)
        loaded: list[Capability] = []
        for spec in self.capabilities:
            loaded.extend(import_capabilities(spec))
        return loaded

    def load_secrets(self) -> dict[str, Any]:
        """The ``[secrets.*]`` tables as `sandbox.Secret` objects (values are not read here)."""
        if not self.secrets:
            return {}
        from sandbox.secrets import Secret

        result: dict[str, Any] = {}
        for name, table in self.secrets.items():
            if not isinstance(table, dict):
                raise ConfigurationError(f"[secrets.{name}] must be a table, e.g. env = \"TOKEN\" and capabilities = [...]")
            data = dict(table)
            if "file" in data:
                data["file"] = self.resolve(data["file"])
            try:
                result[name] = Secret.model_validate(data)
            except ValidationError as exc:
                raise ConfigurationError(f"[secrets.{name}]: {_summarise(exc)}") from None
        return result

    def load_policy(self, override: str | Path | None = None) -> Any:
        """The `sandbox.policy.Policy` from ``override`` (a path, as given on the command line)
        or from the ``policy`` key (relative to this file); None when neither is set."""
        if override is not None:
            path = Path(override)
        elif self.policy is not None:
            path = self.resolve(self.policy)
        else:
            return None
        from sandbox.policy import Policy

        return Policy.from_toml(path)

    def sandbox_kwargs(self, *, runtime: str | None = None, isolation: str | None = None,
                       policy: str | Path | None = None) -> dict[str, Any]:
        """Keyword arguments for `Sandbox` (command-line overrides win over the file)."""
        kwargs: dict[str, Any] = {
            "runtime": runtime or self.runtime,
            "limits": self.limits,
            "capabilities": self.load_capabilities(),
        }
        chosen_isolation = isolation or self.isolation
        if chosen_isolation is not None:
            kwargs["isolation"] = chosen_isolation
        secrets = self.load_secrets()
        if secrets:
            kwargs["secrets"] = secrets
        loaded_policy = self.load_policy(policy)
        if loaded_policy is not None:
            kwargs["policy"] = loaded_policy
        if self.principal is not None:
            kwargs["principal"] = self.principal
        sink = self.load_records()
        if sink is not None:
            kwargs["records"] = sink
        return kwargs

    def load_records(self) -> Any:
        """The `sandbox.audit.JsonlSink` of ``[records]``, or None."""
        if self.records is None:
            return None
        from sandbox.audit import JsonlSink

        key = None
        if self.records.signing_key is not None:
            key_path = self.resolve(self.records.signing_key)
            try:
                key = key_path.read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"[records] signing_key: cannot read {key_path}: {exc}") from None
        try:
            return JsonlSink(self.resolve(self.records.path), signing_key=key, fsync=self.records.fsync)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"[records]: {exc}") from None

    def build_sandbox(self, *, runtime: str | None = None, isolation: str | None = None,
                      policy: str | Path | None = None) -> Any:
        """A `Sandbox` configured by this file (and the overrides)."""
        from sandbox.sandbox import Sandbox

        kwargs = self.sandbox_kwargs(runtime=runtime, isolation=isolation, policy=policy)
        return Sandbox(kwargs.pop("runtime"), **kwargs)


def load_config(path: str | Path | None) -> AdapterConfig:
    """Parse a configuration file; ``None`` gives the defaults (no capabilities, default limits)."""
    if path is None:
        return AdapterConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    if "base_dir" in data:
        raise ConfigurationError(f"{path}: unknown key 'base_dir'")
    if isinstance(data.get("capabilities"), str):
        data["capabilities"] = [data["capabilities"]]
    try:
        return AdapterConfig.model_validate({**data, "base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: {_summarise(exc)}") from None


def import_capabilities(spec: str) -> list[Capability]:
    """Import ``"package.module:name"`` (a `Capability`, a typed function, or a list of them)
    or ``"package.module"`` (every public `Capability` of the module, and every public list or
    tuple of them; only the names in ``__all__`` when it has one).

    Raises `ConfigurationError` saying which part of the path failed.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not module_name or (sep and not attr_path):
        raise ConfigurationError(
            f"capability {spec!r} must be an import path 'package.module' or 'package.module:function'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"capability {spec!r}: cannot import module {module_name!r} ({exc}); "
            "is it installed, or listed in python_path?"
        ) from None
    if not sep:
        return _module_capabilities(obj, spec)
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"capability {spec!r}: {module_name} has no attribute {attr_path!r}") from None
    items: Iterable[Any] = obj if isinstance(obj, (list, tuple)) else [obj]
    result = []
    for item in items:
        if isinstance(item, Capability):
            result.append(item)
        elif callable(item):
            result.append(Capability(item))
        else:
            raise ConfigurationError(f"capability {spec!r} is a {type(item).__name__}, not a function or Capability")
    return result


def _module_capabilities(module: Any, spec: str) -> list[Capability]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
    found: dict[int, Capability] = {}
    for name in names:
        value = getattr(module, name, None)
        items = value if isinstance(value, (list, tuple)) and value and all(isinstance(v, Capability) for v in value) else [value]
        for item in items:
            if isinstance(item, Capability):
                found.setdefault(id(item), item)
    if not found:
        raise ConfigurationError(
            f"capability module {spec!r} defines no @capability functions; name one with '{spec}:function'"
        )
    return list(found.values())


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
