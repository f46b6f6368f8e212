"""The wasi guest application: runs agent code inside CPython compiled to WebAssembly.

Built into a component by `sandbox.wasi.build` with componentize-py against the WIT world in
``wit/``. componentize-py pre-initialises CPython at build time: everything imported at module
level here is loaded once, snapshotted into the component and bundled, so imports cost
nothing at run time. Only modules imported here (and their dependencies) exist in the guest.

Guest code has the builtins of every runtime's guest (`_GUEST_BUILTINS`: no ``open``,
``input``, ``globals`` ...) and imports through the guest's own ``__import__``
(`_guest_import`): the allowlist of every runtime (`guest.ALLOWED_MODULES`), each module as a
read-only `guest.ModuleProxy` of its reviewed names, as on the restricted runtime. Stdlib code
keeps the real builtins and import.

Nothing here is trusted by the host, the allowlist included: guest code can reach past it and
rewrite every object in this module. The boundary is WebAssembly's, and the host re-checks
what matters (output cap, secret handles, terminating faults, limits) on its own side of it.
This module only makes the common case fast and the guest's view identical to the
restricted runtime's.

It is one module of about 600 lines on purpose: its first hundred lines are the list of stdlib
modules snapshotted into the component, and componentize-py bundles the guest from this entry
module plus the shared `guest` and `wire` modules, so every further split would be one more
file to bundle and keep in step with the build.
"""

from __future__ import annotations

# --- the stdlib in the guest (bundled because imported here) -----------------------------
import _strptime  # noqa: F401  (datetime.strptime and time.strptime import it lazily)
import abc
import array
import ast
import base64
import binascii
import bisect
import builtins
import calendar
import cmath
import codecs
import collections
import collections.abc
import colorsys
import contextlib
import copy
import csv
import dataclasses
import encodings.idna  # noqa: F401  (str.encode('idna') finds its codec)
import datetime
import decimal
import difflib
import enum
import fnmatch
import fractions
import functools
import graphlib
import hashlib
import heapq
import hmac
import html
import io
import ipaddress
import itertools
import json
import keyword
import math
import numbers
import operator
import pprint
import random
import re
import secrets as _secrets_module
import shlex
import statistics
import string
import struct
import sys
import textwrap
import time
import traceback
import types
import typing
import unicodedata
import urllib.parse
import uuid
import zlib
import socket  # bundled so that guest code can try the network and be refused by WASI
import select
import selectors
import sqlite3
import pickle
import queue
import weakref
import warnings
import contextvars
import gc
import xml.etree.ElementTree

import wit_world
from wit_world.imports import host

import guest
import wire
from guest import (
    ALLOWED_MODULES,
    EXCEPTIONS,
    GUEST_FILENAME,
    LIMIT_MESSAGES,
    PLAIN_BUILTINS,
    RUN_BUILTINS,
    SURFACE,
    CapabilityError,
    ModuleProxy,
    Namespace,
    OutputCap,
    PolicyDenied,
    SecretHandle,
    capability_globals,
    error_kind,
    fault_type,
    guest_lineno,
    import_refused,
    limit_of,
    message_of,
    module_members,
)

# --- guest-visible names ------------------------------------------------------------------

_resources: dict = {}
"""id(`SecretHandle`) -> (handle, its ``host.Secret`` resource): the handle holds no resource
itself. Kept across a session's runs (a handle kept in its globals still names its secret)."""


_PLAIN = frozenset({str, int, float, bool, type(None)})

# Prebuilt C scanner: ``json.loads`` adds two regex scans; a capability call does not need them.
_scan = json.scanner.make_scanner(json.decoder.JSONDecoder(object_hook=wire.decode_hook))  # type: ignore[attr-defined]


class _ValueLimit(BaseException):
    """Capability arguments over ``max_value_bytes``: the run ends on limit ``value``."""


_run_state: dict = {"max_value": wire.DEFAULT_VALUE_BYTES, "stop": None}


def _loads(text: str):
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return wire.loads(text)  # raises a proper JSONDecodeError
    if end != len(text):
        return wire.loads(text)
    return value


