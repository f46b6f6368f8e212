"""Secrets: host-held values that guest code reaches only through scoped, per-run handles.

A `Secret` says where its value comes from (a literal, an environment variable, a file or a
callable provider, read *at run start*) and its scope: the capabilities that may use it, the
destination hosts it may be sent to, a TTL and a maximum number of uses.

Per run, a `SecretBroker` reads the values, issues one unguessable token per secret (the guest
sees ``secrets.<name>``, an opaque handle that carries the token), resolves tokens that come
back in capability arguments, and revokes them all when the run ends. What a capability
receives for a handle is a `SecretValue`: a host-side object that reveals the value only when
the capability asks for it (`SecretValue.reveal`, `SecretValue.reveal_for`), checking the TTL
and use count at that moment. Every denial is a `CapabilityFault` ``PolicyDenied`` whose message
names the secret and the rule.

A `Redactor` replaces each value, and its base64 (at every byte alignment), base64url, hex,
percent-encoded, JSON- and repr-escaped forms, by ``[REDACTED:<name>]``. The sandbox applies it
to whole outputs (so a value printed in two pieces is still caught), return values, error
messages, and to capability results and faults before they reach the guest.

Annotate a capability parameter with `SecretValue` to accept a handle::

    @capability
    def deploy(token: SecretValue, service: str) -> str:
        call_deploy_api(service, token=token.reveal())
        return "deployed"

    Sandbox(capabilities=[deploy], secrets={"deploy_key": Secret(env="DEPLOY_KEY", capabilities=["deploy"])})

Handles never coerce to ``str``: a handle passed where a string is expected fails validation,
and a guest that formats a handle gets its description (name and scope), never the value.
"""

from __future__ import annotations

import base64
import bisect
import functools
import ipaddress
import itertools
import json
import keyword
import logging
import operator
import os
import re
import secrets as _random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, SecretStr, field_validator, model_validator
from pydantic_core import core_schema

from runtimes.wire import SECRET_MARKER
from sandbox.capabilities import CAPABILITY_NAME
from sandbox.errors import ConfigurationError, SecretInTransit, SecretUnavailable
from sandbox.runtime import CapabilityFault, SecretHandleSpec
from sandbox.tree import CONTAINERS, DESCEND, identity, map_tree

__all__ = [
    "Redactor",
    "Secret",
    "SecretBroker",
    "SecretUnavailable",
    "SecretValue",
    "host_matches",
    "normalize_host_pattern",
]

log = logging.getLogger("sandbox.secrets")

_SECRET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


# --------------------------------------------------------------------------- host patterns


def normalize_host_pattern(pattern: str) -> str:
    """Validate and normalise a destination pattern; raise `ConfigurationError` saying what is accepted.

    Accepted: ``"api.github.com"`` (that host only), ``"*.github.com"`` (any subdomain, not the
    apex), ``"*"`` (any host), an IP literal (``"127.0.0.1"``, ``"[::1]"``), each optionally
    followed by ``":<port>"`` to match that port only. Hosts are compared lowercased, IDNA-encoded,
    without a trailing dot.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigurationError(f"host pattern must be a non-empty string, got {pattern!r}")
    text = pattern.strip().lower()
    if "/" in text or "@" in text or "?" in text or "#" in text:
        raise ConfigurationError(f"host pattern {pattern!r} must be a host (optionally ':port'), not a URL")
    host, port = _split_port(text, pattern)
    if host == "*":
        return text
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigurationError(f"host pattern {pattern!r}: {host} is not an IPv6 address") from None
        return f"{host}:{port}" if port is not None else host
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    try:
        ipaddress.IPv4Address(name)
        is_ip = True
    except ValueError:
        is_ip = False
    if is_ip and wildcard:
        raise ConfigurationError(f"host pattern {pattern!r}: a wildcard cannot apply to an IP address")
    if not is_ip:
        name = _idna(name.rstrip("."), pattern)
        if "*" in name or not all(_LABEL.match(label) for label in name.split(".")):
            raise ConfigurationError(
                f"host pattern {pattern!r} is not valid: use 'host.example', '*.example' or '*', optionally with ':port'"
            )
    host = ("*." if wildcard else "") + name
    return f"{host}:{port}" if port is not None else host


def _split_port(text: str, original: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigurationError(f"host pattern {original!r}: unbalanced '['")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ConfigurationError(f"host pattern {original!r}: unexpected {rest!r} after the address")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ConfigurationError(f"host pattern {original!r}: write IPv6 addresses in brackets, e.g. '[::1]'")
    else:
        return text, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"host pattern {original!r}: port must be 1-65535")
    return host, int(port_text)


def _idna(name: str, original: str) -> str:
    try:
        return name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ConfigurationError(f"host pattern {original!r} is not a valid hostname") from None


def canonical_host(host: str) -> str:
    """A request host as patterns see it: lowercased, no trailing dot, IPv6 in brackets."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        return host
    if ":" in host:
        return f"[{host}]"
    return host


