"""`OverlayLayer`: one run's scratch layer. Writes and deletes land there under the overlay's
quotas, reads see them, and `OverlayLayer.changes` lists them with bounded diffs.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from sandbox.capabilities import Capability
from sandbox.overlay._mounts import Overlay, Denied
from sandbox.results import FileChange
from sandbox.runtime import CapabilityFault


_DELETED = object()


_DIFF_BYTES = 256 << 10  # either side of one file larger than this: summary, no diff
_DIFF_CELLS = 1_000_000  # line comparisons (before x after lines) difflib may do per run


class OverlayLayer:
    """One run's scratch layer over an `Overlay`. Thread-safe."""

    def __init__(self, overlay: Overlay) -> None:
        self.overlay = overlay
        self._files: dict[str, Any] = {}  # guest path -> bytes | _DELETED
        self._base: dict[str, bytes | None] = {}  # host content the run saw, per changed path
        self._lock = threading.Lock()

    def bind(self, templates: Mapping[str, Capability]) -> dict[str, Capability]:
        """Per-run copies of the overlay's capabilities, calling this layer."""
        funcs: dict[str, Callable[..., Any]] = {"files.read": self.read, "files.write": self.write, "files.delete": self.delete,
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
            except Denied as exc:
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
            except Denied as exc:
                raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
            if base is None:
                return False
        self._put(key, mount, inner, _DELETED)
        return True

    def list(self, path: str = "") -> list[str]:
        try:
            key, mount, inner = self.overlay.resolve(path, allow_root=True)
        except Denied as exc:
            raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
        names: set[str] = set()
        if "" not in self.overlay.mounts and not key:
            names = {f"{m}/" for m in self.overlay.mounts}
        else:
            try:
                directory = self.overlay.host_path(mount, inner)
            except Denied as exc:
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
        action: Literal["created", "modified", "deleted"]
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

    # -- internals (annotations say builtins.list: the method list() shadows it here) --------

    def _resolve(self, path: str) -> tuple[str, str, builtins.list[str]]:
        try:
            return self.overlay.resolve(path)
        except Denied as exc:
            raise CapabilityFault("PolicyDenied", f"files: {exc}") from None

    def _check_target(self, key: str, mount: str, inner: builtins.list[str]) -> None:
        try:
            path = self.overlay.host_path(mount, inner)
        except Denied as exc:
            raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
        if path.is_dir():
            raise CapabilityFault("CapabilityError", f"files: {key!r} is a directory")

    def _check_tree(self, key: str, mount: str, inner: builtins.list[str]) -> None:
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
            except Denied as exc:
                raise CapabilityFault("PolicyDenied", f"files: {exc}") from None
            if ancestor.exists() and not ancestor.is_dir():
                raise CapabilityFault("CapabilityError", f"files: {'/'.join(parts[: i + len(parts) - len(inner)])!r} is a file, not a directory")

    def _put(self, key: str, mount: str, inner: builtins.list[str], data: Any) -> None:
        with self._lock:
            if key not in self._base:
                try:
                    self._base[key] = self.overlay.read_host(mount, inner)
                except Denied as exc:
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