def _make_capability(name: str):
    dumps, encode, scan, plain, enc = wire.dumps, wire.encode, _scan, _PLAIN, wire._encoder
    call, call_with_handles = host.call, host.call_with_handles
    state, resources = _run_state, _resources

    def capability(*args, **kwargs):
        output = _current_output
        if output is not None and output._pending:
            output.flush()
        holders: list | None = []
        # only scalars (the common case): no conversion, no handles
        if plain.issuperset(map(type, args)) and (not kwargs or plain.issuperset(map(type, kwargs.values()))):
            try:
                if kwargs or enc is None:
                    payload = dumps([args, kwargs])
                else:  # the same text as dumps([args, {}]), without encoding the empty dict
                    payload = "[" + "".join(enc(args, 0)) + ",{}]"
                holders = None
            except ValueError:  # a non-finite float: let encode name it
                pass
        if holders is not None:

            def handle_token(obj):
                entry = resources.get(id(obj))
                if entry is not None and entry[0] is obj:
                    for i, held in enumerate(holders):
                        if held is entry:
                            return i
                    holders.append(entry)
                    return len(holders) - 1
                return None

            try:
                payload = dumps(encode([list(args), kwargs], handle_token=handle_token, max_bytes=state["max_value"]))
            except wire.ValueTooLarge as exc:
                state["stop"] = wire.value_error(exc)
                raise _ValueLimit(str(exc)) from None
            except wire.WireError as exc:
                raise TypeError(f"{name}(): {exc}") from None
            if holders:
                ok, text, returned = call_with_handles(name, payload, [entry[1] for entry in holders])
                for entry, resource in zip(holders, returned):
                    resources[id(entry[0])] = (entry[0], resource)
                if ok:
                    return _loads(text)
                fault = _loads(text)
                raise fault_type(fault.get("type"))(fault.get("message", ""))
        text = call(name, payload)  # the result's JSON, or "!" and a fault's
        try:
            value, end = scan(text, 0)
            if end == len(text):
                return value
        except StopIteration:  # not JSON from its first character: a fault's "!"
            pass
        if text[:1] != "!":
            return _loads(text)  # JSON with more around it: as _loads reads (or refuses) it
        fault = _loads(text[1:])
        raise fault_type(fault.get("type"))(fault.get("message", ""))

    short = name.rsplit(".", 1)[-1]
    capability.__name__ = short
    capability.__qualname__ = name
    capability.__doc__ = f"Host capability {name!r}."
    return capability


# --- time ---------------------------------------------------------------------------------
#
# WASI's clock subscriptions (behind time.sleep and select timeouts) block inside Wasmtime's
# host code, where the epoch deadline cannot interrupt them, so the host refuses them: calling
# one ends the run. Route sleeping through `host.sleep`, which the host bounds by the run's
# remaining wall time, and never give the real select a timeout (even 0 is a subscription).

_real_select = select.select


def _sleep(secs) -> None:
    """sleep(seconds): delay execution for a given number of seconds (bounded by the run's
    wall-clock limit)."""
    if not isinstance(secs, (int, float)) or isinstance(secs, bool):
        raise TypeError(f"'{type(secs).__name__}' object cannot be interpreted as an integer or float")
    secs = float(secs)
    if secs != secs:
        raise ValueError("Invalid value NaN (not a number)")
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    if secs > 0:
        host.sleep(secs)


def _select(rlist, wlist, xlist, timeout=None):
    """select() without WASI clock waits: sleep out the (bounded) timeout when there is
    nothing to wait for, else ask the real select without a timeout. Every descriptor the
    guest can hold (stdin at end of file, stdout and stderr discarding sinks) is ready at
    once or refused, so that returns immediately."""
    rlist, wlist, xlist = list(rlist), list(wlist), list(xlist)
    if rlist or wlist or xlist:
        return _real_select(rlist, wlist, xlist)
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise TypeError("timeout must be a float or None")
        if timeout < 0:
            raise ValueError("timeout must be non-negative")
    if timeout != 0:
        _sleep(86400.0 if timeout is None else timeout)
    return [], [], []


time.sleep = _sleep
select.select = _select
for _name in ("poll", "epoll", "kqueue", "devpoll"):
    if hasattr(select, _name):
        delattr(select, _name)
for _name in ("PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector"):
    if hasattr(selectors, _name):
        delattr(selectors, _name)
