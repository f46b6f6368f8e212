"""Guest-proof detection for the adversarial suite.

Everything here is observed from the host, outside the guest's reach, so a guest cannot fool
it by controlling its own result:

* **canaries**: a canary file (readable by the test process), a canary secret (handed to the
  sandbox as ``secrets.canary``), and a canary environment variable. None of their values may
  appear in the `RunResult`, in the host's captured stdout/stderr or in its logs, in plain
  form or in the obvious encodings a guest would use to smuggle it past redaction (reversed,
  hex, base64). A ``[REDACTED:canary]`` marker counts as a leak as well: redaction only fires
  when the value itself reached an output, which means the guest held it.
* **a real loopback TCP listener** on 127.0.0.1 that must see no connection;
* **a watched temp directory** (and the canary's own directory) that must gain no file, and a
  canary file that must stay byte-for-byte and mtime unchanged;
* **processes**: no new descendant of the test process other than the sandbox's own workers
  (a worker is recognised by its command line, which equals the zygote's; forks of it inherit
  it), and no more descendants than the baseline plus a small slack;
* **host resources**: thread count, open fds and RSS before/after within stated bounds;
* **host state**: the identity of every public attribute of the allowlisted modules (and of
  the classes they define), the answers of host stdlib calls that keep process-wide state
  (``json.dumps``, ``textwrap.fill``, ``typing`` aliases and overloads, ``strptime``, ABC
  ``isinstance``), the decimal context and its flags, csv dialects, the random generator, the
  recursion limit, cwd, environment, signal handlers and the standard streams are unchanged;
* **liveness**: the same sandbox still answers a normal run correctly afterwards.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import csv
import decimal
import gc
import hashlib
import importlib
import os
import random
import secrets as _random_tokens
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# Per-session random canaries: a guest cannot have them baked in, and nothing else can
# produce them by accident.
CANARY_FILE_TEXT = "adv-canary-file-" + _random_tokens.token_hex(12)
CANARY_SECRET = "adv-secret-" + _random_tokens.token_hex(12)
CANARY_ENV = "adv-env-" + _random_tokens.token_hex(12)
CANARY_ENV_NAME = "SANDBOX_ADV_CANARY"
SECRET_NAME = "canary"

# Bounds, stated once (SECURITY.md quotes them).
THREAD_SLACK = 2
"""Extra host threads allowed after a case, over the post-warm-up baseline (runtime helpers
such as the wasi epoch ticker or the process pool's reader start lazily)."""
FD_SLACK = 4
"""Extra open fds allowed after a case (a replaced process worker briefly holds a pipe)."""
CHILD_SLACK = 2
"""Extra descendants allowed after a case (the process pool replaces a killed worker)."""
RSS_CASE_BOUND = 256 << 20
"""Largest RSS growth of the test process over one case (the guest memory limit is 128 MiB)."""
RSS_SUITE_BOUND = 384 << 20
"""Largest RSS growth of the test process over a whole runtime's corpus or a soak run."""
SETTLE_SECONDS = 2.0
"""How long a check waits for threads/children/fds to return to baseline before failing."""


def _encodings(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "plain": value,
        "reversed": value[::-1],
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "base64": base64.b64encode(raw).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "rot13": codecs.encode(value, "rot13"),
    }


def find_leaks(text: str) -> list[str]:
    """Names of every canary (and encoding) found in ``text``; empty when clean."""
    found = []
    for label, value in (("file", CANARY_FILE_TEXT), ("secret", CANARY_SECRET), ("env", CANARY_ENV)):
        for form, encoded in _encodings(value).items():
            if encoded in text:
                found.append(f"{label}:{form}")
    if f"[REDACTED:{SECRET_NAME}]" in text:
        found.append("secret:redaction-marker (the guest held the value)")
    return found


class LoopbackListener:
    """A TCP listener on 127.0.0.1 that counts every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="adversarial-listener", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self._accepted += 1
            conn.close()

    @property
    def connections(self) -> int:
        """Connections accepted so far, counted once none is still waiting to be accepted."""
        deadline = time.monotonic() + 1.0
        while select.select([self.sock], [], [], 0)[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.01)  # the count is taken just after accept() returns
        return self._accepted

    @connections.setter
    def connections(self, value: int) -> None:
        self._accepted = value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@dataclass
class Environment:
    """The canary file, watched directory and listener one runtime's cases run against."""

    root: Path
    canary_dir: Path = field(init=False)
    canary_path: Path = field(init=False)
    watch_dir: Path = field(init=False)
    listener: LoopbackListener = field(init=False)

    def __post_init__(self) -> None:
        self.canary_dir = self.root / "canary"
        self.watch_dir = self.root / "watched"
        self.canary_dir.mkdir(parents=True)
        self.watch_dir.mkdir(parents=True)
        self.canary_path = self.canary_dir / "canary.txt"
        self.canary_path.write_text(CANARY_FILE_TEXT)
        self.canary_stat = self._canary_stat()
        self.listener = LoopbackListener()
        os.environ[CANARY_ENV_NAME] = CANARY_ENV

    def substitute(self, code: str) -> str:
        return (
            code.replace("@@CANARY_PATH@@", str(self.canary_path))
            .replace("@@CANARY_DIR@@", str(self.canary_dir))
            .replace("@@WATCH_DIR@@", str(self.watch_dir))
            .replace("@@PORT@@", str(self.listener.port))
        )

    def _canary_stat(self) -> tuple[int, int, str]:
        st = self.canary_path.stat()
        return st.st_size, st.st_mtime_ns, hashlib.sha256(self.canary_path.read_bytes()).hexdigest()

    def violations(self) -> list[str]:
        """Filesystem and network evidence; empty when nothing happened."""
        found = []
        if self.listener.connections:
            found.append(f"loopback listener saw {self.listener.connections} connection(s)")
        new = sorted(p.name for p in self.watch_dir.iterdir())
        if new:
            found.append(f"watched dir gained {new}")
        extra = sorted(p.name for p in self.canary_dir.iterdir() if p.name != "canary.txt")
        if extra:
            found.append(f"canary dir gained {extra}")
        try:
            if self._canary_stat() != self.canary_stat:
                found.append("canary file changed")
        except OSError as exc:
            found.append(f"canary file gone: {exc}")
        return found

    def reset(self) -> None:
        """After a violation was recorded: clear the evidence so later cases start clean
        (collecting garbage runs guest finalizers now, not in the middle of a later case)."""
        gc.collect()
        self.listener.connections = 0
        for p in self.watch_dir.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()

    def close(self) -> None:
        self.listener.close()
        os.environ.pop(CANARY_ENV_NAME, None)


# ------------------------------------------------------------------ host resources


def _me() -> psutil.Process:
    return psutil.Process()


def descendants() -> dict[int, str]:
    """pid -> command line of every live (non-zombie-reaped) descendant of this process."""
    out = {}
    for child in _me().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            out[child.pid] = " ".join(child.cmdline()) or child.name()
    return out


@dataclass(frozen=True)
class Resources:
    threads: int
    fds: int
    rss: int
    children: dict[int, str]

    @classmethod
    def take(cls) -> Resources:
        me = _me()
        return cls(threads=me.num_threads(), fds=me.num_fds(), rss=me.memory_info().rss, children=descendants())


def resource_violations(before: Resources, *, rss_bound: int = RSS_CASE_BOUND, settle: float = SETTLE_SECONDS) -> list[str]:
    """Compare the host now with ``before``, giving transient helpers ``settle`` seconds to go."""
    allowed_cmdlines = set(before.children.values())
    deadline = time.monotonic() + settle
    while True:
        now = Resources.take()
        found = []
        strangers = {pid: cmd for pid, cmd in now.children.items() if cmd not in allowed_cmdlines}
        if strangers:
            found.append(f"new child process(es) {strangers}")
        if len(now.children) > len(before.children) + CHILD_SLACK:
            found.append(f"child processes {len(before.children)} -> {len(now.children)}")
        if now.threads > before.threads + THREAD_SLACK:
            found.append(f"threads {before.threads} -> {now.threads}")
        if now.fds > before.fds + FD_SLACK:
            found.append(f"fds {before.fds} -> {now.fds}")
        if now.rss > before.rss + rss_bound:
            found.append(f"rss grew by {(now.rss - before.rss) >> 20} MiB (bound {rss_bound >> 20} MiB)")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ------------------------------------------------------------------ host state

_WATCHED_MODULES = (
    "math", "json", "re", "datetime", "collections", "collections.abc", "itertools", "functools",
    "statistics", "decimal", "fractions", "random", "string", "typing", "dataclasses", "heapq",
    "bisect", "textwrap", "enum", "base64", "hashlib", "uuid", "csv", "io", "copy", "os", "sys",
    "builtins", "copyreg", "codecs",
)


def _attribute_ids(obj: Any) -> dict[str, int]:
    try:
        items = dict(vars(obj))
    except TypeError:
        return {}
    return {name: id(value) for name, value in items.items() if not (name.startswith("__") and name.endswith("__")) or name in ("__init__", "__call__", "__getattr__", "__repr__")}


def host_state() -> dict[str, Any]:
    """A fingerprint of process-global state a guest in this process could tamper with."""
    state: dict[str, Any] = {}
    for name in _WATCHED_MODULES:
        module = importlib.import_module(name)
        state[f"module:{name}"] = _attribute_ids(module)
        for attr, value in list(vars(module).items()):
            if isinstance(value, type) and getattr(value, "__module__", None) == module.__name__:
                state[f"class:{name}.{attr}"] = _attribute_ids(value)
    context = decimal.getcontext()
    state["decimal.context"] = (context.prec, context.rounding, context.Emax, context.Emin, tuple(sorted(k.__name__ for k, v in context.traps.items() if v)))
    state["csv.dialects"] = tuple(sorted(csv.list_dialects()))
    state["csv.field_size_limit"] = csv.field_size_limit()
    state["random.state"] = hash(random.getstate())
    state["sys.recursionlimit"] = sys.getrecursionlimit()
    state["sys.int_max_str_digits"] = sys.get_int_max_str_digits()
    state["sys.streams"] = (id(sys.stdout), id(sys.stderr), id(sys.stdin))
    state["sys.path"] = tuple(sys.path)
    state["sys.modules"] = frozenset(k for k in sys.modules if k.split(".")[0] in ("os", "subprocess", "socket", "ctypes", "pty"))
    state["sys.hooks"] = (id(sys.excepthook), id(sys.displayhook), id(sys.gettrace()), id(sys.getprofile()))
    state["cwd"] = os.getcwd()
    state["environ"] = hash(tuple(sorted(os.environ.items())))
    state["umask"] = _umask()
    state["signals"] = tuple(
        (int(s), id(signal.getsignal(s))) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE)
    )
    state["signal.alarm"] = signal.getitimer(signal.ITIMER_REAL)
    state["copyreg.dispatch_table"] = frozenset(id(k) for k in __import__("copyreg").dispatch_table)
    state["decimal.flags"] = tuple(sorted(k.__name__ for k, v in context.flags.items() if v))
    state["behaviour"] = _stdlib_behaviour()
    return state


