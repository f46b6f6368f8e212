"""Confinement primitives for the process runtime: netns, Landlock, uid drop, seccomp, prctl.

Everything here is Linux-only and uses ctypes over libc (plus `pyseccomp` over the system
libseccomp). Each function applies its layer or raises (`ConfinementError` for a failed
system call), so the caller can report exactly which layers are in force.

Layers and who applies them (see `runtimes.process.zygote` and `runtimes.process.child`):

- ``netns``    zygote, once: ``unshare(CLONE_NEWNET)`` (with ``CLONE_NEWUSER`` first when not
               root). The new namespace has only a loopback device, and it is down.
- ``landlock`` zygote, once: read-only access to the Python stdlib, site-packages and the
               ``runtimes`` package; no writes anywhere; TCP bind/connect denied (ABI >= 4);
               signals and abstract unix sockets scoped to the domain (ABI >= 6).
- ``uid``      child: drops to a dedicated unprivileged uid/gid (root hosts only), so that
               RLIMIT_NPROC=0 holds (root is exempt from NPROC) and no capability remains.
- ``seccomp``  child: an allowlist, default ``EPERM`` (see `build_seccomp_filter`).
- ``cpu timer`` child, per run: ``setitimer(ITIMER_PROF)`` armed with the run's CPU budget
               when the job arrives (`arm_cpu_timer`); SIGPROF's default action ends the child
               within a scheduler tick of the budget. RLIMIT_CPU (whole seconds) stays as the
               backstop, and the host also reads the child's CPU clock (a guest without its
               language layer could disarm the timer; it cannot stop the host's clock read).
- ``rlimits``  the child sets them on itself when the job arrives, from a plan the host
               computed (`sandbox.process.rlimit_plan`; the host reads the child's size from /proc/<pid>/statm).
               The child is already unprivileged by then and soft == hard for every limit but
               CPU, so a guest can only lower them (seccomp allows ``prlimit64`` on self only).
               Setting them from the host with ``prlimit(2)`` would be nicer but needs
               CAP_SYS_RESOURCE, which hosts (including this VM's root) often lack.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
import signal
import sys

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446


class ConfinementError(OSError):
    """A confinement layer could not be applied."""


def _check(res: int, what: str) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise ConfinementError(err, f"{what}: {os.strerror(err)}")
    return res


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                              ctypes.c_ulong(arg5)), "prctl")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_parent_death_signal(signum: int) -> None:
    prctl(PR_SET_PDEATHSIG, signum)


# --------------------------------------------------------------------------------------------
# Network namespace


def enter_network_namespace() -> list[str]:
    """Move this (single-threaded) process into a fresh network namespace.

    Root: ``unshare(CLONE_NEWNET)``. Otherwise a user namespace is created first, mapping
    the current uid/gid to itself. Returns the layers applied (``["netns"]`` or
    ``["userns", "netns"]``); raises `ConfinementError` when neither works.
    """
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        return ["netns"]
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        try:
            with open(path, "w") as handle:
                handle.write(text)
        except OSError:
            pass  # the namespace exists either way; the map only affects file ownership display
    return ["userns", "netns"]


def network_interfaces() -> list[tuple[str, bool]]:
    """(name, is_up) for every interface visible in this network namespace."""
    import fcntl
    import socket
    import struct

    result = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            flags = struct.unpack("16sH", fcntl.ioctl(sock.fileno(), 0x8913,  # SIOCGIFFLAGS
                                                      struct.pack("16sH", name.encode(), 0)))[1]
            result.append((name, bool(flags & 1)))
    finally:
        sock.close()
    return result


# --------------------------------------------------------------------------------------------
# Landlock

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    if sys.platform != "linux":
        return 0
    res = _libc.syscall(SYS_landlock_create_ruleset, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(res) if res > 0 else 0


def apply_landlock(read_only_paths: list[str]) -> int:
    """Restrict this process (and its future children) to reading ``read_only_paths``.

    Every filesystem right the kernel knows is handled; only read/execute rights are granted,
    beneath the given paths. TCP bind/connect are handled with no rule (denied) on ABI >= 4;
    signals and abstract unix sockets are scoped to the domain on ABI >= 6. Requires
    no_new_privs (set here). Returns the ABI used; raises `ConfinementError` on failure.
    """
    abi = landlock_abi()
    if abi < 1:
        raise ConfinementError(errno.ENOSYS, "Landlock is not available on this kernel")
    fs = (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_READ_DIR | FS_REMOVE_DIR | FS_REMOVE_FILE
          | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK
          | FS_MAKE_SYM)
    if abi >= 2:
        fs |= FS_REFER
    if abi >= 3:
        fs |= FS_TRUNCATE
    if abi >= 5:
        fs |= FS_IOCTL_DEV
    attr = _RulesetAttr(handled_access_fs=fs,
                        handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
                        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _check(_libc.syscall(SYS_landlock_create_ruleset, ctypes.byref(attr), ctypes.c_size_t(size),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        for path in read_only_paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                is_dir = os.path.isdir(path)
                access = FS_EXECUTE | FS_READ_FILE | (FS_READ_DIR if is_dir else 0)
                rule = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
                _check(_libc.syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH,
                                     ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        set_no_new_privs()
        _check(_libc.syscall(SYS_landlock_restrict_self, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


# --------------------------------------------------------------------------------------------
# uid


def drop_to_uid(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for real, effective and saved ids, with no supplementary groups.

    From root this also clears every capability, so RLIMIT_NPROC applies (root is exempt).
    """
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise ConfinementError(errno.EPERM, "could not drop to the sandbox uid")


