"""Process confinement for the restricted runtime: `ProcessDriver` (``isolation="process"``).

Each run executes in a child process forked from a warm zygote (`runtimes.process.zygote`,
a fresh interpreter started once per driver, never a fork of this multi-threaded host):

- the zygote sits in its own network namespace (only ``lo``, down) and, where the kernel
  has Landlock, may only read the Python stdlib, site-packages and the ``runtimes`` package;
- each child is pre-forked and pre-warmed (it already ran a dummy restricted job), dropped
  to a dedicated unprivileged uid (root hosts), and has loaded a seccomp allowlist (default
  EPERM; no sockets, exec, process or thread creation, ptrace, mounts, bpf, io_uring, ...)
  *before* it is handed a job;
- per run the host sends, with the job, the rlimits the child sets on itself before running
  the code: AS and DATA at the warm child's size (/proc/<pid>/statm, read once per zygote:
  all children are identical) + ``memory_bytes`` -- RLIMIT_AS counts the interpreter's own
  ~100 MiB of mappings, so an absolute ``memory_bytes`` would be meaningless -- CPU at
  ceil(used + ``cpu_seconds``) whole seconds (SIGXCPU; hard = soft + 1 s, SIGKILL), NOFILE
  64, FSIZE 0, CORE 0, NPROC 0 (soft == hard except CPU; the child is already unprivileged,
  so the guest can lower them but never raise them). The host cannot set them from outside
  with prlimit(2): that needs CAP_SYS_RESOURCE, which this VM's root lacks;
- per run the child also arms ``setitimer(ITIMER_PROF)`` with ``cpu_seconds`` (+10 ms, so the
  language layer's own check usually reports first): SIGPROF, whose default action the child
  cannot change (seccomp denies ``rt_sigaction``), ends it within a scheduler tick of its
  budget, where RLIMIT_CPU alone would step in whole seconds. A guest without its language
  layer could re-arm that timer, so the host also reads the child's CPU clock once the budget
  has passed on the wall clock, and kills it past ``cpu_seconds`` + 30 ms;
- usage: CPU time and peak RSS (``ru_maxrss``, which includes the ~16 MiB the child
  inherits) come from the child's own ``getrusage`` when it reports, and from the zygote's
  ``wait4`` when it dies; a compromised child could misreport its own usage, not its limits;
- while a fresh run is the driver's only one in flight, the host pins its child to the CPU of
  the thread that hands it the job (when that CPU is one of the zygote's), and gives it back the
  zygote's CPUs after 5 ms (`ChildHandle.pin_here`): the child then wakes where that thread goes
  to sleep instead of on an idle vCPU, and a long run is spread over the CPUs again. A session's
  child is never pinned (it would stay pinned between runs shorter than the pin; unpinning it
  at each run's end costs more than the pin saves);
- capability calls come back over that channel; the host answers them through
  ``job.bridge`` (capabilities and secrets never enter the child);
- at the wall deadline the host SIGKILLs the child through its pidfd; a death by signal is
  mapped to ``limit_exceeded`` (cpu, wall, memory) or ``internal``; the pool replaces the
  child and keeps serving;
- at the end of every fresh run (and when a session closes or loses its child) the host
  SIGKILLs the child through its pidfd and waits until the zygote has reaped it, whatever the
  child reported: a ``done`` frame is the child's word, not proof that it stopped.

``Outcome.layers`` lists only the layers actually in force for that run; a layer in
``require`` that cannot be applied raises `IsolationUnavailable` at construction.

Modules: `sandbox.process.driver` (the driver and its sessions: runs, outcomes, deaths),
`sandbox.process.zygote_client` (starting the zygote, collecting confined spares),
`sandbox.process.child_handle` (one child's channel, pidfd, kill and reap) and
`sandbox.process.rlimits` (the per-run rlimit plan).
"""

from sandbox.process.driver import DEFAULT_UID, ProcessDriver, ProcessSession
from sandbox.process.rlimits import rlimit_plan

__all__ = ["DEFAULT_UID", "ProcessDriver", "ProcessSession", "rlimit_plan"]
