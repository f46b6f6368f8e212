"""The zygote: a fresh interpreter that forks confined, pre-warmed children on request.

Started by the host (`sandbox.process.ProcessDriver`) as::

    python -I -B -c "...; from runtimes.process.zygote import main; main()" --ctrl-fd N [...]

never forked from the (multi-threaded) host itself. At start it

1. imports the restricted executor (RestrictedPython, every allowed module's proxy) and runs
   a dummy job; the executor's watchdog thread is kept off so the zygote stays single-threaded
   (there is no fallback: if the executor does not import, the zygote does not start);
2. builds the seccomp filter (not loaded: the zygote itself needs fork and sockets);
3. enters its own network namespace (user namespace first when not root);
4. applies Landlock: read-only access to what children need, nothing else;
5. freezes the GC generations (children then do not touch every object's header);
6. sends ``hello`` {layers, errors, pid, seccomp, uid} on the control socket.

Then it serves the control socket (AF_UNIX SOCK_SEQPACKET, one message per record):

- host -> zygote ``F``: fork one more spare child;
- zygote -> host ``spare`` {pid} with two descriptors (SCM_RIGHTS): the host's end of the
  child's channel and a pidfd for the child (opened before the child could be reaped, so
  it cannot name a recycled pid);
- zygote -> host ``exit`` {pid, status, utime, stime, maxrss} from ``wait4`` when a child ends.

The zygote exits, killing its children, when the host closes the control socket.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import socket
import sys
from typing import Any

ALLOWED_MODULES = ("contextlib", "types", "operator", "copy", "encodings.idna", "unicodedata")
"""Imported before Landlock and the uid drop (besides the executor's allowlist, whose proxies
are built in `_load_executor`), so no run needs the filesystem to import."""


def _load_executor(extra_modules: tuple[str, ...] = ()) -> Any:
    """The restricted executor, with its module proxies built and its watchdog thread off.

    ``extra_modules`` (``--module``, from `runtimes.restricted.modules.OPTIONAL_MODULES`) join
    the allowlist of this zygote's children only. There is no fallback: without the language
    layer (or an extra module) the zygote refuses to start.
    """
    from runtimes.restricted import executor

    _no_watchdog_thread()
    from runtimes.restricted.modules import MODULES

    MODULES.allow(extra_modules)
    for name in extra_modules:
        _import_tree(name)

    # Build every module proxy now: a child can neither read files nor import later.
    # Submodules first ("collections.abc" before "collections"): a parent's proxy embeds them.
    for name in sorted(MODULES.allowed, key=lambda n: (-n.count("."), n)):
        MODULES.proxy(name)
    return executor


_SKIP_PARTS = frozenset({"tests", "testing", "conftest", "_pyinstaller", "f2py", "distutils", "typing", "_typing"})


def _import_tree(package: str) -> None:
    """Import ``package`` and every submodule (test suites aside): children can neither read
    files nor import later, and numpy/pandas import submodules lazily (``DataFrame.to_dict``,
    ``np.sum``). A submodule whose optional dependency is missing is skipped."""
    import importlib
    import pkgutil

    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + ".", onerror=lambda _name: None):
        if _SKIP_PARTS.isdisjoint(info.name.split(".")):
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001 - optional dependency missing, platform-specific, ...
                pass


def _no_watchdog_thread() -> None:
    """Keep the restricted runtime's threads (its watchdog and its deep-stack guest threads) from
    starting, in the zygote and children.

    The zygote must be single-threaded whenever it forks (a thread holding a lock at fork time
    leaves the child deadlocked), and children cannot create threads (seccomp). Without the
    watchdog, runs rely on their own tick checks; the process layer's wall-clock kill and
    RLIMIT_CPU are the hard backstop. Guests run on the child's main thread, where a C stack
    overflow ends only that child.
    """
    from runtimes.restricted.budget import WATCHDOG
    from runtimes.restricted.guest_stack import GUEST_STACK

    WATCHDOG.disable()
    GUEST_STACK.disable()


def _readonly_paths(executor: object) -> list[str]:
    import sysconfig

    paths = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"],
             sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}  # the runtimes package
    try:
        import RestrictedPython  # noqa: F401

        paths.add(os.path.dirname(os.path.dirname(RestrictedPython.__file__)))
    except ImportError:
        pass
    return sorted(p for p in paths if p and os.path.exists(p))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="runtimes.process.zygote")
    parser.add_argument("--ctrl-fd", type=int, required=True)
    parser.add_argument("--spares", type=int, default=1)
    parser.add_argument("--uid", type=int, default=None)
    parser.add_argument("--gid", type=int, default=None)
    parser.add_argument("--no-landlock", action="store_true")
    parser.add_argument("--no-netns", action="store_true")
    parser.add_argument("--no-seccomp", action="store_true")
    parser.add_argument("--allow-raw", action="store_true")
    parser.add_argument("--module", action="append", default=[])
    parser.add_argument("--capability", action="append", default=[])
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])

    sys.dont_write_bytecode = True
    ctrl = socket.socket(fileno=args.ctrl_fd)
    from runtimes.process import confine

    confine.reset_cpu_signals()
    layers: list[str] = []
    errors: dict[str, str] = {}

    from runtimes.process import child

    executor = _load_executor(tuple(args.module))
    for name in ALLOWED_MODULES:
        try:
            __import__(name)
        except ImportError:
            pass
    warmup = child.warmup_frame(tuple(args.capability))
    child.warm_up(executor, warmup)
    layers.append("restricted-python")
    from runtimes.restricted import alloc_cap

    if alloc_cap.available():  # loaded (hooks installed) by the warm-up run, before any fork
        layers.append("alloc-cap")

    seccomp_filter = None
    if not args.no_seccomp:
        try:
            seccomp_filter = confine.compile_seccomp()
        except Exception as exc:  # noqa: BLE001 - reported, the host decides
            errors["seccomp"] = f"{type(exc).__name__}: {exc}"
    if not args.no_netns:
        try:
            layers.extend(confine.enter_network_namespace())
            if any(up for _, up in confine.network_interfaces()):
                raise confine.ConfinementError(0, "an interface is up in the new network namespace")
        except Exception as exc:  # noqa: BLE001
            errors["netns"] = f"{type(exc).__name__}: {exc}"
            layers = [layer for layer in layers if layer not in ("netns", "userns")]
    if not args.no_landlock:
        try:
            confine.apply_landlock(_readonly_paths(executor))
            layers.append("landlock")
        except Exception as exc:  # noqa: BLE001
            errors["landlock"] = f"{type(exc).__name__}: {exc}"
    uid = args.uid if os.geteuid() == 0 else None
    if uid is None and args.uid is not None:
        errors["uid"] = "a dedicated uid needs a root host"
    layers.append("rlimits")  # each child sets them on itself from the job's plan (confine.apply_rlimits)

    import threading

    if threading.active_count() != 1:
        errors["zygote"] = f"{threading.active_count()} threads alive at fork time"
    gc.collect()
    gc.freeze()
    ctrl.sendall(json.dumps({"t": "hello", "pid": os.getpid(), "layers": layers, "errors": errors,
                             "seccomp": seccomp_filter is not None,
                             "uid": uid}).encode())
    _serve(ctrl, args, executor, seccomp_filter, uid, layers, warmup)


def _serve(ctrl: socket.socket, args: argparse.Namespace, executor: object, seccomp_filter: object,
           uid: int | None, layers: list[str], warmup: bytes) -> None:
    from runtimes.process import child

    me = os.getpid()
    children: dict[int, int] = {}  # pidfd -> pid
    poller = select.poll()
    poller.register(ctrl.fileno(), select.POLLIN)

    def spawn() -> None:
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            child.serve(child_end.fileno(), executor=executor, seccomp_filter=seccomp_filter, uid=uid,
                        gid=args.gid if args.gid is not None else uid, zygote_pid=me, layers=layers,
                        allow_raw=args.allow_raw, warmup=warmup)
            os._exit(70)  # not reached
        child_end.close()
        pidfd = os.pidfd_open(pid)
        children[pidfd] = pid
        poller.register(pidfd, select.POLLIN)
        try:
            socket.send_fds(ctrl, [json.dumps({"t": "spare", "pid": pid}).encode()], [host_end.fileno(), pidfd])
        finally:
            host_end.close()

    for _ in range(max(0, args.spares)):
        spawn()
    try:
        while True:
            for fd, _event in poller.poll():
                if fd == ctrl.fileno():
                    data = ctrl.recv(64)
                    if not data:
                        return
                    for _ in range(data.count(b"F")):
                        # The F's sender (a run that just ended, on its way back to its caller)
                        # often woke us on its own CPU: let it go first rather than hold that
                        # CPU for the whole fork (0.1-0.3 ms on the run's path otherwise).
                        os.sched_yield()
                        spawn()
                elif fd in children:
                    pid = children.pop(fd)
                    poller.unregister(fd)
                    try:
                        _, status, ru = os.wait4(pid, 0)
                    except ChildProcessError:
                        status, ru = -1, None
                    os.close(fd)
                    ctrl.sendall(json.dumps({
                        "t": "exit", "pid": pid, "status": status,
                        "utime": ru.ru_utime if ru else 0.0, "stime": ru.ru_stime if ru else 0.0,
                        "maxrss": ru.ru_maxrss * 1024 if ru else 0}).encode())
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        for fd, pid in children.items():
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


if __name__ == "__main__":
    main()
