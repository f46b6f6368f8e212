/* _handoff: a flag that one thread posts and one other thread waits for, used by
sandbox.call_threads to hand a capability call to a host call thread and its result back.

A waiter checks the flag and, when nothing was posted, registers itself as sleeping and sleeps
on a pipe with a timeout; a post writes one byte to that pipe only while the waiter sleeps, so
a post that comes first costs no system call on either side. post_and_wait() posts one flag and
waits for another with the GIL released across both: the thread it wakes finds the GIL free
instead of going to sleep on it.

Waiting by spinning (on the flag, with the GIL released) was measured on a 2-CPU host shared
with other work and lost there: a waiter spinning on the CPU its poster needs delays it.
Yielding is different: a flag made with yield_us > 0 has its waiter give its CPU away
(sched_yield) and check the flag again, for up to that many microseconds, before it sleeps. The poster, woken on the waiter's CPU (see pin), runs there in the
waiter's place, and a post that comes within the window costs no wake-up: on a 2-vCPU VM a
sleeping waiter is often woken on the other, idle vCPU, which cost about 20 us more per call
that runs 10 us or longer. Only the flags a caller waits on for a call's end use it
(`sandbox.call_threads`). The waiter stops yielding as soon as it stops helping:
- a yield that returns at once means nothing else runs on this CPU (the poster is blocked, in
  I/O or asleep, or runs elsewhere): the waiter sleeps, instead of spinning on its CPU;
- a yield after which the waiter finds no post, or finds one made more than the whole window
  earlier, and which lasted longer than the window, means another task held this CPU for its
  time slice (a busy host), during which a post could not wake the waiter: it stops, and the
  next SKIP_AFTER_CONTENTION waits of this flag do not yield at all. (A poster that ran its own
  long work on this CPU and then posted is not contention: the waiter finds its post fresh.)
The window is at most 1 ms, and the time spent yielding is taken off the wait's timeout.

A flag made with pin=True moves its waiter (one of our call threads) to the CPU of the thread
that posts it with post_and_wait, for the wake-up only: on a 2-vCPU VM a pipe wake-up often
lands the woken thread on the other, idle vCPU, which costs about 10 us more per hand-off than
staying on the poster's CPU, where the poster is about to sleep. The waiter gives itself back
the CPUs it had as soon as it wakes, before it returns to run anything, so the code it runs (a
host capability, and any thread or process that code starts) never inherits the pin. Pinning
turns itself off when the kernel refuses it.

Flag states: EMPTY (nothing posted), POSTED (posted, not yet consumed), SLEEPING (the waiter
sleeps on the pipe). One waiter per flag at a time; any number of posters.
*/
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <sched.h>
#include <sys/syscall.h>
#include <stdatomic.h>
#include <stdint.h>
#include <limits.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#define SKIP_AFTER_CONTENTION 1024
#define IDLE_YIELD_NS 2000 /* a yield this short ran nothing else on the CPU */

#define EMPTY 0
#define POSTED 1
#define SLEEPING 2

typedef struct {
    PyObject_HEAD
    atomic_int state;
    int fd; /* non-blocking write end of the waiter's pipe; -1 once closed */
    int pin; /* 1: wake the waiter on the poster's CPU (see above) */
    int yield_us; /* the waiter yields its CPU for up to this long before it sleeps (see above) */
    int skip; /* waits left that do not yield (after contention); the waiter's alone */
    _Atomic int64_t posted_ns; /* when the last post found the flag not posted (CLOCK_MONOTONIC) */
    atomic_int cpu; /* the one CPU the waiter is pinned to; -1 when it has its own CPUs */
    atomic_int tid; /* the waiter's thread id, once it has waited; 0 before */
    cpu_set_t own; /* the waiter's CPUs before any pinning */
} Flag;

