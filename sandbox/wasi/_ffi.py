"""The only module that touches wasmtime-py's private C bindings (``wasmtime._ffi``) and the
private members of its objects (``_context``, ``_consume``, ``_from_ptr``, ``_func``).

Why they are used at all: wasmtime-py's public component API reflects over a function's type on
every call (about 200 µs per host call and 100 µs per export call), and it has no public way to
shadow a WASI import with a raw host function, to set fuel or the epoch deadline from inside a
host call (a `StoreContext`), or to register an epoch-deadline callback. Our host functions
and the ``run`` export have signatures fixed by the WIT world, so the driver lifts and lowers
their values directly with the C API's value layout (wasmtime's ``component/val.h``).

Why they are fenced here: these names can change in any wasmtime-py release without notice.
Keeping every use behind the small functions below means a wasmtime upgrade is checked and
fixed in one file; everything else in ``sandbox.wasi`` uses only this module and wasmtime's
public API. Every function here either works or raises `WasmtimeError`; none of them lets a
Python exception unwind into C (the trampolines that Wasmtime calls catch everything and turn
it into a trap with `trap`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from wasmtime import Store, StoreContext, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import ResourceAny, ResourceHost

_byref = ctypes.byref
_byte_vec = ffi.wasm_byte_vec_t
# the raw C functions behind wasmtime-py's one-line Python wrappers (same arguments)
_vec_new = getattr(ffi, "_wasm_byte_vec_new_uninitialized", ffi.wasm_byte_vec_new_uninitialized)
_vec_delete = getattr(ffi, "_wasm_byte_vec_delete", ffi.wasm_byte_vec_delete)
_string_at = ctypes.string_at
_memmove = ctypes.memmove

BOOL = ffi.WASMTIME_COMPONENT_BOOL
STRING = ffi.WASMTIME_COMPONENT_STRING
LIST = ffi.WASMTIME_COMPONENT_LIST
TUPLE = ffi.WASMTIME_COMPONENT_TUPLE
RESOURCE = ffi.WASMTIME_COMPONENT_RESOURCE
U64 = ffi.WASMTIME_COMPONENT_U64
_STRING_KIND = STRING.value
_U64_KIND = U64.value

host_function = ffi.wasmtime_component_func_callback_t
"""Decorator for a raw component host function:
``f(data, context, ty, args, nargs, results, nresults) -> 0 | trap pointer``."""

epoch_callback = ctypes.CFUNCTYPE(
    ctypes.c_size_t, ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
"""Decorator for an epoch-deadline callback: ``f(context, data, delta, kind) -> 0 | trap pointer``;
to continue, set ``delta[0]`` and ``kind[0] = EPOCH_CONTINUE`` and return 0."""
EPOCH_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _no_finalizer(data):
    return None


# -- errors and stores -----------------------------------------------------------------------


def trap(message: str) -> int:
    """A new error for a host function or callback to return: Wasmtime turns it into a trap."""
    return ctypes.cast(WasmtimeError(message)._consume(), ctypes.c_void_p).value or 0


def store_context(context: Any) -> StoreContext:
    """The store a raw host function was called with; `release` it before returning."""
    return StoreContext(context)


def release(store: "StoreContext | CallContext") -> None:
    """Invalidate ``store`` (the context pointer dies when the host function returns)."""
    store._invalidate()


_CONTEXT_P = ctypes.POINTER(ffi.wasmtime_context_t)


class CallContext:
    """The store context of a host call that Wasmtime made into C (`NativeHostFunction`), by
    address: what `set_fuel` and `expire_epoch` accept, at the cost of one object instead of a
    ctypes pointer unless they are used. Valid only until the call returns: `release` it then,
    and a later use raises `WasmtimeError` instead of reaching a dead context."""

    __slots__ = ("address",)

    def __init__(self, address: int) -> None:
        self.address: int | None = address

    def _context(self) -> Any:
        if not self.address:
            raise WasmtimeError("the host call this context belonged to has returned")
        return ctypes.cast(self.address, _CONTEXT_P)

    def _invalidate(self) -> None:
        self.address = None


class NativeHostFunction:
    """A host function written in C (`sandbox.wasi._cabi`), set up for this wasmtime-py's
    value layout and C API functions, with its ``handler``: define it with `add_function` and
    keep this object alive as long as the linker. Raises ValueError when the layout is not the
    one the C module was compiled for."""

    __slots__ = ("callback", "data", "_owner")

    def __init__(self, module: Any, handler: Callable[[int, str, Any], str | int], max_name_bytes: int) -> None:
        self.callback = host_function(configure_native(module))
        self._owner, self.data = module.bind(handler, max_name_bytes)


def configure_native(module: Any) -> int:
    """Give `sandbox.wasi._cabi` this wasmtime-py's value layout and C API functions (the same
    every time); returns its host function's address. Raises ValueError when the layout is not
    the one the C module was compiled for."""
    val = ffi.wasmtime_component_val_t
    return int(module.configure(
        *(ctypes.cast(getattr(ffi.dll, name), ctypes.c_void_p).value
          for name in ("wasm_byte_vec_new_uninitialized", "wasm_byte_vec_delete", "wasmtime_error_new",
                       "wasmtime_component_val_delete", "wasmtime_component_func_call", "wasmtime_context_set_fuel",
                       "wasmtime_context_set_epoch_deadline")),
        ctypes.sizeof(val), val.of.offset, _STRING_KIND, BOOL.value, LIST.value,
    ))


def native_run_arguments(store: Store, func: Any) -> tuple[int, int]:
    """The addresses `sandbox.wasi._cabi.call_run` takes for calling ``func`` in ``store``: valid
    while both are alive and the store is open (a closed store raises ValueError)."""
    return ctypes.addressof(func._func), ctypes.cast(store._context(), ctypes.c_void_p).value or 0


def start_native_ticker(module: Any, engine: Any, interval: float) -> None:
    """Configure `sandbox.wasi._ticker` to advance ``engine``'s epoch every ``interval`` seconds,
    through a clone of the engine that it keeps. RuntimeError when it serves an engine already."""
    clone = ffi.wasmtime_engine_clone(engine.ptr())
    try:
        module.configure(ctypes.cast(ffi.dll.wasmtime_engine_increment_epoch, ctypes.c_void_p).value,
                         ctypes.cast(clone, ctypes.c_void_p).value, max(1, round(interval * 1e9)))
    except BaseException:
        ffi.wasm_engine_delete(clone)  # never handed over
        raise


def error_at(address: int) -> WasmtimeError:
    """The `WasmtimeError` for an error pointer a native call returned (taking ownership of it)."""
    return WasmtimeError._from_ptr(ctypes.cast(address, ctypes.POINTER(ffi.wasmtime_error_t)))


def set_fuel(store: Store | StoreContext, fuel: int) -> None:
    """Set the fuel left to the store, also from inside a host call."""
    error = ffi.wasmtime_context_set_fuel(store._context(), fuel)
    if error:
        raise WasmtimeError._from_ptr(error)


def expire_epoch(store: Any) -> None:
    """Make the guest reach its epoch deadline at its next check (from inside a host call)."""
    ffi.wasmtime_context_set_epoch_deadline(store._context(), 0)


def on_epoch_deadline(store: Store, callback: Any) -> None:
    """Call ``callback`` (an `epoch_callback`) instead of trapping when ``store``'s deadline passes."""
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), callback, None, _no_finalizer)


