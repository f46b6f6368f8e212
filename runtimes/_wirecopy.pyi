"""Type stub of the ``_wirecopy`` C extension (``_wirecopy.c``): the fast path of
`runtimes.wire.plain`/`runtimes.wire.encode` for values of exact JSON types and tuples."""

from collections.abc import Callable
from typing import Any

UNHANDLED: object

def copy(value: Any, as_json: bool, handle_token: bool, max_bytes: int, max_nodes: int,
         check: Callable[[], object] | None, /) -> Any: ...
def configure(tag: str, secret_marker: str, tuple_name: str, v_key: str, max_depth: int, max_int_bits: int,
              check_every: int, tag_bytes: int, /) -> None: ...
def depth(value: Any, limit: int, /) -> int: ...