def host_matches(host: str, port: int | None, patterns: Iterable[str]) -> bool:
    """True when ``host`` (with ``port``) matches one of the normalised ``patterns``."""
    host = canonical_host(host)
    for pattern in patterns:
        pattern_host, pattern_port = _split_port(pattern, pattern)
        if pattern_port is not None and pattern_port != port:
            continue
        if pattern_host == "*" or pattern_host == host:
            return True
        if pattern_host.startswith("*.") and host.endswith(pattern_host[1:]) and len(host) > len(pattern_host) - 1:
            return True
    return False


def scope_allows_capability(patterns: Iterable[str], capability: str) -> bool:
    """True when ``capability`` is one of ``patterns`` or lives in one of their namespaces
    (``"http"`` covers ``"http.get"``)."""
    return any(capability == p or capability.startswith(p + ".") for p in patterns)


# --------------------------------------------------------------------------- configuration


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

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True)

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


# --------------------------------------------------------------------------- per-run broker

_RETIRED_MAX = 4096
_retired: OrderedDict[str, str] = OrderedDict()
"""Tokens of ended runs -> secret name, so a smuggled handle's denial can name its secret."""
_retired_lock = threading.Lock()


def new_token() -> str:
    """An unguessable handle token (256 bits)."""
    return _random.token_urlsafe(32)


def _deny(message: str) -> CapabilityFault:
    return CapabilityFault("PolicyDenied", message)


class _Grant:
    """One secret's state in one run."""

    __slots__ = ("name", "secret", "value", "issued", "uses", "revoked", "lock")

    def __init__(self, name: str, secret: Secret, value: str, lock: threading.Lock) -> None:
        self.name = name
        self.secret = secret
        self.value = value
        self.issued = time.monotonic()
        self.uses = 0
        self.revoked = False
        self.lock = lock

    def check(self) -> None:
        """Raise ``PolicyDenied`` if the handle is revoked, expired or used up (caller holds the lock)."""
        if self.revoked:
            raise _deny(f"secret {self.name!r}: handle revoked (handles end with the run that issued them)")
        ttl = self.secret.ttl
        if ttl is not None and time.monotonic() - self.issued > ttl:
            raise _deny(f"secret {self.name!r}: handle expired (rule: ttl={ttl:g}s from run start)")
        limit = self.secret.max_uses
        if limit is not None and self.uses >= limit:
            raise _deny(f"secret {self.name!r}: handle used up (rule: max_uses={limit})")


class SecretValue:
    """What a capability receives for a secret handle: the value stays behind `reveal`.

    Annotate a capability parameter with ``SecretValue`` (or ``SecretValue | None``, or use it
    inside a container type) to accept handles there; pydantic accepts only instances made by
    the broker, so a guest cannot forge one from data, and a ``str`` parameter refuses a handle.

    ``repr``/``str`` show only the name; it cannot be pickled. Each `SecretValue` counts as one
    use against ``max_uses`` the first time it is revealed; after the run ends it is dead.
    """

    __slots__ = ("_grant", "_revealed", "capability")

    def __init__(self, grant: _Grant, capability: str) -> None:
        self._grant = grant
        self._revealed = False
        self.capability = capability

    @property
    def name(self) -> str:
        return self._grant.name

    @property
    def hosts(self) -> tuple[str, ...]:
        """The destination host patterns of the secret's scope (empty: none were given)."""
        return self._grant.secret.hosts

    def allows_host(self, host: str, port: int | None = None) -> bool:
        """True when the secret's scope lets it be sent to ``host`` (and ``port``)."""
        return host_matches(host, port, self._grant.secret.hosts)

    def reveal(self) -> str:
        """The value, for host code. Raises ``PolicyDenied`` when revoked, expired or used up."""
        grant = self._grant
        with grant.lock:
            if not self._revealed:
                grant.check()
                grant.uses += 1
                self._revealed = True
            elif grant.revoked:
                grant.check()
            return grant.value

    def reveal_for(self, host: str, port: int | None = None) -> str:
        """The value, only if the scope's ``hosts`` cover ``host``; otherwise ``PolicyDenied``."""
        if not self.allows_host(host, port):
            where = canonical_host(host) + (f":{port}" if port is not None else "")
            allowed = ", ".join(self.hosts) or "none"
            raise _deny(f"secret {self.name!r} may not be sent to {where} (rule: hosts={allowed})")
        return self.reveal()

    def __repr__(self) -> str:
        return f"SecretValue({self.name!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a SecretValue cannot be pickled")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a SecretValue cannot be pickled")

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: Any) -> SecretValue:
        return self

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.is_instance_schema(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(lambda v: f"<secret {v.name}>")
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "title": "SecretHandle",
            "description": "a secret handle (pass secrets.<name>); its value stays on the host",
        }


