"""Type stub of the ``_hostcall`` C extension (``_hostcall.c``): the wasi guest's ``host.call``
import as a C function that Wasmtime calls directly."""

from typing import Any, Callable

class LentText:
    """A host call's argument text, lent to its handler for the call's duration."""

    @property
    def size(self) -> int: ...
    def text(self) -> str: ...

def configure(vec_new: int | None, vec_delete: int | None, error_new: int | None, val_size: int, of_offset: int,
              string_kind: int, bool_kind: int, /) -> int: ...
def bind(handler: Callable[[int, str, LentText], str | int], max_name_bytes: int, /) -> tuple[Any, int]: ...
