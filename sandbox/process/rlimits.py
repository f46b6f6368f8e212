"""The rlimits a confined child sets on itself before each run (`rlimit_plan`)."""

from __future__ import annotations

import math
import resource


def rlimit_plan(*, vm_bytes: int, data_bytes: int, cpu_used: float, memory_bytes: int, cpu_seconds: float,
                nofile: int = 64, nproc: bool = True, cpu_hard: bool = True) -> dict[int, tuple[int, int]]:
    """The rlimits a child sets on itself before a run, as ``{resource: (soft, hard)}``.

    RLIMIT_AS counts the whole virtual size of the process, and the child is a forked CPython
    that already maps ~100+ MiB of interpreter, libraries and arenas. So the ceiling is
    *relative*: ``current VmSize + memory_bytes``; RLIMIT_DATA likewise from the current data
    segment size. The guest can therefore allocate about ``memory_bytes`` more than the warm
    child already holds. RLIMIT_CPU counts seconds since the child was forked, in whole
    seconds: soft = ceil(cpu already used + cpu_seconds) gives SIGXCPU, hard = soft + 1
    gives SIGKILL if SIGXCPU is somehow survived. Sessions pass ``cpu_hard=False``: the CPU
    budget is cumulative and an unprivileged child could never raise a hard limit again, so
    a session relies on the soft limit plus the host's wall-clock kill.
    """
    cpu_soft = max(1, math.ceil(cpu_used + cpu_seconds))
    plan = {
        resource.RLIMIT_AS: (vm_bytes + memory_bytes, vm_bytes + memory_bytes),
        resource.RLIMIT_DATA: (data_bytes + memory_bytes, data_bytes + memory_bytes),
        resource.RLIMIT_CPU: (cpu_soft, cpu_soft + 1 if cpu_hard else resource.RLIM_INFINITY),
        resource.RLIMIT_NOFILE: (nofile, nofile),
        resource.RLIMIT_FSIZE: (0, 0),
        resource.RLIMIT_CORE: (0, 0),
    }
    if nproc:
        plan[resource.RLIMIT_NPROC] = (0, 0)
    return plan