class SecretBroker:
    """The secrets of one run: values read at run start, one token per secret, redaction.

    Create one per run (it reads every source now), pass `handles` to the driver, resolve
    arguments of each capability call with `resolve_arguments`, and call `revoke` when the run
    ends. Thread-safe.
    """

    def __init__(self, secrets: Mapping[str, Secret], *, run_id: str = "") -> None:
        self.run_id = run_id
        self._lock = threading.Lock()
        values = {name: secret.read(name) for name, secret in secrets.items()}
        self._grants: dict[str, _Grant] = {}
        specs = []
        for name, secret in secrets.items():
            token = new_token()
            self._grants[token] = _Grant(name, secret, values[name], self._lock)
            specs.append(SecretHandleSpec(name=name, token=token, description=self._describe(name, secret)))
        self.redactor = Redactor(values)
        self.handles: tuple[SecretHandleSpec, ...] = tuple(
            SecretHandleSpec(s.name, s.token, self.redactor.text(s.description)) for s in specs
        )

    @staticmethod
    def _describe(name: str, secret: Secret) -> str:
        label = f" ({secret.description})" if secret.description else ""
        return f"<secret {name}{label}: {secret.scope_text()}>"

    def resolve(self, token: Any, capability: str) -> SecretValue:
        """The `SecretValue` for ``token`` in a call of ``capability``, or ``PolicyDenied``."""
        grant = self._grants.get(token) if isinstance(token, str) else None
        if grant is None:
            with _retired_lock:
                old = _retired.get(token) if isinstance(token, str) else None
            if old is not None:
                raise _deny(
                    f"secret {old!r}: handle revoked (rule: handles are bound to the run that issued them "
                    "and die when it ends; use secrets.<name> of this run)"
                )
            raise _deny("unknown secret handle: it was not issued to this run (rule: handles are bound to their run)")
        scope = grant.secret.capabilities
        if not scope_allows_capability(scope, capability):
            raise _deny(
                f"secret {grant.name!r} may not be used by capability {capability!r} "
                f"(rule: capabilities={','.join(scope)})"
            )
        with self._lock:
            grant.check()
        return SecretValue(grant, capability)

    def resolve_arguments(self, capability: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Replace every wire handle ``{SECRET_MARKER: token}`` in the arguments by its `SecretValue`,
        at any depth; a malformed handle or one this call may not use raises ``PolicyDenied``."""

        def handle(node: dict) -> Any:
            if SECRET_MARKER not in node:
                return DESCEND
            if len(node) != 1:
                raise _deny("malformed secret handle (rule: a handle is passed as secrets.<name>)")
            return self.resolve(node[SECRET_MARKER], capability)

        return map_tree(args, identity, handle), map_tree(kwargs, identity, handle)

    def revoke(self) -> None:
        """End every handle of this run; idempotent. Values are dropped from the grants."""
        with self._lock:
            grants = list(self._grants.items())
            for _, grant in grants:
                grant.revoked = True
                grant.value = ""
        with _retired_lock:
            for token, grant in grants:
                _retired[token] = grant.name
            while len(_retired) > _RETIRED_MAX:
                _retired.popitem(last=False)


# --------------------------------------------------------------------------- redaction

_B64_STD = "A-Za-z0-9+/"
_B64_URL = "A-Za-z0-9_-"
_MIN_SHIFTED_CORE = 8
"""Shortest base64 core redacted at non-zero byte alignments (shorter ones match too much)."""


class _Form(NamedTuple):
    """One encoded form of a value: a regex, and literals one of which every match contains."""

    weight: int
    pattern: str
    needles: tuple[str, ...]
    lowered: bool = False
    """Look for the needles in the lowercased text (case-insensitive forms)."""
    bare: tuple[str, ...] | None = None
    """Literals one of which every match in a text without ``%`` or spaces contains (None: the
    needles); decides whether number texts can hold a match at all."""


def _hex_class(text: str) -> str:
    """Regex for hex text, case-insensitive in its letters only."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)


def _percent_or_literal(value: str) -> _Form:
    """``value`` with any subset of its characters percent-encoded (any hex case), spaces also
    as ``+``. Without ``%`` (or ``+``) in the text, only the literal value can match."""
    parts = []
    for char in value:
        encoded = "".join(f"%{_hex_class(f'{b:02X}')}" for b in char.encode("utf-8"))
        options = [encoded, re.escape(char)]  # encoded first: "%25" must win over the literal "%"
        if char == " ":
            options.append(r"\+")
        parts.append("(?:" + "|".join(options) + ")")
    needles = (value, "%", "+") if " " in value else (value, "%")
    return _Form(len(value), "".join(parts), needles, bare=(value.replace(" ", "+"),))


def _base64_forms(data: bytes) -> list[_Form]:
    """``data`` base64-encoded (standard and URL alphabets) at each byte alignment inside a
    longer stream.

    At alignment ``r`` (bytes before it mod 3) only the characters whose 6 bits all come from
    ``data`` are fixed (the *core*); the characters straddling the edges are matched as any one
    base64 character (plus trailing padding), so no bits of the value are left unredacted.
    """
    forms = []
    n = len(data)
    for r in range(3):
        encoded = base64.b64encode(b"\0" * r + data + b"\0\0").decode("ascii")
        start_bit, end_bit = 8 * r, 8 * (r + n)
        first = -(-start_bit // 6)  # first char fully inside the data
        last = end_bit // 6  # one past the last such char
        core = encoded[first:last]
        if not core or (r and len(core) < _MIN_SHIFTED_CORE):
            continue
        lead = start_bit % 6 != 0
        tail = last * 6 < end_bit
        for alphabet, text in ((_B64_STD, core), (_B64_URL, core.translate(str.maketrans("+/", "-_")))):
            pattern = (f"[{alphabet}]?" if lead else "") + re.escape(text) + (f"[{alphabet}]?" if tail else "") + "=*"
            forms.append(_Form(n * 4 // 3, pattern, (text,)))
    return forms


@functools.lru_cache(maxsize=64)
def _forms(value: str) -> tuple[_Form, ...]:
    """Every encoded form of ``value`` (cached: a sandbox re-reads the same values every run)."""
    data = value.encode("utf-8")
    forms = [_percent_or_literal(value)]
    for escaped in sorted({json.dumps(value)[1:-1], repr(value)[1:-1], repr(data)[2:-1]}):
        if escaped != value:
            forms.append(_Form(len(escaped), re.escape(escaped), (escaped,)))
    forms.append(_Form(2 * len(data), _hex_class(data.hex()), (data.hex(),), lowered=True))
    forms += _base64_forms(data)
    return tuple(forms)


_NUMBER_PIECE = re.compile(r"[-+]?[0-9]*\.?[0-9]*(?:e[-+]?[0-9]*)?", re.IGNORECASE)
"""Matches every substring of the finite text of an int, float or Decimal (and more)."""
_UUID_PIECE = re.compile(r"[0-9a-f-]*")
_STR = frozenset({str})
_NUMBERS = frozenset({int, float})
_FLOAT_TEXT_MAX = len("-2.2250738585072014e-308")
"""No ``str()`` of a float is longer."""
_SKIPPED = frozenset({bool, type(None)})


def _in_number(needle: str) -> bool:
    """Whether ``needle`` can be part of the text of an int, float or Decimal."""
    folded = needle.lower()
    return bool(_NUMBER_PIECE.fullmatch(needle)) or folded in "-sinfinity" or folded in "-snan"


def _separators() -> Iterator[str]:
    """Candidate separators: characters no form pattern matches unless the value contains them."""
    yield from "\x00\x01\x02\x03"
    yield from (chr(c) for c in range(0xFDD0, 0x110000))


@functools.lru_cache(maxsize=256)
def _compile(alternatives: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<{group}>{pattern})" for group, pattern in alternatives))


class Redactor:
    """Replaces secret values and their encodings by ``[REDACTED:<name>]``.

    Built from ``{name: value}``. `text` redacts a string (apply it to a whole output, not to
    pieces, so values split across writes are caught); `value` redacts every string, bytes,
    dict key and number (as text) of JSON-like data. A redactor with no secrets returns its
    input unchanged.

    Covered forms of each value: the value itself with any of its characters percent-encoded
    (``+`` for spaces), JSON/``repr``/bytes-``repr`` escapes, hex (any case), and base64 and
    base64url at every byte alignment (so the value is caught inside a larger encoded blob,
    e.g. ``base64("user:" + value)``).

    Cost is linear in the size of the input: `text` runs a few substring searches per form and
    the regex only over texts that contain a form's literal core; `value` walks the data once
    without recursion (no depth limit), searches all its texts in one joined string, and
    rebuilds the data only when something matched.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        self._names: dict[str, str] = {}
        self._forms: list[tuple[str, _Form]] = []  # (group, form), heaviest first
        self._plain: list[tuple[str, list[str]]] = []
        for index, (name, value) in enumerate(values.items()):
            if not value:
                continue
            if len(value) < 6:
                log.warning("secret %r is shorter than 6 characters; redacting it may garble unrelated output", name)
            for k, form in enumerate(_forms(value)):
                group = f"s{index}_{k}"
                self._names[group] = name
                self._forms.append((group, form))
            data = value.encode("utf-8")
            self._plain.append(
                (name, [value, data.hex(), data.hex().upper(), base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()])
            )
        self._forms.sort(key=lambda item: -item[1].weight)
        # A scalar whose text cannot hold any form's needle cannot hold a match: skip its text.
        bare = [n.lower() if f.lowered else n for _, f in self._forms for n in (f.bare or f.needles)]
        shortest = min((len(n) for n in bare if _in_number(n)), default=None)
        self._numbers = shortest is not None
        # Shorter texts cannot hold a needle: ints below this magnitude (a sign is one more
        # character), and every float when no float text (24 characters at most) is long enough.
        self._int_floor = 10 ** max(shortest - 2, 0) if shortest is not None else 0
        self._floats = shortest is not None and shortest <= _FLOAT_TEXT_MAX
        self._uuids = any(_UUID_PIECE.fullmatch(n) for n in bare)
        used = set().union(*(set(value) for value in values.values())) if values else set()
        self._separator = next(c for c in _separators() if c not in used)
        """Joins texts in `value`: no form can match it, so no match spans two texts."""

    def __bool__(self) -> bool:
        return bool(self._forms)

    def _replace(self, match: re.Match[str]) -> str:
        return f"[REDACTED:{self._names[match.lastgroup or '']}]"

    def _pattern_for(self, text: str) -> re.Pattern[str] | None:
        """A regex of the forms that could match ``text`` (one of their needles is in it), or None."""
        lowered: str | None = None
        hits = []
        for group, form in self._forms:
            if form.lowered:
                lowered = text.lower() if lowered is None else lowered
                haystack = lowered
            else:
                haystack = text
            if any(needle in haystack for needle in form.needles):
                hits.append((group, form.pattern))
        return _compile(tuple(hits)) if hits else None

    def text(self, text: str, *, truncated: bool = False) -> str:
        """``text`` with every form of every value replaced.

        With ``truncated=True`` (the output was cut at a cap), a trailing prefix of a value or
        of its hex/base64 form (4 characters or more) is redacted too, so a cap cannot be used
        to cut a value in half.
        """
        if not self._forms or not isinstance(text, str):
            return text
        for _ in range(4):
            pattern = self._pattern_for(text)
            if pattern is None:
                break
            text, count = pattern.subn(self._replace, text)
            if not count:
                break
        else:
            pattern = self._pattern_for(text)
            match = pattern.search(text) if pattern is not None else None
            if match is not None:  # pathological overlap with the marker itself: drop everything
                return self._replace(match)
        if truncated:
            text = self._redact_tail(text)
        return text

    def _redact_tail(self, text: str) -> str:
        for name, forms in self._plain:
            for form in forms:
                for size in range(min(len(form) - 1, len(text)), 3, -1):
                    if text.endswith(form[:size]):
                        return text[:-size] + f"[REDACTED:{name}]"
        return text

    def value(self, data: Any) -> Any:
        """``data`` with every form of every value replaced in its strings, bytes (as UTF-8),
        dict keys, and numbers and UUIDs (a changed one becomes its redacted text).

        Lists, tuples, dicts, sets and frozensets are walked at any depth; anything else is
        kept as is. Returns ``data`` itself when nothing matched, else a rebuilt copy.
        """
        if not self._forms:
            return data
        texts = self._texts(data)
        joined = self._separator.join(texts)
        pattern = self._pattern_for(joined)
        if pattern is None:
            return data
        ends = list(itertools.accumulate(len(text) + 1 for text in texts))
        hits: set[str] = set()
        position = 0
        while (match := pattern.search(joined, position)) is not None:
            index = bisect.bisect_right(ends, match.start())
            hits.add(texts[index])
            position = ends[index]
        if not hits:
            return data

        def leaf(item: Any) -> Any:
            text = self._leaf_text(item)
            if text is None or text not in hits:
                return item
            redacted = self.text(text)
            return redacted.encode("utf-8", "surrogateescape") if isinstance(item, (bytes, bytearray)) else redacted

        return map_tree(data, leaf)

    def _leaf_text(self, item: Any) -> str | None:
        """The text `value` searches for a non-container, or None when it cannot hold a form."""
        if isinstance(item, str):
            return item
        if isinstance(item, (bytes, bytearray)):
            return bytes(item).decode("utf-8", "surrogateescape")
        if isinstance(item, bool) or item is None:
            return None
        if isinstance(item, (int, float, Decimal)):
            if not self._numbers or isinstance(item, int) and abs(item) < self._int_floor:
                return None
            if isinstance(item, float) and not self._floats:
                return None
            try:
                return str(item)
            except ValueError:  # an int past the interpreter's digit limit has no text form
                return None
        if isinstance(item, UUID):
            return str(item) if self._uuids else None
        return None

    def _texts(self, data: Any) -> list[str]:
        """The text of every non-container in ``data`` that could hold a form (any order),
        walking each distinct container once, without recursion.

        Each container's items are grouped by type with C-level steps, so the large cases
        (many strings, many numbers) cost no Python bytecode per item.
        """
        if not isinstance(data, CONTAINERS):
            text = self._leaf_text(data)
            return [] if text is None else [text]
        texts: list[str] = []
        skip = _SKIPPED if self._numbers else _SKIPPED | _NUMBERS
        seen = {id(data)}
        stack = [data]
        while stack:
            node = stack.pop()
            if len(node) < 32:  # small containers: one step per item is cheaper than grouping
                for item in itertools.chain.from_iterable(node.items()) if isinstance(node, dict) else node:
                    if type(item) is str:
                        texts.append(item)
                    elif isinstance(item, CONTAINERS):
                        if id(item) not in seen:
                            seen.add(id(item))
                            stack.append(item)
                    elif type(item) not in skip:
                        text = self._leaf_text(item)
                        if text is not None:
                            texts.append(text)
                continue
            for items in (node.keys(), node.values()) if isinstance(node, dict) else (node,):
                kinds = set(map(type, items))
                types = list(map(type, items)) if len(kinds) > 1 else None
                for kind in kinds - skip:
                    group = items if types is None else itertools.compress(items, map(operator.is_, types, itertools.repeat(kind)))
                    if kind is str:
                        texts.extend(group)
                    elif kind is int:
                        group = list(group)
                        if max(group) >= self._int_floor or min(group) <= -self._int_floor:
                            long_enough = itertools.compress(group, map(self._int_floor.__le__, map(abs, group)))
                            texts.extend(t for t in map(self._leaf_text, long_enough) if t is not None)
                    elif kind is float:
                        if self._floats:
                            texts.extend(map(str, group))
                    elif issubclass(kind, CONTAINERS):
                        for item in group:
                            if id(item) not in seen:
                                seen.add(id(item))
                                stack.append(item)
                    else:
                        texts.extend(t for t in map(self._leaf_text, group) if t is not None)
        return texts

    def fault(self, fault: CapabilityFault) -> CapabilityFault:
        """``fault`` with its message redacted (the same object when nothing changed)."""
        message = self.text(fault.message)
        if message == fault.message:
            return fault
        return CapabilityFault(fault.guest_type, message, terminate=fault.terminate)


NO_REDACTION = Redactor({})