selectors.SelectSelector._select = staticmethod(_select)  # type: ignore[attr-defined]  # it kept the real select.select
selectors.DefaultSelector = selectors.SelectSelector  # type: ignore[misc, assignment]


# --- imports ------------------------------------------------------------------------------


def _module_proxies() -> dict:
    """A `ModuleProxy` per allowed module, an allowed submodule as an attribute of its parent."""
    proxies: dict = {}
    for name in sorted(ALLOWED_MODULES, key=lambda n: (-n.count("."), n)):
        members = module_members(sys.modules[name], SURFACE[name])
        prefix = name + "."
        members.update((sub[len(prefix):], proxy) for sub, proxy in proxies.items()
                       if sub.startswith(prefix) and "." not in sub[len(prefix):])
        proxies[name] = ModuleProxy(name, members)
    return proxies


_PROXIES = _module_proxies()


def _guest_import(name, globals=None, locals=None, fromlist=(), level=0):
    """The guest's ``__import__``: an allowed module's proxy; ImportError naming the allowed
    modules for any other (C code importing on the guest's behalf uses only allowed ones)."""
    if level != 0:
        raise ImportError("relative imports are not allowed")
    proxy = _PROXIES.get(name) if type(name) is str else None
    if proxy is None:
        raise import_refused(name, ALLOWED_MODULES)
    return proxy if fromlist else _PROXIES[name.partition(".")[0]]


_GUEST_BUILTINS = {name: getattr(builtins, name) for name in PLAIN_BUILTINS + EXCEPTIONS + RUN_BUILTINS}
_GUEST_BUILTINS.update({"__import__": _guest_import, "Ellipsis": Ellipsis, "NotImplemented": NotImplemented,
                        "PolicyDenied": PolicyDenied, "CapabilityError": CapabilityError})
"""The builtins of guest code: the names every runtime's guest has, the guest's ``__import__``
and the capability error types."""


# --- output -------------------------------------------------------------------------------


class _Output(io.TextIOBase):
    """stdout or stderr: text goes to the host through ``host.output`` (see `_OutputState`)."""

    def __init__(self, state: "_OutputState", stderr: bool) -> None:
        self._state = state
        self._stderr = stderr

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._state.write(self._stderr, text)
        return len(text)

    def flush(self) -> None:
        self._state.flush()


class _OutputState(OutputCap):
    """The run's output on its way to the host, bounded by the cap in UTF-8 bytes (`OutputCap`;
    the host applies it again).

    Every write that ends a line goes to the host at once (with what was pending), so output
    written before the guest stalls or is stopped is on the host already; a piece without a
    newline waits for the end of its line (or `PENDING_MAX` characters), a capability call or
    the end of the run. One host call per line, not one per write.
    """

    PENDING_MAX = 4096

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._pending: list = []
        self._size = 0

    def write(self, stderr: bool, text: str) -> None:
        text = self.keep(text)
        if not text:
            return
        self._pending.append((stderr, text))
        self._size += len(text)
        if text.endswith("\n") or self._size >= self.PENDING_MAX:
            self.flush()

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._size = 0
        stream, parts = pending[0][0], list[str]()
        for stderr, text in pending:
            if stderr is not stream:
                host.output(stream, "".join(parts))
                stream, parts = stderr, []
            parts.append(text)
        host.output(stream, "".join(parts))

    def reset(self, cap: int) -> None:
        """Start a run's output: ``cap`` bytes of room, nothing pending."""
        self.room = cap
        self.truncated = False
        self._pending = []
        self._size = 0


_current_output: _OutputState | None = None
_OUTPUT = _OutputState(0)
_STDOUT, _STDERR = _Output(_OUTPUT, False), _Output(_OUTPUT, True)
"""The guest's stdout and stderr, made once per instance: a run resets the state they share."""


# --- running code -------------------------------------------------------------------------


_compiled: dict = {}
"""Code compiled in this instance (a session's repeated snippets), bounded by `_COMPILED_MAX`."""
_COMPILED_MAX = 32
_COMPILED_SOURCE_MAX = 4096


