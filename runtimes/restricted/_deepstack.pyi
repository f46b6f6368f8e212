"""Type stub of the ``_deepstack`` C extension (``_deepstack.c``): runs a function on a deep
mmap'd stack of the calling thread."""

from collections.abc import Callable
from typing import Any

SUPPORTED: int
KEEP_BYTES: int

class StackUnavailable(OSError):
    """No deep stack could be set up; the function was not called."""

def run(function: Callable[[], Any], stack_bytes: int, /) -> Any: ...
def resident_bytes() -> int: ...
def stack_size() -> int: ...