/* The waiter records who it is (once), so a poster can pin it. Needs no GIL. */
static void note_waiter(Flag *flag) {
    if (!flag->pin || atomic_load(&flag->tid) != 0) return;
    if (sched_getaffinity(0, sizeof flag->own, &flag->own) != 0) {
        flag->pin = 0;
        return;
    }
    atomic_store(&flag->tid, (int)syscall(SYS_gettid));
}

/* Move the waiter of ``flag`` to the calling thread's CPU for its next wake-up. Under the GIL. */
static void pin_to_here(Flag *flag) {
    int tid = atomic_load(&flag->tid);
    if (!flag->pin || tid == 0) return;
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &flag->own)) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(tid, sizeof one, &one) == 0) atomic_store(&flag->cpu, cpu);
    else flag->pin = 0;
}

/* The waiter, awake: back to its own CPUs if a poster pinned it. Needs no GIL. */
static void unpin_self(Flag *flag) {
    if (atomic_exchange(&flag->cpu, -1) >= 0 && sched_setaffinity(0, sizeof flag->own, &flag->own) != 0)
        flag->pin = 0;
}

static int64_t now_ns(void) {
    struct timespec now;
    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) return -1;
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* Post ``flag``; wakes its waiter when it sleeps. Needs no GIL. */
static void post_nogil(Flag *flag) {
    if (flag->yield_us > 0 && atomic_load(&flag->state) != POSTED) atomic_store(&flag->posted_ns, now_ns());
    if (atomic_exchange(&flag->state, POSTED) == SLEEPING && flag->fd >= 0) {
        char byte = 'x';
        ssize_t written = write(flag->fd, &byte, 1); /* a full pipe already wakes the waiter */
        (void)written;
    }
}

/* The waiter's side before it sleeps: 1 when a post was there (consumed now); 0 when the
waiter is now registered as sleeping (the next post writes to its pipe). Needs no GIL. */
static int arm_nogil(Flag *flag) {
    int expected = EMPTY;
    if (atomic_compare_exchange_strong(&flag->state, &expected, SLEEPING)) return 0;
    /* Defensive, unreachable under the one-waiter contract (wait_nogil leaves the flag EMPTY):
    a second waiter finding SLEEPING sleeps too instead of consuming a post that is not there. */
    if (expected == SLEEPING) return 0;
    atomic_store(&flag->state, EMPTY);  /* POSTED: consume it */
    return 1;
}

static PyObject *Flag_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"", "pin", "yield_us", NULL};
    int fd, pin = 0, yield_us = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|$pi:Flag", names, &fd, &pin, &yield_us)) return NULL;
    if (yield_us < 0 || yield_us > 1000) {
        PyErr_SetString(PyExc_ValueError, "Flag: yield_us must be between 0 and 1000");
        return NULL;
    }
    Flag *self = (Flag *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    atomic_init(&self->state, EMPTY);
    atomic_init(&self->tid, 0);
    self->fd = fd;
    self->pin = pin;
    self->yield_us = yield_us;
    self->skip = 0;
    atomic_init(&self->posted_ns, 0);
    atomic_init(&self->cpu, -1);
    CPU_ZERO(&self->own);
    return (PyObject *)self;
}

static PyObject *Flag_post(Flag *self, PyObject *unused) {
    post_nogil(self);
    Py_RETURN_NONE;
}

static PyObject *Flag_close(Flag *self, PyObject *unused) {
    self->fd = -1;
    self->pin = 0; /* its waiter's thread id may be reused by another thread once it exits */
    Py_RETURN_NONE;
}

