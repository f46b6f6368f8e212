"""Build, cache and load the wasi guest component.

The guest (``runtimes/wasi/app.py`` plus ``runtimes/wire.py`` and ``runtimes/guest.py``, against
the WIT world in ``runtimes/wasi/wit/``) is turned into a WebAssembly component by componentize-py (about 10 s)
and compiled to native code by Wasmtime (about 10 s more). Both are slow, so the compiled
artifact is cached on disk with ``Component.serialize()`` and loaded with
``Component.deserialize_file`` (a few ms).

Cache entries live in ``platformdirs.user_cache_dir("sandbox")/wasi`` (override with the
``SANDBOX_WASI_CACHE`` environment variable) and are keyed by the wasmtime version, the engine
configuration and a hash of the guest sources and the componentize-py version, so a changed guest
gets an entry of its own (and checkouts with different guests can share one directory). Each
entry has a metadata file holding the SHA-256 of the artifact; an entry whose hash, key or
header does not match is discarded and rebuilt, never loaded (deserialising trusts its input, so
a corrupt file must not reach Wasmtime).

Hashing the ~40 MB artifact costs 50-150 ms, half a process's start-up budget, so after a load
has hashed the artifact in full and found it unchanged throughout, the metadata records its
*stamp* (device, inode, size, mtime and ctime), and a later load whose stamp matches skips the
hash. The kernel updates ctime on every write, truncation, chmod or rename, and no unprivileged
process can set it back; a stamp is recorded only once its ctime is `_STAMP_SETTLED_NS` old, so
a rewrite within one coarse timestamp tick cannot leave it unchanged. A matching stamp then
means nothing has changed the file's content through the filesystem since its hash was taken
(media corruption is not covered). A copied or rewritten entry (another inode, a new ctime) is
hashed in full again.

``sandbox prepare`` (or ``python -m sandbox.wasi.build``) prebuilds the cache ahead of time, for
images and CI (``make demo`` / ``make test`` call it); ``--force`` rebuilds, ``--print-path``
prints where the artifact is. One cache directory can serve several workers and users: builds
take an exclusive file lock in it (a second builder waits and then loads the first one's
artifact), entries are written by atomic renames, and a reader needs only read access.

A build on first use shows a progress bar when stderr is a terminal and ``rich`` is installed,
and otherwise log lines (logger ``sandbox.wasi.build``: a warning when it starts, so it shows
without any logging configuration, and info when it is done).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import wasmtime
from wasmtime.component import Component

import runtimes
from sandbox.errors import GuestBuildError

WORLD = "sandbox"
APP_MODULE = "app"
ENGINE_TAG = "fuel+epoch+v1"
"""Names the engine configuration below; bump it when `engine_config` changes."""

FIX_HINT = "pip install 'componentize-py==0.25.1' (a dependency of this package: reinstall it) and retry"

log = logging.getLogger("sandbox.wasi.build")


class WasiBuildError(GuestBuildError):
    """The wasi guest could not be built or loaded; the message says how to fix it."""


def engine_config() -> wasmtime.Config:
    """The one Engine configuration the driver and the cache agree on."""
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    return config


def make_engine() -> wasmtime.Engine:
    return wasmtime.Engine(engine_config())


def guest_dir() -> Path:
    """``runtimes/wasi`` (shipped as package data)."""
    return Path(runtimes.__file__).parent / "wasi"


def _guest_sources() -> list[tuple[str, Path]]:
    root = guest_dir()
    shared = root.parent
    files = [("app.py", root / "app.py")]
    files += [(name, shared / name) for name in ("wire.py", "guest.py")]
    files += [(f"wit/{p.name}", p) for p in sorted((root / "wit").glob("*.wit"))]
    return files


_VERSION = re.compile(r"^Version:[ \t]*(\S+)", re.MULTILINE)
_SEPARATORS = re.compile(r"[-_.]+")


def _dist_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed.

    Found where `importlib.metadata` finds it, the first ``sys.path`` directory holding a
    ``<name>-<version>.dist-info`` (or ``.egg-info``) directory, and read from the ``Version``
    header of its metadata file, without importing `importlib.metadata`: that import (``email``,
    ``zipfile``, ``csv``) costs more than loading the guest from the cache does. Whatever this
    scan cannot settle (a zip or an egg on ``sys.path``, an egg-info file, no match) is left to
    `importlib.metadata`, so the answer is the same."""
    wanted = _SEPARATORS.sub("_", name).lower()
    for entry in sys.path:
        directory = entry or "."
        if directory.lower().rstrip("/").endswith(".egg"):
            return _dist_version_by_metadata(name)  # an egg's EGG-INFO: only importlib.metadata reads it in order
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, PermissionError):
            continue  # importlib.metadata skips these too
        except OSError:
            return _dist_version_by_metadata(name)  # a zip file: only importlib.metadata reads it in order
        for candidate in names:
            stem, _, suffix = candidate.rpartition(".")
            if suffix.lower() not in ("dist-info", "egg-info") or _SEPARATORS.sub("_", stem.partition("-")[0]).lower() != wanted:
                continue
            for meta in ("METADATA", "PKG-INFO"):
                try:
                    match = _VERSION.search(Path(directory, candidate, meta).read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError):
                    continue
                if match:
                    return match.group(1)
            return _dist_version_by_metadata(name)
    return _dist_version_by_metadata(name)


