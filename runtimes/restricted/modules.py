"""The guest's ``import``: the allowlist of stdlib modules handed out as read-only proxies.

The allowlist and each module's reviewed names (`runtimes.guest.ALLOWED_MODULES`,
`runtimes.guest.SURFACE`) are every runtime's. A `ModuleProxy` exposes exactly the names
`SURFACE` lists for its module (reviewed one by one: nothing that evaluates strings as code, writes process-wide registries or caches, takes a
``module=`` name, builds classes from data, walks guest objects with host privileges, writes to
real file descriptors or starts processes), with the functions in `replacements.REPLACED`
swapped for guarded versions and mutable containers frozen. Proxies are built once per
process and shared, so they are immutable and cannot be copied into mutable ones; ``random``
is the exception: each import gets its own ``Random`` instance, so a guest's ``seed`` never
touches the host's generator or another run's.
"""

from __future__ import annotations

import importlib
import random as _random
import threading
from collections.abc import Callable
from typing import Any

from runtimes.guest import ALLOWED_MODULES, SURFACE, ModuleProxy, import_refused, module_members
from runtimes.restricted.guards import WRITABLE_PACKAGES, expose_types
from runtimes.restricted import guest_re  # imported here, not during a run: regex registers with copyreg
from runtimes.restricted.replacements import REPLACED

OPTIONAL_MODULES = ("numpy", "pandas")
"""Heavy C-extension modules a `ProcessDriver` may add to its children's allowlist (never the
in-process runtime's: see docs/data.md, "Why numpy and pandas are not offered in-process").
Their proxies carry every public attribute; raw memory, file I/O and runaway C calls are
contained by the process layers (rlimits, seccomp, netns, Landlock), not by the guards."""

SOURCES: dict[str, Callable[[], Any]] = {"re": lambda: guest_re}
"""Where a module's names are read from when it is not the stdlib module of that name (a
wrapper object offering the same API); default `importlib.import_module`."""


def _members(name: str) -> dict[str, Any]:
    """The proxy members of allowed module ``name``: the `SURFACE` names (every public non-module
    name for an `OPTIONAL_MODULES` package), replacements applied, containers frozen."""
    module = SOURCES[name]() if name in SOURCES else importlib.import_module(name)
    names = SURFACE.get(name)
    if names is None:
        if name.partition(".")[0] not in OPTIONAL_MODULES:
            raise ImportError(f"module {name!r} has no reviewed surface")
        names = frozenset(key for key in dir(module) if not key.startswith("_"))
    members = module_members(module, names, REPLACED.get(name))
    expose_types(members.values())
    return members


class ModuleTable:
    """Builds proxies lazily and serves the guest's ``__import__``."""

    def __init__(self, allowed: tuple[str, ...] = ALLOWED_MODULES) -> None:
        self.allowed = frozenset(allowed)
        self._proxies: dict[str, ModuleProxy] = {}
        self._lock = threading.RLock()  # building a package's proxy builds its allowed submodules

    def allow(self, names: tuple[str, ...]) -> None:
        """Add `OPTIONAL_MODULES` to this table (the process zygote does so, before confinement,
        for its own children only); any other name raises `ValueError`. Their instances become
        writable by the guest, and their submodules importable (see `import_`)."""
        unknown = set(names) - set(OPTIONAL_MODULES)
        if unknown:
            raise ValueError(f"not optional modules: {sorted(unknown)}; choose from {list(OPTIONAL_MODULES)}")
        with self._lock:
            self.allowed = self.allowed | frozenset(names)
            WRITABLE_PACKAGES.update(names)

    def proxy(self, name: str) -> ModuleProxy:
        """The proxy for allowed module ``name`` (a fresh one for ``random``)."""
        if name == "random":
            return self._random()
        proxy = self._proxies.get(name)
        if proxy is None:
            with self._lock:
                proxy = self._proxies.get(name)
                if proxy is None:
                    members = _members(name)
                    prefix = name + "."
                    for sub in self.allowed:
                        if sub.startswith(prefix) and "." not in sub[len(prefix):]:
                            members[sub[len(prefix):]] = self.proxy(sub) if sub != "random" else None
                    proxy = ModuleProxy(name, members)
                    self._proxies[name] = proxy
        return proxy

    def _random(self) -> ModuleProxy:
        members = _members("random")
        generator = _random.Random()
        shared = _random._inst  # the host's hidden generator, whose bound methods the module exports
        for key, value in list(members.items()):
            if getattr(value, "__self__", None) is shared:
                members[key] = getattr(generator, key)
        return ModuleProxy("random", members)

    def import_(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        """The guest's ``__import__``: raises ImportError naming the module when not allowed."""
        if level != 0:
            raise ImportError("relative imports are not allowed")
        if type(name) is str and name.partition(".")[0] in WRITABLE_PACKAGES and name not in self.allowed:
            # A submodule of an optional package: C code imports these through the caller's
            # __import__ (np.sum -> numpy._core._methods) and uses sys.modules, not the result.
            private = any(part.startswith("_") for part in name.split("."))
            importlib.import_module(name)
            return self.proxy(name) if fromlist and not private else self.proxy(name.partition(".")[0])
        if type(name) is not str or name not in self.allowed:
            raise import_refused(name, self.allowed)
        if fromlist:
            return self.proxy(name)
        return self.proxy(name.split(".")[0])


MODULES = ModuleTable()