static PyMethodDef Flag_methods[] = {
    {"post", (PyCFunction)Flag_post, METH_NOARGS, "Post the flag; wake its waiter when it sleeps."},
    {"close", (PyCFunction)Flag_close, METH_NOARGS, "Forget the pipe (it is being closed): posts write nothing and pin nothing."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FlagType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sandbox._handoff.Flag",
    .tp_basicsize = sizeof(Flag),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Flag(fd, *, pin=False, yield_us=0): one waiter waits for a post, sleeping on the pipe whose write "
              "end is fd; with pin, post_and_wait wakes the waiter on the poster's CPU; with yield_us, the waiter "
              "first yields its CPU for up to that many microseconds.",
    .tp_new = Flag_new,
    .tp_methods = Flag_methods,
};

/* Yield the CPU until ``flag`` is posted, its window (yield_us) has passed, or yielding stops
helping (see above). Returns the nanoseconds spent. Needs no GIL. */
static int64_t yield_until_posted(Flag *flag) {
    int64_t window = (int64_t)flag->yield_us * 1000, start = now_ns(), before = start, after = start;
    if (start < 0) return 0;
    while (atomic_load(&flag->state) != POSTED) {
        sched_yield();
        after = now_ns();
        if (after < 0) return 0;
        int64_t took = after - before;
        int posted = atomic_load(&flag->state) == POSTED;
        if (took > window && (!posted || after - atomic_load(&flag->posted_ns) > window)) {
            flag->skip = SKIP_AFTER_CONTENTION;
            break;
        }
        if (posted || took < IDLE_YIELD_NS || after - start >= window) break;
        before = after;
    }
    return after - start;
}

/* Wait for a post of ``flag``, sleeping on ``fd`` (the read end of its pipe) at most
``timeout_ms`` (negative: no limit), after yielding first when the flag says so. 1: a post was
consumed; 0: none (the time ran out, a signal came or a stale byte woke the sleep). The flag is
left EMPTY either way. Needs no GIL. */
static int wait_nogil(Flag *flag, int fd, int timeout_ms) {
    note_waiter(flag);
    if (flag->yield_us > 0 && timeout_ms != 0) {
        if (flag->skip > 0) {
            flag->skip--;
        } else {
            int64_t spent_ms = yield_until_posted(flag) / 1000000;
            if (timeout_ms > 0) timeout_ms = spent_ms >= timeout_ms ? 0 : timeout_ms - (int)spent_ms;
        }
    }
    int got = arm_nogil(flag);
    if (!got) {
        struct pollfd ready = {.fd = fd, .events = POLLIN};
        if (poll(&ready, 1, timeout_ms) > 0) {
            char drain[64]; /* the wake-up byte, and stale ones from earlier sleeps */
            ssize_t read_bytes = read(fd, drain, sizeof drain);
            (void)read_bytes;
        }
        got = atomic_exchange(&flag->state, EMPTY) == POSTED;
    }
    if (flag->pin) unpin_self(flag);
    return got;
}

static PyObject *post_and_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || (args[0] != Py_None && !PyObject_TypeCheck(args[0], &FlagType))
        || !PyObject_TypeCheck(args[1], &FlagType)) {
        PyErr_SetString(PyExc_TypeError, "post_and_wait(post: Flag | None, wait: Flag, fd: int, timeout_ms: int)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[2]), timeout_ms = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "post_and_wait: fd out of range");
        return NULL;
    }
    if (timeout_ms > INT_MAX) timeout_ms = INT_MAX;
    if (timeout_ms < 0) timeout_ms = -1;
    Flag *post = args[0] == Py_None ? NULL : (Flag *)args[0], *wait = (Flag *)args[1];
    int got;
    if (post != NULL) pin_to_here(post);
    Py_BEGIN_ALLOW_THREADS
    if (post != NULL) post_nogil(post);
    got = wait_nogil(wait, (int)fd, (int)timeout_ms);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(got);
}

static PyMethodDef module_methods[] = {
    {"post_and_wait", (PyCFunction)(void (*)(void))post_and_wait, METH_FASTCALL,
     "post_and_wait(post, wait, fd, timeout_ms): post ``post`` (unless None), then wait for a post of "
     "``wait``, sleeping on fd (the read end of its pipe) at most timeout_ms, all with the GIL released. "
     "True when a post was consumed; False when none came (time out, signal, stale wake-up)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_handoff", "Flags for handing work between two threads.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__handoff(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyModule_AddType(module, &FlagType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