def _overloaded(x: int) -> int:
    return x


def _stdlib_behaviour() -> tuple[Any, ...]:
    """What host stdlib calls with process-wide state answer: a guest that poisoned a registry,
    a cache or a class table changes one of these."""
    import datetime
    import json
    import textwrap
    import typing
    from collections.abc import Mapping

    return (
        json.dumps({"a": [1, 2.5, None]}),
        textwrap.fill("alpha beta  gamma", width=6),
        repr(typing.List[int]), repr(typing.Optional[str]), typing.get_overloads(_overloaded),
        datetime.datetime.strptime("2021-03-04", "%Y-%m-%d"),
        time.strptime("2021", "%Y")[:3],
        isinstance([], Mapping), issubclass(list, Mapping), isinstance({}, Mapping),
        len("abc"),
    )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def state_violations(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    found = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            # Lazily created caches are not tampering.
            changed = [k for k in changed if not _benign(key, k)]
            if changed:
                found.append(f"host state {key} changed: {changed[:8]}")
        else:
            found.append(f"host state {key} changed: {old!r} -> {new!r}")
    return found


def _benign(key: str, attr: str) -> bool:
    # functools/re/typing keep caches that a normal call fills; the ids of caches are stable
    # but some modules add private memo entries on first use.
    return attr.startswith("_") and attr not in ("__init__", "__call__", "__getattr__", "__repr__")
