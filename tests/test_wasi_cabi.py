"""The C side of the wasi guest's calls (`sandbox.wasi._cabi`). Its ``host.call`` trampoline,
called here the way Wasmtime calls it: component values in, a string value or a trap out, no
Python exception through C, and argument text that a handler cannot read after the call
returned. Its ``run`` export call is what every wasi run in the other tests goes through."""

from __future__ import annotations

import ctypes
import json
from typing import Any

import pytest

from sandbox.wasi import _ffi

_cabi = pytest.importorskip("sandbox.wasi._cabi", reason="the C extension is not built")
from wasmtime import WasmtimeError, _ffi as wffi  # noqa: E402


def _call(handler: Any, name: bytes | str, args: str, *, max_name: int = 64) -> tuple[int, Any, Any]:
    """Call the trampoline with ``handler``: (trap address or 0, the args values, the result value)."""
    function = _ffi.NativeHostFunction(_cabi, handler, max_name)
    values = _ffi.new_values(2)
    raw = name if isinstance(name, bytes) else name.encode()
    vec = wffi.wasm_byte_vec_t()
    wffi.wasm_byte_vec_new(vec, len(raw), ctypes.cast(ctypes.create_string_buffer(raw, len(raw) or 1),
                                                      ctypes.POINTER(wffi.wasm_byte_t)))
    values[0].kind = _ffi.STRING
    values[0].of.string = vec
    _ffi.put_string(values[1], args)
    result = _ffi.new_values(1)
    trap = function.callback(function.data, None, None, values, 2, result, 1)
    return trap or 0, values, result


def _trap_message(address: int) -> str:
    return str(WasmtimeError._from_ptr(ctypes.cast(address, ctypes.POINTER(wffi.wasmtime_error_t))))


def _arguments_freed(values: Any) -> bool:
    return all(values[i].kind == _ffi.BOOL.value for i in range(2))


def test_the_handler_gets_the_context_name_and_lent_text_and_its_text_is_the_result():
    seen = []

    def handler(context, name, args):
        seen.append((context, name, args.size, args.text()))
        return "[1,2]"

    trap, values, result = _call(handler, "echo", '[["é"],{}]')
    assert trap == 0 and seen == [(0, "echo", len('[["é"],{}]'.encode()), '[["é"],{}]')]
    assert _ffi.is_string(result[0]) and _ffi.take_string(result[0]) == "[1,2]"
    assert _arguments_freed(values)


def test_a_name_is_decoded_within_its_cap_and_a_character_cut_there_is_dropped():
    names = []
    _call(lambda context, name, args: names.append(name) or "0", "ab" + "é" * 10, "[]", max_name=5)
    assert names == ["abé"]  # 5 bytes: a, b, é (2 bytes), half an é


def test_lent_text_cannot_be_read_after_the_call():
    kept = []

    def handler(context, name, args):
        kept.append(args)
        return "0"

    trap, values, _ = _call(handler, "echo", "[[1],{}]")
    assert trap == 0 and _arguments_freed(values)
    assert kept[0].size == 8
    with pytest.raises(ValueError, match="returned"):
        kept[0].text()


def test_an_oversized_text_is_never_decoded_unless_asked():
    def handler(context, name, args):
        return f"{args.size}"

    function = _ffi.NativeHostFunction(_cabi, handler, 64)
    values = _ffi.new_values(2)
    _ffi.put_string(values[0], "echo")
    _ffi.put_string(values[1], "x" * 100_000)
    ctypes.memmove(values[1].of.string.data, b"\xff", 1)  # a decode, had one been made, would fail
    result = _ffi.new_values(1)
    trap = function.callback(function.data, None, None, values, 2, result, 1)
    assert not trap and _ffi.take_string(result[0]) == "100000" and _arguments_freed(values)


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda context, name, args: 1 / 0, "sandbox host call failed"),
        (lambda context, name, args: None, "neither text nor a trap"),
        (lambda context, name, args: "\ud800", "not valid Unicode"),
        (lambda context, name, args: _ffi.trap("from the handler"), "from the handler"),
    ],
)
def test_a_failing_handler_traps_without_unwinding_into_c(handler, message):
    trap, values, _ = _call(handler, "echo", "[]")
    assert trap != 0 and message in _trap_message(trap)
    assert _arguments_freed(values)


def test_invalid_utf8_in_the_arguments_raises_in_the_handler():
    errors = []

    def handler(context, name, args):
        try:
            args.text()
        except UnicodeDecodeError as exc:
            errors.append(exc)
        return "0"

    function = _ffi.NativeHostFunction(_cabi, handler, 64)
    values = _ffi.new_values(2)
    _ffi.put_string(values[0], "echo")
    _ffi.put_string(values[1], "ab")
    ctypes.memmove(values[1].of.string.data, b"\xff\xfe", 2)
    result = _ffi.new_values(1)
    assert not function.callback(function.data, None, None, values, 2, result, 1)
    assert len(errors) == 1 and _arguments_freed(values)


