"""A reviewable file overlay: the guest reads host directories and writes to a scratch layer.

    from sandbox import Sandbox
    from sandbox.overlay import Overlay

    with Sandbox(files=Overlay({"data": "/srv/data", "reports": "/srv/reports"})) as sb:
        result = sb.run("files.write('reports/q3.csv', 'a,b\\n1,2\\n')")
        for change in result.changes:
            print(change.diff)            # review ...
        sb.apply(result.changes)          # ... then commit to /srv/reports

The guest gets ``files.read(path) -> str``, ``files.write(path, text) -> int`` (characters
written), ``files.delete(path) -> bool`` and ``files.list(path="") -> list[str]`` (names in a
directory, sub-directories with a trailing ``/``). Text only (UTF-8); the wire carries JSON.

- **Mounts**: ``Overlay(path)`` mounts one directory at the root (guest paths are relative to
  it); ``Overlay({"name": path, ...})`` mounts several, the first path component naming the
  mount. Host directories are only ever *read* during a run.
- **Scratch layer**: each run starts with an empty layer (session runs too); writes and
  deletes land there, and reads see them. After the run `RunResult.changes` lists every
  created, modified and deleted file with a unified diff and the new content; nothing reaches
  the host until `Sandbox.apply(changes)`, which re-checks every path and refuses the whole set
  (`OverlayConflict`) if a host file changed since the run read it.
- **Confinement**: a path that is absolute, has a ``..`` or ``.`` component, a backslash, a NUL
  or another control character, or that resolves (through symlinks) outside its mount is
  refused with ``PolicyDenied``. A host file is ``lstat``-ed before it is opened and must be a
  regular file (a named pipe, socket or device is refused, never opened); it is opened with
  ``O_NOFOLLOW | O_NONBLOCK`` and must still be the same file once open. `apply` applies the
  same checks to the host paths it writes.
- **Apply is all or nothing**: every change is checked and encoded first (confinement, the
  host file unchanged since the run, content that is UTF-8 text matching its
  ``after_sha256``); then new contents go to temporary files, and each target is swapped in
  by rename, the file it replaces kept aside; if any step fails, every file already swapped is
  put back and `OverlayConflict` (or the `OSError`) is raised.
- **Diffs** cost time linear in what the run wrote: a file whose diff would be too costly
  (over ``_DIFF_BYTES`` on either side, or past the run's ``_DIFF_CELLS`` budget of
  line comparisons) gets a one-line summary instead. With secrets configured, diffs and
  contents in `RunResult.changes` are redacted; a change whose content held a secret value no
  longer matches its ``after_sha256``, so `apply` refuses it rather than write the marker.
- **Quotas**: ``max_files`` files in the layer (created, modified or deleted) and
  ``max_write_bytes`` bytes of content held in it (UTF-8); ``max_read_bytes`` per file read.
  Going over raises ``PolicyDenied`` in the guest and leaves the layer as it was.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sandbox.capabilities import Capability, capability
from sandbox.errors import ConfigurationError, OverlayConflict
from sandbox.results import FileChange
from sandbox.runtime import CapabilityFault

_DELETED = object()
_MAX_PATH = 1024
_MAX_COMPONENT = 255
_DIFF_BYTES = 256 << 10  # either side of one file larger than this: summary, no diff
_DIFF_CELLS = 1_000_000  # line comparisons (before x after lines) difflib may do per run
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class _Denied(Exception):
    pass


class Overlay:
    """Host directories mounted read-only, with a per-run scratch layer for writes.

    Args:
        mounts: one directory (mounted at the root) or ``{name: directory}``; every directory
            must exist. Names are single path components.
        max_write_bytes: bytes of content the layer may hold (default 16 MiB).
        max_files: files the layer may hold: created, modified or deleted (default 100).
        max_read_bytes: largest file the guest may read (default 16 MiB).
    """

    def __init__(
        self,
        mounts: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
        *,
        max_write_bytes: int = 16 << 20,
        max_files: int = 100,
        max_read_bytes: int = 16 << 20,
    ) -> None:
        if isinstance(mounts, (str, os.PathLike)):
            items: Iterable[tuple[str, Any]] = [("", mounts)]
        elif isinstance(mounts, Mapping) and mounts:
            items = mounts.items()
        else:
            raise ConfigurationError("mounts must be a directory or a non-empty {name: directory} mapping")
        self.mounts: dict[str, Path] = {}
        for name, directory in items:
            if name and (not isinstance(name, str) or _bad_component(name)):
                raise ConfigurationError(f"mount name {name!r} must be a single plain path component")
            root = Path(directory)
            if not root.is_dir():
                raise ConfigurationError(f"mount {name or '/'!r}: {str(root)!r} is not an existing directory")
            self.mounts[name] = Path(os.path.realpath(root))
        for label, value in (("max_write_bytes", max_write_bytes), ("max_files", max_files),
                             ("max_read_bytes", max_read_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{label} must be an int >= 1, got {value!r}")
        self.max_write_bytes, self.max_files, self.max_read_bytes = max_write_bytes, max_files, max_read_bytes
        self.capabilities: list[Capability] = _templates()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name or '/'}={path}" for name, path in self.mounts.items())
        return f"<Overlay {shown}>"

    def layer(self) -> OverlayLayer:
        """A fresh scratch layer for one run."""
        return OverlayLayer(self)

    # -- paths --------------------------------------------------------------------------

    def resolve(self, guest_path: str, *, allow_root: bool = False) -> tuple[str, str, list[str]]:
        """(normalised guest path, mount name, components inside the mount); raises `_Denied`."""
        if not isinstance(guest_path, str):
            raise _Denied("a path must be a str")
        if len(guest_path) > _MAX_PATH:
            raise _Denied(f"path longer than {_MAX_PATH} characters")
        if "\x00" in guest_path:
            raise _Denied("path contains a NUL character")
        if any(ord(ch) < 32 for ch in guest_path):
            raise _Denied("path contains a control character")
        if "\\" in guest_path:
            raise _Denied(f"path {guest_path!r} contains a backslash")
        if guest_path.startswith("/") or guest_path.startswith("~"):
            raise _Denied(f"path {guest_path!r} is absolute: use a path relative to the mount")
        parts = [p for p in guest_path.split("/") if p != ""]
        for part in parts:
            if part in (".", ".."):
                raise _Denied(f"path {guest_path!r} has a {part!r} component")
            if len(part) > _MAX_COMPONENT:
                raise _Denied("a path component is longer than 255 characters")
        if "" in self.mounts:
            mount, inner = "", parts
        elif not parts:
            if allow_root:
                return "", "", []
            raise _Denied("empty path")
        else:
            mount, inner = parts[0], parts[1:]
            if mount not in self.mounts:
                raise _Denied(f"no mount named {mount!r} (mounts: {', '.join(sorted(self.mounts))})")
        if not inner and not allow_root:
            raise _Denied(f"path {guest_path!r} names a mount, not a file")
        return "/".join(parts), mount, inner

    def host_path(self, mount: str, inner: list[str]) -> Path:
        """The host path for ``inner`` in ``mount``, checked to stay inside it through symlinks."""
        root = self.mounts[mount]
        candidate = root.joinpath(*inner)
        real = Path(os.path.realpath(candidate))
        if real != root and root not in real.parents:
            raise _Denied(f"path {'/'.join(inner)!r} leads outside its mount (symlink)")
        return real

    def read_host(self, mount: str, inner: list[str]) -> bytes | None:
        """The host file's bytes (None when it does not exist).

        Refuses (`_Denied`) escapes and anything but a regular file, checked with ``lstat``
        before opening, so a named pipe or device is never opened; the open is non-blocking and
        must find the same file the ``lstat`` saw.
        """
        path = self.host_path(mount, inner)
        try:
            seen = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _Denied(f"cannot read {'/'.join(inner)!r}: {exc.strerror}") from None
        if not stat.S_ISREG(seen.st_mode):
            raise _Denied(f"{'/'.join(inner)!r} is not a regular file")
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _Denied(f"cannot open {'/'.join(inner)!r}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (seen.st_dev, seen.st_ino):
                raise _Denied(f"{'/'.join(inner)!r} is not a regular file")
            if info.st_size > self.max_read_bytes:
                raise _Denied(f"{'/'.join(inner)!r} is larger than the read limit ({self.max_read_bytes} bytes)")
            chunks, total = [], 0
            while chunk := os.read(fd, 1 << 20):
                total += len(chunk)
                if total > self.max_read_bytes:
                    raise _Denied(f"{'/'.join(inner)!r} is larger than the read limit ({self.max_read_bytes} bytes)")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    # -- commit -------------------------------------------------------------------------

    def apply(self, changes: Iterable[FileChange]) -> list[str]:
        """Commit ``changes`` to the host directories; returns the guest paths written or deleted.

        All or nothing. Every change is checked and encoded first (confinement, the host file
        still has the content the run saw, the content is UTF-8 text and matches its
        ``after_sha256``); on any problem `OverlayConflict` is raised and nothing is written.
        Then each new content goes to a temporary file beside its target, and targets are
        swapped in by rename (missing parent directories are created), the replaced files kept
        aside until every change is in place. If a step fails, the files already swapped are
        restored, created directories removed, and the error raised.
        """
        plan = [self._plan(change) for change in _file_changes(changes)]
        paths = sorted(change.path for change, _path, _data in plan)
        for first, second in zip(paths, paths[1:]):
            if second == first or second.startswith(first + "/"):
                raise OverlayConflict(f"{second}: conflicts with {first} in the same set of changes")
        return _Commit(self).run(plan)

    def _plan(self, change: FileChange) -> tuple[FileChange, Path, bytes | None]:
        """Check one change against the host now; its target and encoded content (None: delete)."""
        try:
            _, mount, inner = self.resolve(change.path)
            path = self.host_path(mount, inner)
            current = self.read_host(mount, inner)
        except _Denied as exc:
            raise OverlayConflict(f"{change.path}: {exc}") from None
        current_hash = hashlib.sha256(current).hexdigest() if current is not None else None
        if current_hash != change.before_sha256:
            raise OverlayConflict(f"{change.path}: the host file changed since the run; nothing was applied")
        if change.action == "deleted":
            return change, path, None
        if change.content is None:
            raise OverlayConflict(f"{change.path}: a {change.action} change needs its content")
        try:
            data = change.content.encode("utf-8")
        except UnicodeEncodeError:
            raise OverlayConflict(f"{change.path}: the content is not valid Unicode text; nothing was applied") from None
        if change.after_sha256 is not None and hashlib.sha256(data).hexdigest() != change.after_sha256:
            raise OverlayConflict(f"{change.path}: the content does not match after_sha256 (it was edited or "
                                  "redacted because it holds a secret value); nothing was applied")
        if path.is_dir():
            raise OverlayConflict(f"{change.path}: is a directory on the host")
        for ancestor in path.parents:
            if ancestor == self.mounts[mount]:
                break
            if ancestor.exists() and not ancestor.is_dir():
                raise OverlayConflict(f"{change.path}: {ancestor.name!r} is a file on the host")
        return change, path, data


def _file_changes(changes: Iterable[FileChange]) -> list[FileChange]:
    items = list(changes)
    for change in items:
        if not isinstance(change, FileChange):
            raise TypeError(f"apply() takes FileChange items (result.changes), not {type(change).__name__}")
    return items


class _Commit:
    """One `Overlay.apply`: stage temporary files, swap them in, undo everything on failure."""

    def __init__(self, overlay: Overlay) -> None:
        self.overlay = overlay
        self.made_dirs: list[Path] = []
        self.staged: list[Path] = []  # temporary files not yet renamed into place
        self.undo: list[tuple[Path, Path | None]] = []  # (target, file kept aside or None: remove target)

    def run(self, plan: list[tuple[FileChange, Path, bytes | None]]) -> list[str]:
        try:
            steps = [(change, path, self._stage(change, path, data)) for change, path, data in plan]
            for change, path, tmp in steps:
                self._swap(change, path, tmp)
        except BaseException:
            self._rollback()
            raise
        for _target, kept in self.undo:
            if kept is not None:
                _quiet_unlink(kept)
        return [change.path for change, _path, _tmp in steps]

    def _stage(self, change: FileChange, path: Path, data: bytes | None) -> Path | None:
        if data is None:
            return None
        root = self.overlay.mounts[self.overlay.resolve(change.path)[1]]
        missing = [p for p in reversed(path.parents) if root in p.parents and not p.exists()]
        for directory in missing:
            directory.mkdir()
            self.made_dirs.append(directory)
        parent = Path(os.path.realpath(path.parent))
        if parent != root and root not in parent.parents:
            raise OverlayConflict(f"{change.path}: parent directory leads outside its mount")
        fd, name = tempfile.mkstemp(dir=parent, prefix=".overlay-")
        tmp = Path(name)
        self.staged.append(tmp)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(os.lstat(path).st_mode))
        return tmp

    def _swap(self, change: FileChange, path: Path, tmp: Path | None) -> None:
        kept: Path | None = None
        if os.path.lexists(path):
            kept = path.parent / f".overlay-old-{os.urandom(8).hex()}"
            os.rename(path, kept)
        self.undo.append((path, kept))
        if tmp is not None:
            os.rename(tmp, path)
            self.staged.remove(tmp)

    def _rollback(self) -> None:
        for target, kept in reversed(self.undo):
            try:
                if kept is not None:
                    os.replace(kept, target)
                else:
                    _quiet_unlink(target)
            except OSError:
                pass
        for tmp in self.staged:
            _quiet_unlink(tmp)
        for directory in reversed(self.made_dirs):
            try:
                directory.rmdir()
            except OSError:
                pass


def _quiet_unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class OverlayLayer:
    """One run's scratch layer over an `Overlay`. Thread-safe."""

    def __init__(self, overlay: Overlay) -> None:
        self.overlay = overlay
        self._files: dict[str, Any] = {}  # guest path -> bytes | _DELETED
        self._base: dict[str, bytes | None] = {}  # host content the run saw, per changed path
        self._lock = threading.Lock()

    def bind(self, templates: Mapping[str, Capability]) -> dict[str, Capability]:
        """Per-run copies of the overlay's capabilities, calling this layer."""
        funcs = {"files.read": self.read, "files.write": self.write, "files.delete": self.delete,
                 "files.list": self.list}
        bound = {}
        for name, template in templates.items():
            cap = object.__new__(Capability)
            cap.__dict__.update(template.__dict__)
            cap.func = funcs[name]
            bound[name] = cap
        return bound

    def read(self, path: str) -> str:
        key, mount, inner = self._resolve(path)
        with self._lock:
            data = self._files.get(key)
        if data is _DELETED:
            raise CapabilityFault("CapabilityError", f"files.read(): {key!r} does not exist (deleted in this run)")
        if data is None:
            try:
                data = self.overlay.read_host(mount, inner)
            except _Denied as exc:
                raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
            if data is None:
                raise CapabilityFault("CapabilityError", f"files.read(): {key!r} does not exist")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise CapabilityFault("CapabilityError", f"files.read(): {key!r} is not UTF-8 text") from None

    def write(self, path: str, text: str) -> int:
        key, mount, inner = self._resolve(path)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise CapabilityFault("ValueError", "files.write(): the text is not valid Unicode (a lone surrogate); "
                                  "only text that can be stored as UTF-8 may be written") from None
        self._check_target(key, mount, inner)
        self._check_tree(key, mount, inner)
        self._put(key, mount, inner, data)
        return len(text)

    def delete(self, path: str) -> bool:
        """Delete a file; False when it did not exist."""
        key, mount, inner = self._resolve(path)
        self._check_target(key, mount, inner)
        with self._lock:
            current = self._files.get(key)
        if current is _DELETED:
            return False
        if current is None:
            try:
                base = self.overlay.read_host(mount, inner)
            except _Denied as exc:
                raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
            if base is None:
                return False
        self._put(key, mount, inner, _DELETED)
        return True

    def list(self, path: str = "") -> list[str]:
        try:
            key, mount, inner = self.overlay.resolve(path, allow_root=True)
        except _Denied as exc:
            raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
        names: set[str] = set()
        if "" not in self.overlay.mounts and not key:
            names = {f"{m}/" for m in self.overlay.mounts}
        else:
            try:
                directory = self.overlay.host_path(mount, inner)
            except _Denied as exc:
                raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
            root = self.overlay.mounts[mount]
            if directory.is_dir():
                for entry in os.scandir(directory):
                    real = Path(os.path.realpath(entry.path))
                    if real != root and root not in real.parents:
                        continue  # a symlink out of the mount: not shown
                    names.add(entry.name + ("/" if real.is_dir() else ""))
        prefix = key + "/" if key else ""
        with self._lock:
            layer = dict(self._files)
        for changed, data in layer.items():
            if not changed.startswith(prefix):
                continue
            rest = changed[len(prefix):]
            head, sep, _ = rest.partition("/")
            if sep:
                names.add(head + "/")
            elif data is _DELETED:
                names.discard(head)
            else:
                names.add(head)
        return sorted(names)

    def changes(self, redact: Callable[[str], str] | None = None) -> tuple[FileChange, ...]:
        """What this run created, modified and deleted (unchanged rewrites are left out).

        Time is linear in the layer's size: diffs past the size and comparison budgets are
        summaries. ``redact`` (the run's secret redactor) is applied to every diff and content.
        """
        with self._lock:
            files = dict(self._files)
            base = dict(self._base)
        clean = redact or _same
        budget = [_DIFF_CELLS]
        out = []
        for key in sorted(files):
            new, old = files[key], base.get(key)
            if new is _DELETED:
                if old is None:
                    continue
                action, after, content = "deleted", None, None
            else:
                if old == new:
                    continue
                action = "created" if old is None else "modified"
                after, content = hashlib.sha256(new).hexdigest(), clean(new.decode("utf-8"))
            out.append(FileChange(
                path=key, action=action, diff=clean(_diff(key, old, None if new is _DELETED else new, budget)),
                before_sha256=hashlib.sha256(old).hexdigest() if old is not None else None,
                after_sha256=after, content=content,
            ))
        return tuple(out)

    # -- internals ----------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[str, str, list[str]]:
        try:
            return self.overlay.resolve(path)
        except _Denied as exc:
            raise CapabilityFault("PolicyDenied", f"files: {exc}") from None

    def _check_target(self, key: str, mount: str, inner: list[str]) -> None:
        try:
            path = self.overlay.host_path(mount, inner)
        except _Denied as exc:
            raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
        if path.is_dir():
            raise CapabilityFault("CapabilityError", f"files: {key!r} is a directory")

    def _check_tree(self, key: str, mount: str, inner: list[str]) -> None:
        """A new file must not sit under a file, nor replace a directory (host or layer)."""
        with self._lock:
            live = {k for k, v in self._files.items() if v is not _DELETED}
        parts = key.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in live:
                raise CapabilityFault("CapabilityError", f"files: {'/'.join(parts[:i])!r} is a file, not a directory")
        if any(k.startswith(key + "/") for k in live):
            raise CapabilityFault("CapabilityError", f"files: {key!r} is a directory")
        for i in range(1, len(inner)):
            try:
                ancestor = self.overlay.host_path(mount, inner[:i])
            except _Denied as exc:
                raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
            if ancestor.exists() and not ancestor.is_dir():
                raise CapabilityFault("CapabilityError", f"files: {'/'.join(parts[: i + len(parts) - len(inner)])!r} is a file, not a directory")

    def _put(self, key: str, mount: str, inner: list[str], data: Any) -> None:
        with self._lock:
            if key not in self._base:
                try:
                    self._base[key] = self.overlay.read_host(mount, inner)
                except _Denied as exc:
                    raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
            files = dict(self._files)
            files[key] = data
            if len(files) > self.overlay.max_files:
                raise CapabilityFault("PolicyDenied",
                                      f"files: quota: at most {self.overlay.max_files} files may be written per run")
            held = sum(len(v) for v in files.values() if v is not _DELETED)
            if held > self.overlay.max_write_bytes:
                raise CapabilityFault("PolicyDenied",
                                      f"files: quota: at most {self.overlay.max_write_bytes} bytes may be written per run")
            self._files = files