def add_function(instance: Any, name: str, callback: Any) -> None:
    """Define ``name`` in a linker instance as the raw host function ``callback`` or the
    `NativeHostFunction` (which the caller keeps alive for as long as the linker lives)."""
    raw = name.encode()
    data = None
    if isinstance(callback, NativeHostFunction):
        callback, data = callback.callback, callback.data
    error = ffi.wasmtime_component_linker_instance_add_func(
        instance.ptr(), ctypes.create_string_buffer(raw), len(raw), callback, data, _no_finalizer
    )
    if error:
        raise WasmtimeError._from_ptr(error)


# -- values ----------------------------------------------------------------------------------


def string_size(val: Any) -> int:
    """Bytes in the string value ``val`` (read without decoding it)."""
    return int(val.of.string.size)


def take_string(val: Any, max_bytes: int | None = None) -> str:
    """Decode the string value ``val`` and free it (``val`` becomes a plain bool). With
    ``max_bytes``, only that many leading bytes are decoded (a character they cut is dropped)."""
    vec = val.of.string
    size = vec.size
    if max_bytes is not None and size > max_bytes:
        text = _string_at(vec.data, max(0, max_bytes)).decode("utf-8", "ignore")
    else:
        text = _string_at(vec.data, size).decode("utf-8")
    _vec_delete(_byref(vec))
    val.kind = BOOL
    val.of.boolean = False
    return text


def drop_string(val: Any) -> None:
    """Free the string value ``val`` unread."""
    ffi.wasm_byte_vec_delete(_byref(val.of.string))
    val.kind = BOOL
    val.of.boolean = False


