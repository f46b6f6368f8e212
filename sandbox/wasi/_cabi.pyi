"""Type stub of the ``_cabi`` C extension (``_cabi.c``): the wasi guest's ``host.call`` import as a
C function that Wasmtime calls directly, and the call of its ``run`` export."""

from typing import Any, Callable

class LentText:
    """A host call's argument text, lent to its handler for the call's duration."""

    @property
    def size(self) -> int: ...
    def text(self) -> str: ...

def configure(vec_new: int | None, vec_delete: int | None, error_new: int | None, val_delete: int | None,
              func_call: int | None, set_fuel: int | None, set_epoch_deadline: int | None, val_size: int,
              of_offset: int, string_kind: int, bool_kind: int, list_kind: int, /) -> int: ...
def bind(handler: Callable[[int, str, LentText], str | int], max_name_bytes: int, /) -> tuple[Any, int]: ...
def call_run(func: int, context: int, code: str, options: int, inputs: str | int, handles: int, max_report: int,
             fuel: int, /) -> tuple[int, Any]: ...
