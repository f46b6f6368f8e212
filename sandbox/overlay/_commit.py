"""One `Overlay.apply`, all or nothing: stage temporary files, swap them in by rename, undo
everything on failure.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.errors import OverlayConflict
from sandbox.results import FileChange

if TYPE_CHECKING:
    from sandbox.overlay._mounts import Overlay


def file_changes(changes: Iterable[FileChange]) -> list[FileChange]:
    items = list(changes)
    for change in items:
        if not isinstance(change, FileChange):
            raise TypeError(f"apply() takes FileChange items (result.changes), not {type(change).__name__}")
    return items


class Commit:
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