def _dist_version_by_metadata(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _componentize_version() -> str:
    return _dist_version("componentize-py") or "missing"


def guest_hash() -> str:
    """SHA-256 over the guest sources and the componentize-py version."""
    digest = hashlib.sha256()
    digest.update(f"componentize-py={_componentize_version()}\n".encode())
    for name, path in _guest_sources():
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$SANDBOX_WASI_CACHE``, else ``wasi`` in the user's cache directory for ``sandbox``
    (platformdirs' ``user_cache_dir``)."""
    override = os.environ.get("SANDBOX_WASI_CACHE")
    if override:
        return Path(override)
    return Path(_user_cache_dir()) / "wasi"


def _user_cache_dir() -> str:
    """``platformdirs.user_cache_dir("sandbox")``. On Linux with an absolute ``$XDG_CACHE_HOME``
    or ``$HOME`` it is computed here, as platformdirs computes it (importing platformdirs, and
    the tempfile and shutil it loads, costs more than loading the cached guest); anywhere else
    platformdirs answers."""
    if sys.platform == "linux" and not hasattr(sys, "getandroidapilevel") and "ANDROID_DATA" not in os.environ:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        if os.path.isabs(xdg):
            return os.path.join(xdg, "sandbox")
        if os.path.isabs(os.environ.get("HOME", "")):
            return os.path.join(os.path.expanduser("~/.cache"), "sandbox")
    import platformdirs

    return platformdirs.user_cache_dir("sandbox")


def cache_key() -> str:
    version = _dist_version("wasmtime")
    return f"wasmtime-{version}-{ENGINE_TAG.replace('+', '_')}-{guest_hash()[:24]}"


@dataclass(frozen=True)
class CacheEntry:
    key: str
    artifact: Path
    meta: Path


def cache_entry(directory: Path | None = None) -> CacheEntry:
    directory = directory or cache_dir()
    key = cache_key()
    return CacheEntry(key, directory / f"guest-{key}.cwasm", directory / f"guest-{key}.json")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_STAMP_SETTLED_NS = 2_000_000_000
"""Age of the artifact's ctime before its stamp is trusted (coarser than any timestamp tick)."""


def _stamp(path: Path) -> list[int]:
    """What changes whenever the file's content is changed through the filesystem."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _valid(entry: CacheEntry) -> bool:
    """True when the entry exists and its metadata and hash match (the hash is skipped when the
    artifact's stamp is the one recorded after an earlier full check); never raises."""
    try:
        meta = json.loads(entry.meta.read_text())
        if meta.get("key") != entry.key or meta.get("size") != entry.artifact.stat().st_size:
            return False
        before = _stamp(entry.artifact)
        if meta.get("stamp") == before:
            return True
        if meta.get("sha256") != _sha256_file(entry.artifact):
            return False
        if _stamp(entry.artifact) != before:  # changed while it was hashed: what is there now is unchecked
            return False
        if time.time_ns() - before[4] > _STAMP_SETTLED_NS:
            _record_stamp(entry, meta, before)
        return True
    except (OSError, ValueError, AttributeError):
        return False


def _record_stamp(entry: CacheEntry, meta: dict[str, Any], stamp: list[int]) -> None:
    """Add ``stamp`` to the entry's metadata, atomically; skipped where the cache is read-only."""
    tmp = entry.meta.with_name(f".{entry.meta.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps({**meta, "stamp": stamp}, indent=1))
        tmp.chmod(0o644)
        os.replace(tmp, entry.meta)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _discard(entry: CacheEntry) -> None:
    for path in (entry.meta, entry.artifact):
        with contextlib.suppress(OSError):
            path.unlink()


def _componentize_command() -> list[str]:
    import shutil

    exe = shutil.which("componentize-py", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe is None:
        try:
            import componentize_py  # noqa: F401
        except ImportError:
            raise WasiBuildError(f"the wasi runtime needs componentize-py to build its guest, and it is not installed: {FIX_HINT}") from None
        return [sys.executable, "-c", "import sys, componentize_py; sys.argv[0] = 'componentize-py'; sys.exit(componentize_py.script())"]
    return [exe]


def build_wasm(out: Path) -> None:
    """Run componentize-py on a staging copy of the guest sources; write the component to ``out``."""
    import shutil  # the build's modules load only when it runs, not when the cached guest is loaded
    import subprocess
    import tempfile

    command = _componentize_command()
    with tempfile.TemporaryDirectory(prefix="sandbox-wasi-build-") as tmp:
        stage = Path(tmp) / "app"
        (stage / "wit").mkdir(parents=True)
        for name, path in _guest_sources():
            shutil.copyfile(path, stage / name)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        args = command + ["-q", "-d", str(stage / "wit"), "-w", WORLD, "componentize", APP_MODULE, "-p", str(stage), "-o", str(out)]
        try:
            proc = subprocess.run(args, cwd=stage, env=env, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise WasiBuildError(f"componentize-py could not be started: {FIX_HINT}") from None
        except subprocess.TimeoutExpired:
            raise WasiBuildError("componentize-py took more than 10 minutes to build the wasi guest; retry, or run `python -m sandbox.wasi.build` to see its output") from None
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
            raise WasiBuildError(
                "building the wasi guest with componentize-py failed "
                f"(exit {proc.returncode}); fix the guest sources in {guest_dir()} or reinstall componentize-py "
                f"({FIX_HINT}). Its output ended with:\n{tail}"
            )


_LOCK = threading.Lock()


@contextlib.contextmanager
def _file_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory/.build.lock``. A lock file made by another user is
    opened read-only (``flock`` needs no write access)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".build.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class BuildProgress:
    """Reports the steps of a guest build: a ``rich`` progress bar when ``stream`` is a
    terminal and rich is installed, otherwise log lines; nothing when ``quiet``."""

    STEPS = ("componentize-py: Python to a WebAssembly component", "wasmtime: compiling to native code", "writing the cache")

    def __init__(self, *, quiet: bool = False, stream: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> BuildProgress:
        if self.quiet:
            return self
        if getattr(self.stream, "isatty", lambda: False)():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            except ImportError:
                pass
            else:
                self._bar = Progress(
                    SpinnerColumn(), TextColumn("sandbox: building the wasi guest: {task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=Console(file=self.stream), transient=False,
                )
                self._bar.__enter__()
                self._task = self._bar.add_task(self.STEPS[0], total=len(self.STEPS))
                return self
        log.warning("building the wasi guest (first use; 30-90 s, cached afterwards; "
                    "`sandbox prepare` builds it ahead of time)")
        return self

    def step(self, index: int) -> None:
        """Step ``index`` of `STEPS` begins (the ones before it are done)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=index, description=self.STEPS[index])
        elif not self.quiet:
            log.info("wasi guest build: %s (%.1f s so far)", self.STEPS[index], time.monotonic() - self.started)

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if self._bar is not None:
            if kind is None:
                self._bar.update(self._task, completed=len(self.STEPS), description="done")
            self._bar.__exit__(kind, *exc)
        elif not self.quiet and kind is None:
            log.info("wasi guest built and cached in %.1f s", time.monotonic() - self.started)


def build(engine: wasmtime.Engine, entry: CacheEntry, *, quiet: bool = False) -> Component:
    """Build the guest, compile it with ``engine`` and write the cache entry atomically.

    Raises `WasiBuildError` when a step fails, the cache directory included.
    """
    directory = entry.artifact.parent
    try:
        with BuildProgress(quiet=quiet) as progress:
            return _build(engine, entry, directory, progress)
    except OSError as exc:
        raise WasiBuildError(
            f"cannot write the wasi guest cache in {directory} ({exc.strerror or exc}): make it writable, set "
            "SANDBOX_WASI_CACHE to a writable directory, or run `sandbox prepare` where it is writable"
        ) from None


def _build(engine: wasmtime.Engine, entry: CacheEntry, directory: Path, progress: BuildProgress) -> Component:
    import tempfile

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandbox-wasi-", dir=directory) as tmp:
        wasm = Path(tmp) / "guest.wasm"
        build_wasm(wasm)
        progress.step(1)
        try:
            component = Component.from_file(engine, str(wasm))
        except wasmtime.WasmtimeError as exc:
            raise WasiBuildError(f"wasmtime could not compile the wasi guest: {exc}") from None
        progress.step(2)
        data = component.serialize()
        tmp_artifact = Path(tmp) / "guest.cwasm"
        tmp_artifact.write_bytes(data)
        meta = {
            "key": entry.key,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "wasmtime": _dist_version("wasmtime"),
            "componentize_py": _componentize_version(),
            "built_at": time.time(),
        }
        tmp_artifact.chmod(0o644)  # readable by every worker sharing the directory
        # artifact first, metadata last: a reader that sees the metadata sees the artifact
        os.replace(tmp_artifact, entry.artifact)
        tmp_meta = Path(tmp) / "guest.json"
        tmp_meta.write_text(json.dumps(meta, indent=1))
        tmp_meta.chmod(0o644)
        os.replace(tmp_meta, entry.meta)
    return component


def load_component(engine: wasmtime.Engine, *, directory: Path | None = None, quiet: bool = False, force: bool = False) -> Component:
    """Return the compiled guest for ``engine``: from the cache, or built (and cached) now.

    A cache entry is used only when its metadata, size and SHA-256 match; anything else is
    discarded and rebuilt. Raises `WasiBuildError` with a fix when building is impossible.
    """
    entry = cache_entry(directory)
    with _LOCK:
        if not force and _valid(entry):
            try:
                return Component.deserialize_file(engine, str(entry.artifact))
            except wasmtime.WasmtimeError:
                pass  # stale (engine or version mismatch the key missed): rebuild
        with _file_lock(entry.artifact.parent):
            # another process may have built it while we waited for the lock
            if not force and _valid(entry):
                try:
                    return Component.deserialize_file(engine, str(entry.artifact))
                except wasmtime.WasmtimeError:
                    pass
            _discard(entry)
            return build(engine, entry, quiet=quiet)


PRUNE_AFTER_SECONDS = 86400.0
"""Entries of other guests are kept this long after they were written: checkouts with another
guest (a branch, a second worktree) share the cache directory and still use theirs."""


def prune(directory: Path | None = None, *, older_than: float = PRUNE_AFTER_SECONDS) -> int:
    """Remove cache entries other than the current one that were written more than
    ``older_than`` seconds ago; return how many files were removed."""
    directory = directory or cache_dir()
    keep = cache_entry(directory)
    cutoff = time.time() - older_than
    removed = 0
    for path in directory.glob("guest-*"):
        if path not in (keep.artifact, keep.meta):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
                removed += 1
    return removed


def prepare(directory: Path | None = None, *, force: bool = False, quiet: bool = False) -> tuple[CacheEntry, float]:
    """Make sure the cache in ``directory`` (default `cache_dir`) holds the current guest:
    build it unless a valid entry exists (or ``force``), then remove stale entries (`prune`). Returns the
    entry and the seconds it took. Raises `WasiBuildError` with a fix."""
    started = time.monotonic()
    load_component(make_engine(), directory=directory, force=force, quiet=quiet)
    prune(directory)
    return cache_entry(directory), time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    import argparse  # only for the command line

    parser = argparse.ArgumentParser(prog="python -m sandbox.wasi.build", description="Prebuild the wasi guest component cache.")
    parser.add_argument("--force", action="store_true", help="rebuild even when a valid cache entry exists")
    parser.add_argument("--print-path", action="store_true", help="print the cached artifact's path and exit")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.print_path:
        print(cache_entry().artifact)
        return 0
    try:
        entry, seconds = prepare(force=args.force, quiet=args.quiet)
    except WasiBuildError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"sandbox: wasi guest ready ({entry.artifact}, {seconds:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
