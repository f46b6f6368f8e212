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

from sandbox.errors import OverlayConflict
from sandbox.overlay._layer import OverlayLayer
from sandbox.overlay._mounts import Overlay

__all__ = ["Overlay", "OverlayConflict", "OverlayLayer"]
