"""`SandboxSpec`: a frozen, picklable description of a `Sandbox`, built on a Ray worker.

A `Sandbox` holds live things (a zygote, a Wasmtime engine, connection pools, locks) that
cannot travel. A spec holds only what can, and says at construction what cannot:

- a capability whose function does not pickle raises `TypeError` naming it (open the
  resource on the worker with ``factories=`` or serve it from one place with
  `sandbox.ray.CapabilityHost`);
- a `Secret` with a literal ``value=`` raises `SecretInTransit`: secrets travel by reference
  (``env=``, ``file=``, ``provider=``) and are read on the worker at run start;
- a policy travels as its configuration (a `Policy`, the parsed TOML mapping, or a TOML path
  read here) and is rebuilt on the worker.
"""

from __future__ import annotations

import functools
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ray import cloudpickle

from sandbox.capabilities import Capability, collect
from sandbox.egress import Egress
from sandbox.errors import ConfigurationError, SecretInTransit
from sandbox.limits import Limits
from sandbox.policy import MemoryRateStore, Policy, Principal, RateStore, coerce_principal
from sandbox.sandbox import Sandbox
from sandbox.secrets import Secret, validate_secrets

CapabilityFactory = Callable[[], "Capability | Callable[..., Any] | Iterable[Capability | Callable[..., Any]]"]


class _CapabilitySource:
    """What a capability needs to be rebuilt on a worker: its function, name, description and
    resolved type hints. (A function pickled by value loses the module globals that string
    annotations name, so the hints resolved here travel with it.)"""

    __slots__ = ("func", "name", "description", "hints")

    def __init__(self, cap: Capability) -> None:
        self.func = cap.func
        self.name = cap.name
        self.description = cap.description
        self.hints = typing.get_type_hints(cap.func)

    def __getstate__(self) -> tuple[Any, str, str, dict[str, Any]]:
        return self.func, self.name, self.description, self.hints

    def __setstate__(self, state: tuple[Any, str, str, dict[str, Any]]) -> None:
        self.func, self.name, self.description, self.hints = state

    def build(self) -> Capability:
        if isinstance(self.func, types.FunctionType):
            self.func.__annotations__ = dict(self.hints)
        return Capability(self.func, name=self.name, description=self.description)


