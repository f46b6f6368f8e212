"""`Overlay`: host directories mounted read-only. It resolves and confines guest paths, reads
host files safely (``lstat`` first, ``O_NOFOLLOW``, the same file once open) and plans
`Overlay.apply`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.capabilities import Capability, capability
from sandbox.errors import ConfigurationError, OverlayConflict
from sandbox.overlay._commit import Commit, file_changes
from sandbox.results import FileChange

if TYPE_CHECKING:
    from sandbox.overlay._layer import OverlayLayer


_MAX_PATH = 1024
_MAX_COMPONENT = 255


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class Denied(Exception):
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
        from sandbox.overlay._layer import OverlayLayer  # the layer module builds on this one

        return OverlayLayer(self)

    # -- paths --------------------------------------------------------------------------

    def resolve(self, guest_path: str, *, allow_root: bool = False) -> tuple[str, str, list[str]]:
        """(normalised guest path, mount name, components inside the mount); raises `Denied`."""
        if not isinstance(guest_path, str):
            raise Denied("a path must be a str")
        if len(guest_path) > _MAX_PATH:
            raise Denied(f"path longer than {_MAX_PATH} characters")
        if "\x00" in guest_path:
            raise Denied("path contains a NUL character")
        if any(ord(ch) < 32 for ch in guest_path):
            raise Denied("path contains a control character")
        if "\\" in guest_path:
            raise Denied(f"path {guest_path!r} contains a backslash")
        if guest_path.startswith("/") or guest_path.startswith("~"):
            raise Denied(f"path {guest_path!r} is absolute: use a path relative to the mount")
        parts = [p for p in guest_path.split("/") if p != ""]
        for part in parts:
            if part in (".", ".."):
                raise Denied(f"path {guest_path!r} has a {part!r} component")
            if len(part) > _MAX_COMPONENT:
                raise Denied("a path component is longer than 255 characters")
        if "" in self.mounts:
            mount, inner = "", parts
        elif not parts:
            if allow_root:
                return "", "", []
            raise Denied("empty path")
        else:
            mount, inner = parts[0], parts[1:]
            if mount not in self.mounts:
                raise Denied(f"no mount named {mount!r} (mounts: {', '.join(sorted(self.mounts))})")
        if not inner and not allow_root:
            raise Denied(f"path {guest_path!r} names a mount, not a file")
        return "/".join(parts), mount, inner

    def host_path(self, mount: str, inner: list[str]) -> Path:
        """The host path for ``inner`` in ``mount``, checked to stay inside it through symlinks."""
        root = self.mounts[mount]
        candidate = root.joinpath(*inner)
        real = Path(os.path.realpath(candidate))
        if real != root and root not in real.parents:
            raise Denied(f"path {'/'.join(inner)!r} leads outside its mount (symlink)")
        return real

    def read_host(self, mount: str, inner: list[str]) -> bytes | None:
        """The host file's bytes (None when it does not exist).

        Refuses (`Denied`) escapes and anything but a regular file, checked with ``lstat``
        before opening, so a named pipe or device is never opened; the open is non-blocking and
        must find the same file the ``lstat`` saw.
        """
        path = self.host_path(mount, inner)
        try:
            seen = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Denied(f"cannot read {'/'.join(inner)!r}: {exc.strerror}") from None
        if not stat.S_ISREG(seen.st_mode):
            raise Denied(f"{'/'.join(inner)!r} is not a regular file")
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Denied(f"cannot open {'/'.join(inner)!r}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (seen.st_dev, seen.st_ino):
                raise Denied(f"{'/'.join(inner)!r} is not a regular file")
            if info.st_size > self.max_read_bytes:
                raise Denied(f"{'/'.join(inner)!r} is larger than the read limit ({self.max_read_bytes} bytes)")
            chunks, total = [], 0
            while chunk := os.read(fd, 1 << 20):
                total += len(chunk)
                if total > self.max_read_bytes:
                    raise Denied(f"{'/'.join(inner)!r} is larger than the read limit ({self.max_read_bytes} bytes)")
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
        plan = [self._plan(change) for change in file_changes(changes)]
        paths = sorted(change.path for change, _path, _data in plan)
        for first, second in zip(paths, paths[1:]):
            if second == first or second.startswith(first + "/"):
                raise OverlayConflict(f"{second}: conflicts with {first} in the same set of changes")
        return Commit(self).run(plan)

    def _plan(self, change: FileChange) -> tuple[FileChange, Path, bytes | None]:
        """Check one change against the host now; its target and encoded content (None: delete)."""
        try:
            _, mount, inner = self.resolve(change.path)
            path = self.host_path(mount, inner)
            current = self.read_host(mount, inner)
        except Denied as exc:
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


def _bad_component(name: str) -> bool:
    return name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or not name.strip()


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
