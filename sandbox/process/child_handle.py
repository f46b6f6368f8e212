"""One confined child of the zygote as the host sees it: its channel, its pidfd, its end.

A `ChildHandle` is handed out by `sandbox.process.zygote_client.ZygoteClient` once the child
reported ``ready`` (confined and waiting); the driver writes the job and reads the child's
frames through it, and ends it (SIGKILL through the pidfd, then waiting until the zygote has
reaped it).
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import select
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

from runtimes import wire
from runtimes.process.framing import MAX_FRAME, ChannelClosed, decode, encode

if TYPE_CHECKING:
    from sandbox.process.zygote_client import ZygoteClient

EXIT_TIMEOUT = 5.0
"""How long to wait for the zygote to report a child's exit before going on in the background."""
_RECV_CHUNK = 1 << 16
KILLED_EXIT_TIMEOUT = 0.25
"""How long to wait for the usage of a child the host killed (the run's result does not wait for more)."""
_REAP_POLL_SLICE = 0.01
"""A wait for a reaped child's pidfd to hang up checks the zygote's exit report this often."""
_REAP_HANGS_UP = False
"""Whether this kernel reports a reaped child's pidfd as hung up (pidfs, Linux 6.9+); learned from
the first child whose reaping the zygote reported (its pidfd polled after that report). Process-wide
and set at most once, from False to True: the kernel does not change under the process, and while
it reads False a wait only takes the slower path through the zygote's report."""


PIN_SECONDS = 0.005
"""How long a fresh run's child stays pinned to the CPU of the host thread that handed it the job
(`ChildHandle.pin_here`) before it gets its CPUs back (`ChildHandle.unpin`)."""
_pinning = True
"""Whether pinning is tried: turned off (process-wide) the first time the kernel refuses it."""
_libc = ctypes.CDLL(None, use_errno=True)
_sched_getcpu = _libc.sched_getcpu
_sched_getcpu.restype = ctypes.c_int
_sched_getcpu.argtypes = ()


def _hung_up(fd: int, timeout_ms: int) -> bool:
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & select.POLLHUP for _fd, events in poller.poll(timeout_ms))