# --------------------------------------------------------------------------------------------
# seccomp

ALLOWED_SYSCALLS = (
    # I/O on descriptors the child already holds (its channel to the host)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "lseek", "fstat", "newfstatat",
    "statx", "stat", "lstat", "poll", "ppoll", "select", "pselect6", "dup", "fcntl", "getdents64",
    "readlink", "readlinkat", "access", "faccessat", "faccessat2", "getcwd", "fadvise64",
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore",
    # time, identity, misc
    "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep",
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
    "getgroups", "getrusage", "getrandom", "uname", "sysinfo", "sched_yield", "sched_getaffinity",
    "futex", "rt_sigreturn", "rt_sigprocmask", "sigaltstack", "restart_syscall", "rseq",
    "exit", "exit_group",
    # the per-run CPU timer (`arm_cpu_timer`); SIGPROF keeps its default action (terminate)
    # because rt_sigaction is denied, so re-arming it can only move the kill, never stop it
    "setitimer",
)
"""Syscalls the confined child may make (x86-64 names; names unknown to libseccomp on the
running architecture are skipped). Everything else fails with EPERM."""

DENIED_FOR_THE_RECORD = (
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "sendto", "recvfrom",
    "execve", "execveat", "clone", "clone3", "fork", "vfork", "ptrace", "mount", "umount2", "pivot_root",
    "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    "unshare", "setns", "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "process_vm_readv", "process_vm_writev", "userfaultfd", "perf_event_open", "kexec_load",
    "open_by_handle_at", "name_to_handle_at", "keyctl", "add_key", "request_key",
    "rt_sigaction", "pidfd_open", "pidfd_getfd", "memfd_create", "personality", "seccomp",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "sethostname",
    "setuid", "setgid", "setresuid", "setresgid", "setgroups", "capset", "prctl",
)
"""Not in the allowlist, hence EPERM; listed so tests can assert each one is refused."""

_O_WRITE_MASK = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_TMPFILE", 0)
_TCGETS = 0x5401
_FIONREAD = 0x541B