def _bad_component(name: str) -> bool:
    return name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or not name.strip()


def _same(text: str) -> str:
    return text


def _diff(path: str, old: bytes | None, new: bytes | None, budget: list[int]) -> str:
    """A unified diff, or a one-line summary when it would cost more than the file size cap or
    the ``budget`` of line comparisons left for the run (the budget is spent here)."""
    try:
        before = old.decode("utf-8").splitlines(keepends=True) if old is not None else []
    except UnicodeDecodeError:
        return f"Binary files a/{path} and b/{path} differ\n"
    after = new.decode("utf-8").splitlines(keepends=True) if new is not None else []
    cells = len(before) * len(after)
    if max(len(old or b""), len(new or b"")) > _DIFF_BYTES or cells > budget[0]:
        return (f"Diff of {path} omitted (before: {len(before)} lines, {len(old or b'')} bytes; after: "
                f"{len(after)} lines, {len(new or b'')} bytes): over the diff size limit\n")
    budget[0] -= cells
    lines = difflib.unified_diff(before, after, "/dev/null" if old is None else f"a/{path}",
                                 "/dev/null" if new is None else f"b/{path}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def _templates() -> list[Capability]:
    def read(path: str) -> str:
        raise NotImplementedError

    def write(path: str, text: str) -> int:
        raise NotImplementedError

    def delete(path: str) -> bool:
        raise NotImplementedError

    def list_(path: str = "") -> list[str]:
        raise NotImplementedError

    return [
        capability(name="files.read", description="Read a text file (UTF-8) from the mounted directories.")(read),
        capability(name="files.write", description=(
            "Write a text file. Writes go to a scratch layer the host reviews as a diff before "
            "applying; returns the characters written.")) (write),
        capability(name="files.delete", description="Delete a file (in the scratch layer); False if it did not exist.")(delete),
        capability(name="files.list", description=(
            "Names in a directory ('' for the top); sub-directories end with '/'."))(list_),
    ]