def test_a_call_context_is_dead_once_released():
    context = _ffi.CallContext(12345)
    _ffi.release(context)
    with pytest.raises(WasmtimeError):
        _ffi.set_fuel(context, 1)


_FUNCTIONS = ("wasm_byte_vec_new_uninitialized", "wasm_byte_vec_delete", "wasmtime_error_new",
              "wasmtime_component_val_delete", "wasmtime_component_func_call", "wasmtime_context_set_fuel",
              "wasmtime_context_set_epoch_deadline")


def test_configure_refuses_another_layout_or_other_functions():
    val = wffi.wasmtime_component_val_t
    functions = [ctypes.cast(getattr(wffi.dll, name), ctypes.c_void_p).value for name in _FUNCTIONS]
    kinds = (_ffi.STRING.value, _ffi.BOOL.value, _ffi.LIST.value)
    with pytest.raises(ValueError, match="layout"):
        _cabi.configure(*functions, ctypes.sizeof(val) + 8, val.of.offset, *kinds)
    _ffi.configure_native(_cabi)  # the same again: accepted
    with pytest.raises(ValueError, match="differently"):
        _cabi.configure(*functions[::-1], ctypes.sizeof(val), val.of.offset, *kinds)


def test_the_run_export_call_reports_a_report_over_its_cap_unread_and_a_trap_as_an_error():
    from sandbox.limits import Limits
    from sandbox.wasi._abi import NO_INPUTS, ReportTooLarge, call_run, run_options
    from sandbox.wasi._engine import get_runtime
    from wasmtime import WasmtimeError

    rt = get_runtime()
    inst = rt.new_instance(Limits().memory_bytes)
    try:
        options = _ffi.StaticString(json.dumps({"capabilities": [], "secrets": [], "max_output": 1024,
                                                "max_value": 1 << 20, "recursion": 100, "session": True}))
        assert json.loads(call_run(inst.store, inst.func, "'é' * 3", options, NO_INPUTS, [])) == {"value": "ééé"}
        assert json.loads(call_run(inst.store, inst.func, "x", options, '{"x": [1]}', [])) == {"value": [1]}
        with pytest.raises(ReportTooLarge, match="over the 100-byte cap"):
            call_run(inst.store, inst.func, "'x' * 200", options, NO_INPUTS, [], 100)
        with pytest.raises(WasmtimeError, match="fuel"):
            call_run(inst.store, inst.func, "while True: pass", options, NO_INPUTS, [], fuel=1000)
        assert inst.store.get_fuel() == 0
    finally:
        inst.store.close()


def test_a_stale_build_of_the_extension_is_set_aside_for_ctypes():
    """An extension built from another version of _cabi.c (configure takes other arguments) must
    not break wasi: the ctypes calls serve, and a warning says to rebuild."""
    import subprocess
    import sys

    program = (
        "import sys, types, logging\n"
        "logging.basicConfig()\n"
        "stale = types.ModuleType('sandbox.wasi._cabi')\n"
        "stale.configure = lambda *args: (_ for _ in ()).throw(TypeError('configure() takes 10 arguments'))\n"
        "sys.modules['sandbox.wasi._cabi'] = stale\n"
        "from sandbox.wasi import _abi\n"
        "assert _abi._cabi is None and _abi.host_call_function is _abi.call_trampoline\n"
        "from sandbox import Sandbox\n"
        "def add(a: int, b: int) -> int:\n"
        "    '''Add.'''\n"
        "    return a + b\n"
        "with Sandbox('wasi', capabilities=[add]) as sb:\n"
        "    assert sb.run('add(1, 2)').value == 3\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert "rebuild it" in done.stderr


def test_handlers_are_reads_each_signals_handler_address():
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(256)
    signals = (signal.SIGSEGV, signal.SIGBUS)
    addresses = []
    for sig in signals:
        assert libc.sigaction(int(sig), None, buffer) == 0
        addresses.append(ctypes.c_void_p.from_buffer(buffer).value or 0)
    assert _cabi.handlers_are(tuple(signals), tuple(addresses))
    assert not _cabi.handlers_are(tuple(signals), (addresses[0], addresses[1] + 16))
    assert _cabi.handlers_are((), ())
    with pytest.raises(OSError):
        _cabi.handlers_are((10_000,), (0,))
    for out_of_range in (0, -1, 1 << 40):
        with pytest.raises(ValueError, match="out of range"):
            _cabi.handlers_are((out_of_range,), (0,))