def build_seccomp_filter():
    """The child's libseccomp filter (not loaded): allowlist, default EPERM.

    Beyond `ALLOWED_SYSCALLS`:
    - ``openat``/``open`` only read-only (no write, create, truncate, append, tmpfile flags);
      Landlock decides which paths;
    - ``ioctl`` only ``TCGETS``/``FIONREAD`` (``isatty`` and buffered reads);
    - ``prlimit64`` only on this process (``pid == 0``) and ``setrlimit``: the child sets its
      per-run limits after the filter is loaded. Without CAP_SYS_RESOURCE (the child is an
      unprivileged uid) it can only lower a hard limit, and every hard limit is set at the
      same time as its soft limit, except RLIMIT_CPU (soft = SIGXCPU, hard = SIGKILL);
    - no ``kill``/``tgkill``/``tkill`` at all: a child cannot signal its siblings (same uid)
      or anything else. ``abort()`` then ends the process by its fallback path, which is
      still a death the host maps to ``internal``.

    The filter does not depend on the pid, so the zygote compiles it to BPF once
    (`compile_seccomp`) and every child loads the bytes with one ``prctl`` (`load_bpf`).

    Thread creation is denied along with process creation: ``clone``/``clone3`` are refused
    whatever their flags. The child is single-threaded by construction and the restricted
    language layer offers no threads; allowing ``CLONE_THREAD`` would add kernel surface and
    a second way to burn CPU for no gain.
    """
    import pyseccomp as seccomp

    flt = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
    for name in ALLOWED_SYSCALLS:
        try:
            flt.add_rule(seccomp.ALLOW, name)
        except (OSError, RuntimeError, ValueError):
            continue
    for name in ("openat", "open"):
        pos = 1 if name == "openat" else 0
        try:
            flt.add_rule(seccomp.ALLOW, name, seccomp.Arg(pos, seccomp.MASKED_EQ, _O_WRITE_MASK, 0))
        except (OSError, RuntimeError, ValueError):
            pass
    for request in (_TCGETS, _FIONREAD):
        flt.add_rule(seccomp.ALLOW, "ioctl", seccomp.Arg(1, seccomp.EQ, request))
    flt.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(0, seccomp.EQ, 0))
    flt.add_rule(seccomp.ALLOW, "getrlimit")
    flt.add_rule(seccomp.ALLOW, "setrlimit")
    return flt


def compile_seccomp() -> bytes:
    """The child's filter as raw BPF (``struct sock_filter[]``), built once by libseccomp."""
    flt = build_seccomp_filter()
    fd = os.memfd_create("sandbox-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb", closefd=True) as handle:
            flt.export_bpf(handle)
        size = os.lseek(fd, 0, os.SEEK_END)
        program = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if not program or len(program) % 8:
        raise ConfinementError(errno.EINVAL, "libseccomp exported an empty or malformed BPF program")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def load_bpf(program: bytes) -> None:
    """Install a compiled seccomp filter on the calling (single-threaded) process."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    set_no_new_privs()
    _check(_libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_SECCOMP)")


def reset_cpu_signals() -> None:
    """Give SIGPROF and SIGXCPU their default action (terminate) and unblock them.

    Called in the zygote before any fork: a disposition of "ignore" or a blocked mask survives
    ``execve`` from the host, and the children can no longer change either once seccomp
    (which denies ``rt_sigaction``) is loaded.
    """
    for signum in (signal.SIGPROF, signal.SIGXCPU):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGPROF, signal.SIGXCPU})


def arm_cpu_timer(seconds: float) -> None:
    """Send this process SIGPROF (default action: terminate) after ``seconds`` more CPU time
    (user + system, all threads); ``0`` disarms. Raises `OSError` if the kernel refuses."""
    signal.setitimer(signal.ITIMER_PROF, max(0.0, float(seconds)))


def apply_rlimits(plan: list[list[int]]) -> None:
    """Apply ``[[resource, soft, hard], ...]`` to this process (hard first lowered with soft)."""
    for res, soft, hard in plan:
        resource.setrlimit(int(res), (int(soft), int(hard)))