def reported_seconds(value: object) -> float | None:
    """A number of seconds from the child's report (its word, never trusted): ``value`` as a
    finite non-negative float; None when it is not a number (a bool included) or out of range
    (NaN, infinite, negative, or an int too large for a float). Never raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class FrameTooLarge(ChannelClosed):
    """The child sent a message over the size, node or depth cap (it was not parsed)."""


class ChildHandle:
    """One child of the zygote, as the host sees it: its channel and its pidfd."""

    def __init__(self, zygote: "ZygoteClient", pid: int, chan: socket.socket, pidfd: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.chan = chan
        self.pidfd = pidfd
        self.ready: dict | None = None
        self.exited = threading.Event()
        self.exit_info: dict | None = None
        self.kill_reason: str | None = None  # "wall", "cpu", "cancelled", "protocol" or "ended" once killed
        self.closed = False
        self.cpu_total = 0.0
        self.limits_plan: dict[int, tuple[int, int]] | None = None
        self.pinned = False
        self._buf = bytearray()  # bytes read from the channel, not yet returned as frames

    # -- channel -------------------------------------------------------------------------
    def _fill(self, size: int, deadline: float) -> None:
        """Read until the buffer holds ``size`` bytes. A timeout keeps what was read, so the
        next `recv` resumes the same frame (`TimeoutError`, `ChannelClosed` otherwise)."""
        buf = self._buf
        while len(buf) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.chan.settimeout(remaining)
            try:
                chunk = self.chan.recv(min(max(size - len(buf), _RECV_CHUNK), 1 << 20))
            except socket.timeout:
                raise TimeoutError from None
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not chunk:
                raise ChannelClosed("child closed its channel")
            buf += chunk

    def recv(self, deadline: float, max_frame: int = MAX_FRAME) -> dict:
        """One message from the child, parsed within the wire caps (`FrameTooLarge` over them).

        Raises `TimeoutError` at ``deadline`` without losing a partly read frame: calling again
        (a later deadline) returns it. One ``recv`` usually reads a whole small frame."""
        self._fill(4, deadline)
        size = int.from_bytes(self._buf[:4], "big")
        if size > max_frame:
            raise FrameTooLarge(f"the worker sent a {size}-byte message (cap {max_frame} bytes)")
        self._fill(4 + size, deadline)
        body = bytes(self._buf[4:4 + size])
        del self._buf[:4 + size]
        try:
            return decode(body, max_frame)
        except wire.ValueTooLarge as exc:
            raise FrameTooLarge(f"the worker sent a message over the wire caps: {exc}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChannelClosed(f"child sent a malformed frame: {exc}") from None

    def cpu_clock(self, *, check_alive: bool = True) -> float | None:
        """The child's CPU time (user + system) from its process CPU clock, read from outside;
        None when the clock is gone or (``check_alive``) the child has exited, as its pid may
        then name another process."""
        try:
            value = time.clock_gettime((~self.pid << 3) | 2)  # CPUCLOCK_SCHED of the process
        except OSError:
            return None
        return value if not check_alive or self.alive() else None

    def send(self, message: dict, deadline: float | None = None, *, pin: bool = False) -> None:
        """Write ``message``; raises `OSError` (``TimeoutError``) if the child has not taken it
        all by ``deadline``. With ``pin``, the child is first pinned to this thread's CPU
        (`pin_here`: a job, which this thread then waits on)."""
        frame = encode(message)
        if pin:
            self.pin_here()
        self.chan.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
        self.chan.sendall(frame)

    def wait_ready(self, deadline: float) -> dict:
        if self.ready is None:
            msg = self.recv(deadline)
            if msg.get("t") != "ready":
                raise ChannelClosed(f"expected ready, got {msg.get('t')!r}")
            self.ready = msg
            self.cpu_total = reported_seconds(msg.get("cpu")) or 0.0
        return self.ready

    # -- placement -----------------------------------------------------------------------
    def pin_here(self) -> None:
        """Keep the child on the CPU this thread runs on, best effort; call `unpin` once the
        run has lasted `PIN_SECONDS`.

        The thread is about to hand the child a job and sleep until it answers. Pinned, the
        child wakes on this CPU, where the thread is going to sleep, instead of on the other,
        idle one: on a VM, waking an idle (halted) vCPU costs the hypervisor's wake-up on the run's
        path, and so do the later wake-ups that follow the child (its exit, the zygote's reap).
        The pin is lifted after `PIN_SECONDS` so that a long run, or several at once, are spread
        over the CPUs again. Nothing is done when this thread's CPU is not one of the zygote's
        (the child may not run there) or when the child has exited: its pid is checked against
        its pidfd right before the call, since once reaped the pid may name another process.
        Pinning is off for good once the kernel refuses it (EPERM).
        """
        global _pinning
        if not _pinning or not self.alive():
            return
        cpu = _sched_getcpu()
        if cpu < 0 or cpu not in self.zygote.cpus:
            return
        try:
            os.sched_setaffinity(self.pid, (cpu,))
        except OSError as exc:
            if exc.errno == errno.EPERM:
                _pinning = False
            return
        self.pinned = True

    def unpin(self) -> None:
        """Give a pinned child back the CPUs it had (the zygote's, re-read once if they no longer
        exist: `ZygoteClient.refresh_cpus`); nothing if it is not pinned or has exited (its pid
        is checked against its pidfd right before each call, as in `pin_here`)."""
        if not self.pinned:
            return
        self.pinned = False
        for _attempt in range(2):
            if not self.alive():
                return
            try:
                os.sched_setaffinity(self.pid, self.zygote.cpus)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.zygote.refresh_cpus():
                    return

    # -- lifecycle -----------------------------------------------------------------------
    def kill(self, reason: str = "protocol") -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        if not self.closed:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass

    def alive(self) -> bool:
        """False once the child has exited (its pidfd turns readable), even before it is reaped."""
        if self.closed or self.exited.is_set():
            return False
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> dict | None:
        self.exited.wait(timeout)
        return self.exit_info

    def end(self, timeout: float = EXIT_TIMEOUT) -> None:
        """Kill the child, wait until the zygote has reaped it, and close it. After ``timeout``
        the wait goes on in the background (the child is already sent SIGKILL).

        Used at the end of every fresh run and session, whatever the child reported: a child
        whose language layer broke can write its own ``done`` frame and keep running, so its
        report is never taken as proof that it exited.
        """
        if self.closed:
            return
        if not self.exited.is_set():
            self.kill("ended")
            if not self._wait_reaped(timeout):  # killed, not reaped yet: finish off the run's path
                threading.Thread(target=self._close_when_reaped, name="sandbox-reap", daemon=True).start()
                return
        self.close()

    def _wait_reaped(self, timeout: float) -> bool:
        """True once the zygote has reaped the child, False at ``timeout``.

        Where the kernel reports a reaped process's pidfd as hung up (and wakes its pollers
        then), the wait is a poll of the pidfd: this thread wakes when the zygote reaps the child,
        instead of after the zygote's exit report has reached the reader thread. The hang-up comes
        from the kernel, which the child cannot forge: it means the process is gone, whatever the
        child wrote. Other kernels wait for that report (`exited`); so does a poll that saw no
        hang-up within a slice.
        """
        global _REAP_HANGS_UP
        if not _REAP_HANGS_UP:
            if not self.exited.wait(timeout):
                return False
            _REAP_HANGS_UP = _hung_up(self.pidfd, 0)
            return True
        deadline = time.monotonic() + timeout
        while not self.exited.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if _hung_up(self.pidfd, max(1, int(min(remaining, _REAP_POLL_SLICE) * 1000))):
                return True
        return True

    def _close_when_reaped(self) -> None:
        self.exited.wait(EXIT_TIMEOUT)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.chan.close()
            os.close(self.pidfd)
