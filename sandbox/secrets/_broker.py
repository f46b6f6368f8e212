"""The secrets of one run: `SecretBroker` reads the values at run start, issues one token per
secret, resolves tokens in capability arguments to `SecretValue`s and revokes them when the run
ends.
"""

from __future__ import annotations

import secrets as _random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from pydantic_core import core_schema

from runtimes.wire import SECRET_MARKER
from sandbox.runtime import CapabilityFault, SecretHandleSpec
from sandbox.secrets._hosts import canonical_host, host_matches, scope_allows_capability
from sandbox.secrets._redaction import Redactor
from sandbox.secrets._secret import Secret
from sandbox.tree import DESCEND, identity, map_tree


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
