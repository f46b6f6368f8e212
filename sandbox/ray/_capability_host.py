"""`CapabilityHost`: capabilities over a resource pinned to one place, served to every worker.

Some resources cannot be opened on every worker: one database connection, a GPU, a licensed
API client. A `CapabilityHost` opens them once, in one actor, by calling a factory there. Its
`capabilities` are stand-ins with the same names, signatures and types: a worker validates
the guest's arguments against them *before* anything travels, then sends the validated
arguments to the host actor, which validates them again and calls the real capability.

A capability that takes a `SecretValue` cannot be hosted (`TypeError` at construction): the
value would travel in the call's arguments. Resolve secrets where they are used instead.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import ray
from pydantic import TypeAdapter
from ray.exceptions import RayTaskError

from sandbox.capabilities import Capability, collect
from sandbox.secrets import SecretValue


class _Host:
    """The actor: owns the real capabilities and the resource they close over."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        made = factory()
        self._capabilities = collect([made] if callable(made) else list(made))

    def describe(self) -> list[tuple[str, str, inspect.Signature]]:
        """(name, description, signature with resolved type hints) of each capability."""
        out = []
        for cap in self._capabilities.values():
            hints = typing.get_type_hints(cap.func)
            for param in cap.signature.parameters.values():
                if _mentions_secret(hints.get(param.name)):
                    raise TypeError(
                        f"capability {cap.name!r} takes a SecretValue ({param.name}), which would travel to the "
                        "host in plaintext: grant it on the workers instead of through a CapabilityHost"
                    )
            signature = cap.signature.replace(
                parameters=[p.replace(annotation=hints[p.name]) for p in cap.signature.parameters.values()],
                return_annotation=hints["return"],
            )
            out.append((cap.name, cap.description, signature))
        return out

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        cap = self._capabilities[name]
        return cap.call_bound(cap.bind([], arguments))


class CapabilityHost:
    """Opens a resource in one actor and serves capabilities over it to every pool worker.

    Args:
        factory: called once in the actor; returns a capability, a typed function, or an
            iterable of them (as ``SandboxSpec(factories=...)``). Must pickle.
        name, namespace: make the actor named (found again with the same name).
        options: further ``ray.remote`` options for the actor (``num_cpus``, ``resources``,
            ``scheduling_strategy`` to pin it to a node).

    Raises what the factory raised, and `TypeError` for a capability taking a `SecretValue`.
    """

    def __init__(self, factory: Callable[[], Any], *, name: str | None = None, namespace: str | None = None,
                 options: dict[str, Any] | None = None) -> None:
        settings: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 8, **(options or {})}
        if name is not None:
            settings.update(name=name, namespace=namespace, get_if_exists=True)
        self._actor = ray.remote(_Host).options(**settings).remote(factory)
        try:
            described = ray.get(self._actor.describe.remote())
        except RayTaskError as exc:
            ray.kill(self._actor)
            raise exc.as_instanceof_cause() from None
        self.capabilities: tuple[Capability, ...] = tuple(
            Capability(_proxy(self._actor, name, signature), name=name, description=description)
            for name, description, signature in described
        )
        """Stand-ins to grant in a `SandboxSpec` (``capabilities=host.capabilities``)."""

    def close(self) -> None:
        """Stop the host actor (its resource is released with it)."""
        ray.kill(self._actor)


def _proxy(actor: Any, name: str, signature: inspect.Signature) -> Callable[..., Any]:
    returns = TypeAdapter(signature.return_annotation)

    def call(**arguments: Any) -> Any:
        try:
            result = ray.get(actor.call.remote(name, arguments))
        except RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
        return returns.validate_python(result)

    call.__name__ = call.__qualname__ = name.rsplit(".", 1)[-1]
    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    call.__annotations__["return"] = signature.return_annotation
    return call


def _mentions_secret(annotation: Any) -> bool:
    if annotation is SecretValue:
        return True
    return any(_mentions_secret(arg) for arg in typing.get_args(annotation))