def _compile(code: str):
    """Compile ``code``; return (body, last_expression) code objects.

    A snippet that is one expression compiles directly in ``eval`` mode (what the AST path
    below does for its last expression anyway); only a leading indent compiles in ``eval`` mode
    but not as a module, so that goes the AST way and fails there. Compiled code objects are
    immutable, so a session reuses them for a repeated snippet."""
    hit = _compiled.get(code)
    if hit is not None:
        return hit
    compiled = None
    if code[:1] not in ("", " ", "\t", "\f"):
        try:
            compiled = (None, compile(code, GUEST_FILENAME, "eval"))
        except SyntaxError:
            compiled = None
    if compiled is None:
        compiled = _compile_module(code)
    if len(code) <= _COMPILED_SOURCE_MAX:
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.clear()
        _compiled[code] = compiled
    return compiled


def _compile_module(code: str):
    tree = ast.parse(code, GUEST_FILENAME, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expr = ast.Expression(typing.cast(ast.Expr, tree.body.pop()).value)
        last = compile(expr, GUEST_FILENAME, "eval")
    body = compile(tree, GUEST_FILENAME, "exec") if tree.body else None
    return body, last


_session_globals: dict | None = None


def _fresh_globals() -> dict:
    return {"__name__": "__main__", "__builtins__": dict(_GUEST_BUILTINS), "__doc__": None}


_capabilities: dict = {}
"""Capability functions made so far in this instance, by name (they hold no per-run state)."""


def _capability(name: str):
    func = _capabilities.get(name)
    if func is None:
        func = _capabilities[name] = _make_capability(name)
    return func


_NO_SECRETS = Namespace("secrets", {})


def _install(g: dict, config: "_Config", inputs: dict, secrets: list) -> None:
    g.update(config.installs)
    if config.secrets:
        handles = {}
        for (name, description), resource in zip(config.secrets, secrets):
            handle = handles[name] = SecretHandle(name, description)
            _resources[id(handle)] = (handle, resource)
        g["secrets"] = Namespace("secrets", handles)
    else:
        g["secrets"] = _NO_SECRETS
    for key, value in inputs.items():
        g[key] = value  # decoded from the wire by `_loads`


_seeded = False
"""Whether `random` was reseeded since the pre-initialised snapshot froze its state and no run
has drawn from it since (the host's warm-up of a fresh instance reseeds it)."""


def _run(code: str, config: "_Config", inputs: dict, secrets: list, warm: bool = False) -> str:
    """Run ``code``; return the JSON text of its outcome (see the ``run`` export in the WIT world)."""
    global _session_globals, _current_output, _seeded
    value_cap = config.max_value
    _run_state["max_value"] = value_cap
    _run_state["stop"] = None
    state = _OUTPUT
    state.reset(config.max_output)
    _current_output = state
    if config.session:
        if _session_globals is None:
            _session_globals = _fresh_globals()
        g = _session_globals
    else:
        g = _fresh_globals()
        _resources.clear()
        # the snapshot froze one PRNG state for every instance: draw fresh entropy (WASI random),
        # unless the host's warm-up of this instance just did and nothing ran since
        if not _seeded or warm:
            random.seed()
        _seeded = warm
    _install(g, config, inputs, secrets)
    text = "null"
    error = None
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _STDOUT, _STDERR
    limit = _depth() + config.recursion + 3
    if sys.getrecursionlimit() != limit:  # set by an earlier run, unless its code changed it
        sys.setrecursionlimit(limit)
    try:
        try:
            body, last = _compile(code)
        except SyntaxError as exc:
            error = wire.error("compile_error", type(exc).__name__, exc.msg or message_of(exc), lineno=exc.lineno)
        except (MemoryError, RecursionError) as exc:
            error = _limit_error(exc, None)
        else:
            try:
                if body is not None:
                    exec(body, g)
                if last is not None:
                    text = wire.value_json(eval(last, g), value_cap, lenient=True)
            except wire.ValueTooLarge as exc:
                text = "null"
                error = wire.value_error(exc)
            except (MemoryError, RecursionError) as exc:
                text = "null"
                error = _limit_error(exc, guest_lineno(exc))
            except BaseException as exc:  # SystemExit, KeyboardInterrupt too: all are guest errors
                text = "null"
                error = wire.error(error_kind(exc), type(exc).__name__, message_of(exc), lineno=guest_lineno(exc))
                exc.__traceback__ = None
    finally:
        sys.stdout, sys.stderr = saved
        _current_output = None
        state.flush()
    if _run_state["stop"] is not None:  # arguments over the cap, whatever the guest caught
        text, error = "null", _run_state["stop"]
    return _report(text, error, state.truncated)


def _report(text: str, error: dict | None, truncated: bool) -> str:
    """The JSON text of a run's outcome whose value has the JSON text ``text``: ``{"value"}``
    when it ended without an error and its output was not truncated (the host reads a missing
    key as its default), else ``{"value", "output_truncated", "error"}``."""
    if error is None and not truncated:
        return '{"value":' + text + "}"
    return ('{"value":' + ("null" if error is not None else text) + ',"output_truncated":'
            + ("true" if truncated else "false") + ',"error":' + wire.dumps(error) + "}")


_DEPTH: list = []


def _depth() -> int:
    """Frames below the caller's: the same on every run (the export calls `_run` directly), so
    counted once."""
    if not _DEPTH:
        frame: types.FrameType | None = sys._getframe(1)
        n = 0
        while frame is not None:
            frame, n = frame.f_back, n + 1
        _DEPTH.append(n)
    return _DEPTH[0]


def _limit_error(exc: BaseException, lineno: int | None) -> dict:
    limit = limit_of(exc)
    return wire.error("limit_exceeded", limit, LIMIT_MESSAGES[limit], lineno=lineno, limit=limit)


# Built now, so that reporting an exhausted memory needs no allocation: a run that fills the
# memory up to the store's limit can fail again while its outcome is being built, and an
# exception escaping `run` aborts the whole guest (a wasm `unreachable` trap).
_LIMIT_OUTCOMES = {
    kind: json.dumps(wire.outcome(error=_limit_error(kind(), None))) for kind in (MemoryError, RecursionError)
}


class _Config:
    """What a run needs from its options, worked out once per options text: the host sends the
    same text for every run of one configuration (the inputs travel separately)."""

    __slots__ = ("max_output", "max_value", "recursion", "session", "installs", "secrets")

    def __init__(self, options: dict) -> None:
        self.max_output = int(options.get("max_output", 1 << 20))
        self.max_value = int(options.get("max_value", wire.DEFAULT_VALUE_BYTES))
        self.recursion = int(options.get("recursion", 500))
        self.session = bool(options.get("session"))
        self.installs = capability_globals(options.get("capabilities", ()), _capability)
        """The capability globals every run (re)installs: functions, and namespaces for dotted names."""
        self.secrets = [tuple(pair) for pair in options.get("secrets", ())]
        """(name, description) of each secret handle, in the order of the run's resources."""


_options_text: str | None = None
_config: _Config | None = None
"""The last options text and what it configures."""
WARM_INPUTS = ""
"""The ``inputs-json`` of the host's warm-up of a fresh instance (never a run's: those are JSON
objects). The warm-up runs ``None`` with the options of the run expected next, so that run finds
them parsed and its capability functions made."""


class WitWorld(wit_world.WitWorld):
    def run(self, code: str, options_json: str, inputs_json: str, secrets: list) -> str:
        global _options_text, _config
        limit: type[MemoryError] | type[RecursionError] | None = None
        try:
            config = _config
            if config is None or options_json != _options_text:
                _capabilities.clear()  # another configuration's names stay out of this one's runs
                config = _Config(_loads(options_json))
                _config, _options_text = config, options_json
            warm = inputs_json == WARM_INPUTS
            inputs = _loads(inputs_json) if inputs_json != "{}" and not warm else {}
            return _run(code, config, inputs, secrets, warm)
        except MemoryError:
            limit = MemoryError
        except RecursionError:
            limit = RecursionError
        except BaseException as exc:
            try:
                return json.dumps(
                    wire.outcome(error=wire.error("internal", type(exc).__name__, f"guest runner failed: {message_of(exc)}"))
                )
            except MemoryError:
                limit = MemoryError
        # the exception and its traceback (which holds the run's frames and globals) are gone
        # now; collect their cycles too, so that the caller can copy the outcome out
        try:
            gc.collect()
        except BaseException:
            pass
        return _LIMIT_OUTCOMES[limit]


# Everything above is part of the pre-initialised snapshot: move it out of the collector's
# reach, so a run's garbage collections scan only the run's own objects (and do not dirty, and
# copy-on-write fault, every page of the snapshot's heap).
gc.collect()
gc.freeze()
