"""Which driver serves a `Sandbox`: the runtime and isolation it was configured with, checked
against the optional modules and the isolation layers it must apply."""

from __future__ import annotations

from collections.abc import Iterable

from sandbox.errors import ConfigurationError
from sandbox.runtime import Driver


def check_modules(modules: Iterable[str], runtime: str, isolation: str | None) -> tuple[str, ...]:
    """Validate ``Sandbox(modules=...)``: optional modules, process isolation only, installed."""
    if isinstance(modules, str):
        modules = (modules,)
    names = tuple(dict.fromkeys(modules))
    if not names:
        return ()  # without importing the restricted runtime (~70 ms of a wasi process's start-up)
    from runtimes.restricted.modules import OPTIONAL_MODULES

    unknown = [name for name in names if name not in OPTIONAL_MODULES]
    if unknown:
        raise ConfigurationError(f"unknown optional module(s) {unknown}: choose from {list(OPTIONAL_MODULES)}")
    if isolation != "process" or runtime != "restricted":
        where = "in the guest image" if runtime == "wasi" else "safe in-process"
        raise ConfigurationError(
            f"modules={list(names)} are offered only with isolation='process' (not {where}): in-process the "
            "language layer is the only boundary, and these C extensions expose raw memory (ndarray.ctypes, the "
            "buffer protocol) and file I/O (np.load, ndarray.tofile, pd.read_*) that its guards cannot see; "
            "the wasi runtime's guest image does not contain them. See docs/data.md."
        )
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"modules={list(names)}: {', '.join(missing)} not installed on the host; "
            "pip install 'sandbox[dataframes]'"
        )
    return names


def make_driver(runtime: str, isolation: str | None, workers: int, require: frozenset[str],
                 modules: tuple[str, ...] = (), capabilities: tuple[str, ...] = ()) -> Driver:
    """The driver of ``runtime`` (and ``isolation``); ``capabilities`` are the guest names every job
    of this sandbox grants (process isolation warms its children up with them)."""
    if runtime == "wasi":
        from sandbox.wasi import WasiDriver

        driver: Driver = WasiDriver()
    elif isolation == "process":
        from sandbox.process import ProcessDriver

        driver = ProcessDriver(workers=workers, require=require, modules=modules, capabilities=capabilities)
    else:
        from sandbox.restricted import RestrictedDriver

        driver = RestrictedDriver()
    missing = require - set(driver.layers)
    if missing:
        from sandbox.errors import IsolationUnavailable

        driver.close()
        reasons = "".join(f"; {layer}: {why}" for layer, why in sorted(getattr(driver, "unavailable", {}).items())
                          if layer in missing)
        raise IsolationUnavailable(
            f"layers {sorted(missing)} are not applied by runtime={runtime!r}, isolation={isolation!r} "
            f"(it applies {', '.join(driver.layers)}){reasons}; choose a runtime or isolation that applies them"
        )
    return driver