class SandboxSpec:
    """A `Sandbox` configuration that can travel to Ray workers; `build` makes the Sandbox there.

    Args:
        runtime, isolation, limits, require, modules, egress, workers: as for `Sandbox`.
        capabilities: capabilities or typed functions; each function must pickle
            (``ray.cloudpickle``), else `TypeError` naming the capability.
        factories: callables run on the worker by `build`, each returning a capability, a
            function, or an iterable of them: the way to grant a capability over a resource
            that cannot travel (a database connection opened on the worker).
        secrets: ``{name: Secret(env=... | file=... | provider=...)}``; a literal ``value=``
            raises `SecretInTransit`. Values are read on the worker at each run start.
        policy: a `sandbox.policy.Policy`, the mapping of a policy file, or a TOML path
            (read here, so the worker does not need the file).
        principal: the default principal of runs (`Principal`, dict or id string).

    Construction validates everything a local `Sandbox` would that does not need the
    worker's machine (names, type hints, secret scopes, policy rules); layers and modules
    are checked by `build`, on the worker.
    """

    def __init__(
        self,
        runtime: str = "restricted",
        *,
        isolation: str | None = None,
        limits: Limits | None = None,
        capabilities: Iterable[Capability | Callable[..., Any]] = (),
        factories: Iterable[CapabilityFactory] = (),
        secrets: Mapping[str, Secret] | None = None,
        policy: Policy | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
        require: Iterable[str] = (),
        modules: Iterable[str] = (),
        egress: Egress | None = None,
        workers: int = 1,
    ) -> None:
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a sandbox.Limits, not {type(limits).__name__}")
        if egress is not None and not isinstance(egress, Egress):
            raise TypeError(f"egress must be a sandbox.Egress, not {type(egress).__name__}")
        self.runtime = runtime
        self.isolation = isolation
        self.limits = limits
        self.require = tuple(require)
        self.modules = (modules,) if isinstance(modules, str) else tuple(modules)
        self.egress = egress
        self.workers = workers
        self.principal = coerce_principal(principal)
        granted = collect(capabilities)
        self._capabilities = tuple(_CapabilitySource(cap) for cap in granted.values())
        for source in self._capabilities:
            _check_travels(source.func, f"capability {source.name!r}",
                           "open the resource on the worker with factories=[...] or serve it with CapabilityHost")
        self._factories = tuple(factories)
        for factory in self._factories:
            if not callable(factory):
                raise TypeError(f"factories must be callables returning capabilities, got {factory!r}")
            _check_travels(factory, f"capability factory {_name(factory)!r}", "open resources inside the factory")
        self.secrets = validate_secrets(secrets)
        for name, secret in self.secrets.items():
            if secret.value is not None:
                raise SecretInTransit(
                    f"secret {name!r} has a literal value, which would travel to the workers in plaintext: "
                    "give it by reference (env=, file= or provider=), read on the worker at run start"
                )
            if secret.provider is not None:
                _check_travels(secret.provider, f"the provider of secret {name!r}", "use env= or file=")
        self._policy = _policy_factory(policy)
        self.counts_rates = False
        """True when the policy limits rates per principal (counted across runs)."""
        if self._policy is not None:
            built = self._policy()
            # Validated here against the capabilities known on the driver; factories add theirs on the worker.
            built.validate_for(granted)
            self.counts_rates = any(rule.rate is not None for rule in built.rules.values()) and isinstance(
                built.rate_store, MemoryRateStore)
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"a SandboxSpec is frozen: make a new one to change {name}")
        super().__setattr__(name, value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def capability_names(self) -> tuple[str, ...]:
        """Names of the capabilities given directly (factories add theirs on the worker)."""
        return tuple(source.name for source in self._capabilities)

    def build(self, *, records: Any = None, rate_store: RateStore | None = None) -> Sandbox:
        """Make the `Sandbox` this spec describes, here (on the worker).

        Runs the factories, rebuilds the policy (with ``rate_store`` for its rate windows,
        when given), and constructs the Sandbox: raises what
        `Sandbox(...)` raises (`IsolationUnavailable` for a required layer this machine
        cannot apply, `ConfigurationError` for a module not installed here).
        """
        capabilities: list[Capability | Callable[..., Any]] = [source.build() for source in self._capabilities]
        for factory in self._factories:
            made = factory()
            capabilities.extend([made] if callable(made) else list(made))
        return Sandbox(
            self.runtime,  # type: ignore[arg-type]
            limits=self.limits,
            capabilities=capabilities,
            isolation=self.isolation,  # type: ignore[arg-type]
            workers=self.workers,
            require=self.require,
            modules=self.modules,
            secrets=self.secrets,
            egress=self.egress,
            policy=self._build_policy(rate_store),
            principal=self.principal,
            records=records,
        )

    def _build_policy(self, rate_store: RateStore | None) -> Policy | None:
        if self._policy is None:
            return None
        return self._policy(rate_store=rate_store) if rate_store is not None else self._policy()

    def __repr__(self) -> str:
        return (
            f"SandboxSpec(runtime={self.runtime!r}, isolation={self.isolation!r}, "
            f"capabilities={list(self.capability_names)}, factories={len(self._factories)}, "
            f"secrets={sorted(self.secrets)}, policy={self._policy is not None})"
        )


def _check_travels(obj: Any, what: str, fix: str) -> None:
    """Raise `TypeError` naming ``what`` when ``obj`` cannot be pickled for a Ray worker."""
    try:
        cloudpickle.dumps(obj)
    except SecretInTransit:
        raise
    except Exception as exc:
        raise TypeError(f"{what} cannot travel to a Ray worker ({type(exc).__name__}: {exc}); {fix}") from None


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", type(func).__name__)


def _policy_factory(policy: Policy | Mapping[str, Any] | str | os.PathLike[str] | None) -> Callable[..., Policy] | None:
    """A picklable callable that rebuilds ``policy`` on a worker; `ConfigurationError`/`TypeError`
    when it cannot be described that way."""
    if policy is None:
        return None
    if isinstance(policy, (str, os.PathLike)):
        path = Path(policy)
        if not path.is_file():
            raise ConfigurationError(f"policy file {str(path)!r} does not exist: pass a Policy or a TOML file path")
        import tomllib

        try:
            policy = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    if isinstance(policy, Mapping):
        data = dict(policy)
        if "cedar" in data or "cedar" in data.get("policy", {}):
            raise ConfigurationError("a Cedar policy file cannot travel in a SandboxSpec yet: use a TOML policy")
        factory: Callable[..., Policy] = functools.partial(Policy.from_mapping, data, source="SandboxSpec policy")
    elif type(policy) is Policy:
        shared = None if isinstance(policy.rate_store, MemoryRateStore) else policy.rate_store
        factory = functools.partial(
            Policy, default=policy.default, rules=dict(policy.rules), checks=policy.checks, approve=policy.approve,
            approval_timeout=policy.approval_timeout, escalate_after=policy.escalate_after, rate_store=shared,
        )
    elif isinstance(policy, Policy):
        raise ConfigurationError(
            f"a {type(policy).__name__} cannot travel in a SandboxSpec yet: use a Policy or a TOML policy"
        )
    else:
        raise TypeError(f"policy must be a Policy, a policy mapping or a TOML path, not {type(policy).__name__}")
    factory()  # invalid rules raise here, on the driver
    _check_travels(factory, "the policy (its checks or approver)", "use module-level functions for checks")
    return factory
