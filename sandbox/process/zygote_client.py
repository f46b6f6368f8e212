"""The host's side of the zygote (`runtimes.process.zygote`): start it, collect its spares.

`ZygoteClient` starts the zygote (a fresh interpreter, never a fork of this multi-threaded
host), and its reader thread collects what the zygote sends: each new spare (its channel and
pidfd), whose ``ready`` message the thread reads before the spare joins the queue, so a run
takes a child that is already confined and waiting; and each child's exit status and usage.
Spares are replaced on request (`ZygoteClient.replenish`, one ``F`` per spare), after a run
is over, so the fork and warm-up of a replacement never sit on a run's path.
"""

from __future__ import annotations

import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time

from runtimes.process.framing import ChannelClosed
from sandbox.errors import IsolationUnavailable
from sandbox.process.child_handle import EXIT_TIMEOUT, ChildHandle

_PAGE = os.sysconf("SC_PAGE_SIZE")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 60.0
"""How long the zygote (and the first child) may take to start."""
_READY_READ_TIMEOUT = 1.0
"""How long the reader waits for the rest of a ``ready`` message once a spare's channel is readable."""
_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
"""numpy's BLAS must not start a thread pool in the zygote (it forks) or try to in a child (seccomp)."""


class ZygoteClient:
    """The zygote process, its control socket and the reader thread that collects spares."""

    def __init__(self, *, spares: int, uid: int | None, allow_raw: bool, disable: frozenset[str],
                 modules: tuple[str, ...] = (), capabilities: tuple[str, ...] = ()) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        boot = (f"import sys; sys.path.insert(0, {_ROOT!r}); "
                "from runtimes.process.zygote import main; main()")
        cmd = [sys.executable, "-I", "-B", "-c", boot, "--ctrl-fd", str(theirs.fileno()), "--spares", str(spares)]
        if uid is not None:
            cmd += ["--uid", str(uid), "--gid", str(uid)]
        if allow_raw:
            cmd.append("--allow-raw")
        cmd += [f"--no-{layer}" for layer in sorted(disable & {"seccomp", "landlock", "netns"})]
        for name in modules:
            cmd += ["--module", name]
        for name in capabilities:
            cmd.append(f"--capability={name}")
        debug = os.environ.get("SANDBOX_PROCESS_DEBUG")
        self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=None if debug else subprocess.DEVNULL,
                                     env={"LC_ALL": "C.UTF-8", **_ONE_THREAD}, cwd="/", close_fds=True)
        theirs.close()
        self.sock = ours
        self.sock.settimeout(START_TIMEOUT)
        try:
            hello = json.loads(self.sock.recv(1 << 16) or b"null")
        except (OSError, ValueError):
            hello = None
        finally:
            self.sock.settimeout(None)
        if not isinstance(hello, dict) or hello.get("t") != "hello":
            self.close()
            raise IsolationUnavailable("the process zygote failed to start (set SANDBOX_PROCESS_DEBUG=1 to see why)")
        self.hello = hello
        self.pid = int(hello["pid"])
        # The CPUs the zygote and every child it forks may run on: a pinned child gets them back.
        self.cpus = frozenset(os.sched_getaffinity(self.pid))
        self.spares: queue.Queue[ChildHandle | None] = queue.Queue()
        self._pending = spares  # forks asked for whose child has not joined ``spares`` yet
        self._settled = threading.Condition()
        self.children: dict[int, ChildHandle] = {}
        self.lock = threading.Lock()
        self.dead = False
        self.size: tuple[int, int] | None = None
        self.reader = threading.Thread(target=self._read_loop, name="sandbox-zygote-reader", daemon=True)
        self.reader.start()

    def _read_loop(self) -> None:
        """Collect spares and exits from the zygote; read each spare's ``ready`` here, so a run
        takes a child that is already confined and waiting (one write and one read per run)."""
        poller = select.poll()
        ctrl = self.sock.fileno()
        poller.register(ctrl, select.POLLIN)
        warming: dict[int, ChildHandle] = {}  # channel fd -> spare whose ready message has not come yet
        try:
            while True:
                for fd, _event in poller.poll():
                    if fd != ctrl:
                        child = warming.pop(fd)
                        poller.unregister(fd)
                        try:
                            child.wait_ready(time.monotonic() + _READY_READ_TIMEOUT)
                        except (ChannelClosed, TimeoutError):
                            pass  # `ProcessDriver._take` finds it not ready, ends and replaces it
                        self.spares.put(child)
                        with self._settled:
                            self._pending -= 1
                            self._settled.notify_all()
                        continue
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 2)
                    if not data:
                        for fd_ in fds:
                            os.close(fd_)
                        return
                    msg = json.loads(data)
                    if msg.get("t") == "spare" and len(fds) == 2:
                        child = ChildHandle(self, int(msg["pid"]), socket.socket(fileno=fds[0]), fds[1])
                        with self.lock:
                            self.children[child.pid] = child
                        warming[child.chan.fileno()] = child
                        poller.register(child.chan, select.POLLIN)
                    elif msg.get("t") == "exit":
                        with self.lock:
                            gone = self.children.pop(int(msg["pid"]), None)
                        if gone is not None:
                            gone.exit_info = msg
                            gone.exited.set()
                    else:
                        for fd_ in fds:
                            os.close(fd_)
        except (OSError, ValueError):
            pass
        finally:
            self.dead = True
            with self.lock:
                orphans = list(self.children.values())
                self.children.clear()
            for child in orphans:
                child.exited.set()
            for child in warming.values():
                child.close()
            self.spares.put(None)
            with self._settled:
                self._settled.notify_all()

    def refresh_cpus(self) -> bool:
        """Re-read `cpus` from the zygote (the CPUs it may run on changed, e.g. its cpuset):
        True when they changed, False when they did not or cannot be read (the zygote is gone)."""
        if self.dead:
            return False
        try:
            cpus = frozenset(os.sched_getaffinity(self.pid))
        except OSError:
            return False
        changed, self.cpus = cpus != self.cpus, cpus
        return changed

    def take(self, timeout: float) -> ChildHandle:
        """The next pre-forked child. Call `replenish` once the run is over."""
        if self.dead:
            raise ChannelClosed("the zygote is gone")
        try:
            child = self.spares.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no process worker became available in time") from None
        if child is None:
            self.spares.put(None)
            raise ChannelClosed("the zygote is gone")
        return child

    def replenish(self) -> None:
        """Ask the zygote for one more spare (done after a run, so the fork and warm-up of the
        replacement do not compete with the run for CPU; spares = workers + 1 covers the next run)."""
        with self._settled:
            try:
                self.sock.send(b"F")
            except OSError:
                return
            self._pending += 1

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every child asked of the zygote has been forked, has warmed up and waits
        in ``spares`` (so no fork or warm-up is running). True once so; False at ``timeout``
        (seconds, None: no limit) or when the zygote is gone."""
        with self._settled:
            return self._settled.wait_for(lambda: self.dead or self._pending <= 0, timeout) and not self.dead

    def child_size(self, pid: int) -> tuple[int, int]:
        """(VmSize, data) of a warm child, read from /proc once per zygote: every child is forked
        from the same frozen zygote and ran the same warm-up, so they have the same size."""
        if self.size is None:
            self.size = _statm(pid)
        return self.size

    def put_back(self, child: ChildHandle) -> None:
        self.spares.put(child)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        reader = getattr(self, "reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=EXIT_TIMEOUT)
        spares = getattr(self, "spares", None)
        while spares is not None:
            try:
                child = spares.get_nowait()
            except queue.Empty:
                break
            if child is not None:
                child.close()


def _statm(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/statm", "rb") as handle:
        fields = handle.read().split()
    return int(fields[0]) * _PAGE, int(fields[5]) * _PAGE