def put_string(val: Any, text: str) -> None:
    data = text.encode("utf-8")
    vec = _byte_vec()
    _vec_new(_byref(vec), len(data))
    _memmove(vec.data, data, len(data))
    val.kind = STRING
    val.of.string = vec


class StaticString:
    """A string value whose bytes Python owns, for arguments sent unchanged to many calls (a
    call's arguments are only read: Wasmtime copies them before the guest runs). Placed with
    `put_static`; never freed with `delete_value`."""

    __slots__ = ("text", "_buffer", "_vec", "address")

    def __init__(self, text: str) -> None:
        data = text.encode("utf-8")
        self.text = text
        self._buffer = ctypes.create_string_buffer(data, len(data) or 1)
        self._vec = ffi.wasm_byte_vec_t(len(data), ctypes.cast(self._buffer, ctypes.POINTER(ffi.wasm_byte_t)))
        self.address = ctypes.addressof(self._vec)
        """Where its payload (size, then data) is, for `sandbox.wasi._cabi.call_run` to lend."""


def put_static(val: Any, text: StaticString) -> None:
    """Make ``val`` the string ``text`` (borrowed: ``val`` keeps ``text``'s buffer alive)."""
    val.kind = STRING
    val.of.string = text._vec


_EMPTY_LIST = ffi.wasmtime_component_vallist_t()
ffi.wasmtime_component_vallist_new_uninit(_EMPTY_LIST, 0)  # made once, never freed
EMPTY_LIST_ADDRESS = ctypes.addressof(_EMPTY_LIST)
"""Where the empty list's payload is, for `sandbox.wasi._cabi.call_run` to lend."""


def put_empty_list(val: Any) -> None:
    """Make ``val`` an empty list (borrowed, like `put_static`: never freed with `delete_value`)."""
    val.kind = LIST
    val.of.list = _EMPTY_LIST


def get_bool(val: Any) -> bool:
    return bool(val.of.boolean)


def get_u64(val: Any) -> int | None:
    """The value of a ``u64`` argument, or None when ``val`` is not one."""
    return int(val.of.u64) if val.kind == _U64_KIND else None


def put_u64(val: Any, value: int) -> None:
    val.kind = U64
    val.of.u64 = value


def take_resources(val: Any) -> list[ResourceAny]:
    """Take ownership of the resources in the list value ``val`` and free the list."""
    lst = val.of.list
    handles = []
    for i in range(lst.size):
        element = lst.data[i]
        handles.append(ResourceAny._from_ptr(ffi.take_pointer(element.of, "resource")))
        element.kind = BOOL
        element.of.boolean = False
    ffi.wasmtime_component_vallist_delete(_byref(lst))
    val.kind = BOOL
    return handles


def put_resources(store: Any, val: Any, handles: list[ResourceHost]) -> None:
    """Make ``val`` a list of the host resources ``handles`` (moved into the guest)."""
    lst = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(lst, len(handles))
    for i, handle in enumerate(handles):
        lst.data[i].kind = RESOURCE
        lst.data[i].of.resource = handle.to_any(store)._consume()
    val.kind = LIST
    val.of.list = lst


def put_tuple(val: Any, fill: Callable[[Any], None], size: int) -> None:
    """Make ``val`` a tuple of ``size`` values, filled in by ``fill(data)``."""
    tup = ffi.wasmtime_component_valtuple_t()
    ffi.wasmtime_component_valtuple_new_uninit(tup, size)
    fill(tup.data)
    val.kind = TUPLE
    val.of.tuple = tup


def put_bool(val: Any, value: bool) -> None:
    val.kind = BOOL
    val.of.boolean = bool(value)


def new_values(count: int) -> Any:
    """An array of ``count`` component values, for `call`; free each with `delete_value`."""
    return (ffi.wasmtime_component_val_t * count)()


def new_value() -> Any:
    return ffi.wasmtime_component_val_t()


def delete_value(val: Any) -> None:
    ffi.wasmtime_component_val_delete(_byref(val))


def is_string(val: Any) -> bool:
    return bool(val.kind == _STRING_KIND)


_func_call = getattr(ffi, "_wasmtime_component_func_call", ffi.wasmtime_component_func_call)


def call(store: Store, func: Any, params: Any, count: int, result: Any) -> None:
    """Call the component function ``func`` with ``count`` params (only read) and one result.

    Raises `WasmtimeError` when the guest traps."""
    error = _func_call(_byref(func._func), store._context(), params, count, _byref(result), 1)
    if error:
        raise WasmtimeError._from_ptr(error)
