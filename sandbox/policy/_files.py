"""Policy files: the TOML format (`PolicyFile`), read and checked into a model."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sandbox.errors import ConfigurationError
from sandbox.policy._context import Effect
from sandbox.policy._rules import Rule


class PolicyFile(BaseModel):
    """A policy file's top-level keys (the format is in `sandbox.policy`'s docstring); a
    ``[policy]`` table is read as the top level."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    default: Effect = "allow"
    escalate_after: int = Field(default=3, ge=0)
    approval_timeout: float = Field(default=30.0, gt=0)
    cedar: str | None = None
    cedar_schema: str | None = None
    capabilities: dict[str, Rule] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_policy_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("policy"), dict):
            data = {**data["policy"], **{k: v for k, v in data.items() if k != "policy"}}
        return data


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML of a policy file; `ConfigurationError` naming the file when it is not TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None


def policy_file(data: Mapping[str, Any], source: str) -> PolicyFile:
    """``data`` (a parsed policy file) checked against the format; `ConfigurationError` naming
    ``source`` and up to five bad keys otherwise."""
    try:
        return PolicyFile.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ConfigurationError(f"{source}: {problems}") from None
