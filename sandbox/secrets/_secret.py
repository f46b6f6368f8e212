"""`Secret`: where a host-held value comes from (literal, environment, file, provider) and its
scope; `validate_secrets` checks a ``secrets=`` mapping at construction.
"""

from __future__ import annotations

import keyword
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, SecretStr, field_validator, model_validator

from sandbox.capabilities import CAPABILITY_NAME
from sandbox.errors import ConfigurationError, SecretInTransit, SecretUnavailable
from sandbox.secrets._hosts import normalize_host_pattern


_SECRET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class _Hidden:
    """Stands for a `Secret` value of the wrong type in validation errors: shows only its type."""

    __slots__ = ("kind",)

    def __init__(self, value: Any) -> None:
        self.kind = type(value).__name__

    def __repr__(self) -> str:
        return f"<hidden {self.kind}>"


class Secret(BaseModel):
    """A host-held secret and its scope.

    Give exactly one source:

    - ``value``: the value itself (kept as a `pydantic.SecretStr`);
    - ``env``: the name of an environment variable;
    - ``file``: a path whose text is the value (one trailing newline is dropped);
    - ``provider``: a callable returning the value (``str``, ``bytes`` or ``SecretStr``).

    The source is read at the start of every run that uses the sandbox (just in time: a
    rotated value is picked up by the next run); a source that cannot be read makes
    `Sandbox.run` raise `SecretUnavailable`.

    Scope:

    - ``capabilities`` (required): capability names allowed to resolve the handle; a namespace
      covers its members (``"http"`` allows ``http.get`` and ``http.post``);
    - ``hosts``: destination host patterns (see `normalize_host_pattern`). The built-in ``http``
      capability injects the value only into requests to these hosts, and refuses the secret
      when ``hosts`` is empty; other capabilities check it with `SecretValue.reveal_for`;
    - ``ttl``: seconds the handle stays usable after the run starts;
    - ``max_uses``: how many capability calls may reveal the value in one run.

    ``description`` is shown to the guest in the handle's repr (with the name and scope).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True, defer_build=True)

    value: SecretStr | None = None
    env: str | None = None
    file: Path | None = None
    provider: Callable[[], Any] | None = None
    capabilities: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    ttl: PositiveFloat | None = None
    max_uses: PositiveInt | None = None
    description: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        given = [n for n in ("value", "env", "file", "provider") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigurationError(
                "give exactly one source for a Secret: value=, env=, file= or provider= "
                f"(got {', '.join(given) or 'none'})"
            )
        if not self.capabilities:
            raise ConfigurationError(
                "a Secret needs capabilities=[...]: the capabilities allowed to use it (e.g. ['http'])"
            )
        if self.value is not None and not self.value.get_secret_value():
            raise ConfigurationError("Secret(value=...) must not be empty")
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _hide_value(cls, data: Any, handler: Any) -> Any:
        """Wrap a given value before anything validates it, so that no validation error
        (its text, ``errors()`` or ``json()``) can carry it. Declared after the checks above,
        so it runs first and they see the wrapped value."""
        if isinstance(data, Mapping) and data.get("value") is not None and not isinstance(data["value"], SecretStr):
            raw = data["value"]
            data = {**data, "value": SecretStr(raw) if isinstance(raw, str) else _Hidden(raw)}
        return handler(data)

    @field_validator("capabilities", mode="before")
    @classmethod
    def _capability_names(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else list(value)
        for item in items:
            if not isinstance(item, str) or not CAPABILITY_NAME.match(item):
                raise ConfigurationError(f"capability name {item!r} in a Secret scope is not valid (e.g. 'http' or 'sql.query')")
        return tuple(items)

    @field_validator("hosts", mode="before")
    @classmethod
    def _host_patterns(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else list(value)
        return tuple(normalize_host_pattern(item) for item in items)

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "=" in value or "\0" in value):
            raise ConfigurationError(f"env must name an environment variable, got {value!r}")
        return value

    def __getstate__(self) -> dict[str, Any]:
        if self.value is not None:
            raise SecretInTransit(
                "a Secret(value=...) cannot be pickled: its value would travel in plaintext; "
                "give it by reference (env=, file= or provider=), read where the run happens"
            )
        return super().__getstate__()

    def source(self) -> str:
        """Where the value comes from, for messages (never the value)."""
        if self.env is not None:
            return f"environment variable {self.env}"
        if self.file is not None:
            return f"file {self.file}"
        if self.provider is not None:
            return f"provider {getattr(self.provider, '__qualname__', type(self.provider).__name__)}"
        return "a literal value"

    def scope_text(self) -> str:
        """The scope in one line: ``capabilities=http hosts=api.github.com ttl=60s max_uses=5``."""
        parts = [f"capabilities={','.join(self.capabilities)}"]
        parts.append(f"hosts={','.join(self.hosts)}" if self.hosts else "hosts=(none)")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl:g}s")
        if self.max_uses is not None:
            parts.append(f"max_uses={self.max_uses}")
        return " ".join(parts)

    def read(self, name: str) -> str:
        """Read the value now. Raises `SecretUnavailable` naming the secret and the source."""
        try:
            if self.value is not None:
                raw: Any = self.value.get_secret_value()
            elif self.env is not None:
                if self.env not in os.environ:
                    raise SecretUnavailable(f"secret {name!r}: environment variable {self.env} is not set")
                raw = os.environ[self.env]
            elif self.file is not None:
                raw = Path(self.file).read_text(encoding="utf-8")
                raw = raw[:-1] if raw.endswith("\n") else raw
                raw = raw[:-1] if raw.endswith("\r") else raw
            else:
                assert self.provider is not None
                raw = self.provider()
        except SecretUnavailable:
            raise
        except Exception as exc:
            # The exception text of a provider could include the value; report only its type.
            raise SecretUnavailable(f"secret {name!r}: reading {self.source()} failed ({type(exc).__name__})") from None
        if isinstance(raw, SecretStr):
            raw = raw.get_secret_value()
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SecretUnavailable(f"secret {name!r}: {self.source()} is not UTF-8 text") from None
        if not isinstance(raw, str):
            raise SecretUnavailable(f"secret {name!r}: {self.source()} gave a {type(raw).__name__}, not str")
        if not raw:
            raise SecretUnavailable(f"secret {name!r}: {self.source()} is empty")
        return raw


def validate_secrets(secrets: Mapping[str, Secret] | None) -> dict[str, Secret]:
    """Check a ``secrets=`` mapping at construction; raise `TypeError`/`ConfigurationError` with the fix."""
    if secrets is None:
        return {}
    if not isinstance(secrets, Mapping):
        raise TypeError(f"secrets must be a mapping of name -> Secret, not {type(secrets).__name__}")
    result: dict[str, Secret] = {}
    for name, secret in secrets.items():
        if not isinstance(name, str) or not _SECRET_NAME.match(name) or keyword.iskeyword(name):
            raise ConfigurationError(
                f"secret name {name!r} must be an identifier (not a keyword) not starting with '_'; it becomes secrets.<name>"
            )
        if not isinstance(secret, Secret):
            raise TypeError(f"secret {name!r} must be a sandbox.Secret, not {type(secret).__name__}")
        result[name] = secret
    return result
