/* _deepstack: call a Python callable on a large, separately mapped C stack, on the calling thread.

run(function, stack_bytes) switches the calling thread to a stack of at least stack_bytes, calls
function() there, switches back and returns its result (or raises its exception). It replaces
handing the call to a worker thread created with that stack size: same stack, no thread switch.

Why switching stacks under a running interpreter is sound on the versions this builds for:

- CPython up to 3.13 never compares C stack addresses: recursion is bounded by counters in the
  thread state, and Python frames (3.11+) live on the thread's heap data stack, not the C stack.
  3.14 checks stack addresses; there SUPPORTED is 0 and callers must use a real thread.
- The switch is strictly LIFO. The callable runs to completion on the deep stack and every C frame
  pushed there (eval loop, _PyCFrame records, C calls) is popped before the switch back; the
  caller's frames below the switch point are untouched meanwhile. So the thread state never holds
  a pointer into a stack that is not live, and the caller resumes exactly where it left.
- The GIL is held across both switches and the thread identity does not change, so thread-locals,
  the allocator cap (armed per thread) and the GIL state all see one ordinary thread. The callable
  may release and re-take the GIL inside; other threads keep their own stacks.
- On 3.11 the Python recursion counter is reset to the full limit for the call and restored after,
  as a new thread would start; on later versions the call inherits the caller's depth (fewer
  levels, never more).
- Signal handlers run on whatever stack is current; the deep stack is an ordinary stack for them.
- The switch itself is, on x86-64, a function call with the stack pointer moved (the old one kept
  in a callee-saved register), and ucontext elsewhere (which also saves and restores the signal
  mask, the same on both stacks since the thread does not change).

Memory: the stack is mmap'd with MAP_NORESERVE (address space only; pages are committed as the
stack is used) and a PROT_NONE guard region below it, so overrunning it is a clean SIGSEGV rather
than a write into another mapping. Each thread keeps its stack for reuse (freed when the thread
exits); a nested run (a run started from inside a run on the same thread) gets a temporary stack.
After a run that went below the top KEEP_BYTES of the stack, or ran longer than LONG_RUN_NS,
the pages below KEEP_BYTES are given back with madvise(MADV_DONTNEED).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#if PY_VERSION_HEX >= 0x030E0000 || defined(Py_GIL_DISABLED)
#define SUPPORTED 0
#else
#define SUPPORTED 1
#endif

#define GUARD_BYTES ((size_t)64 << 10)
#define KEEP_BYTES ((size_t)1 << 20)
#define PROBE_BYTES ((size_t)64 << 10)
#define LONG_RUN_NS ((int64_t)20 * 1000 * 1000)
#define QUICK_RUN_NS ((int64_t)20 * 1000)

typedef struct {
    char *map;          /* the whole mapping: guard region, then the stack */
    size_t map_size;
    size_t stack_size;  /* usable bytes above the guard */
    int busy;           /* a run is on this stack */
} Stack;

/* x86-64 switches the stack pointer directly (below); with AVX-512 the compiler may keep values
   in registers the switch does not declare clobbered, so such builds take ucontext too. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX512F__)
#define DIRECT_SWITCH 1
#endif

typedef struct {
#ifndef DIRECT_SWITCH
    ucontext_t caller;
    ucontext_t guest;
#endif
    PyObject *function;
    PyObject *result;
} Call;

static pthread_key_t stack_key;
static long page_size;
static PyObject *StackUnavailable; /* raised only when the function did not run */

static void unmap_stack(Stack *stack)
{
    if (stack != NULL) {
        munmap(stack->map, stack->map_size);
        free(stack);
    }
}

static void on_thread_exit(void *value)
{
    unmap_stack((Stack *)value);
}

/* A new stack of at least `size` usable bytes, or NULL with a Python exception set. */
static Stack *map_stack(size_t size)
{
    size = (size + (size_t)page_size - 1) & ~((size_t)page_size - 1);
    if (size < 2 * KEEP_BYTES || size > ((size_t)1 << 40)) {
        PyErr_SetString(StackUnavailable, "stack_bytes out of range");
        return NULL;
    }
    Stack *stack = malloc(sizeof(Stack));
    if (stack == NULL) {
        PyErr_SetString(StackUnavailable, "out of memory");
        return NULL;
    }
    size_t total = size + GUARD_BYTES;
    void *map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                     -1, 0);
    if (map == MAP_FAILED) {
        free(stack);
        PyErr_SetFromErrno(StackUnavailable);
        return NULL;
    }
    if (mprotect(map, GUARD_BYTES, PROT_NONE) != 0) {
        int saved = errno;
        munmap(map, total);
        free(stack);
        errno = saved;
        PyErr_SetFromErrno(StackUnavailable);
        return NULL;
    }
    stack->map = map;
    stack->map_size = total;
    stack->stack_size = size;
    stack->busy = 0;
    return stack;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Give back the committed pages below the top KEEP_BYTES when the run reached below them
   (any page of the probe window under the kept part is resident) or ran long. A run shorter
   than QUICK_RUN_NS is not probed: reaching 1 MiB down the C stack takes thousands of nested C
   frames over a structure the guest built level by level, and faulting in the pages, which
   takes longer than that; a miss would only keep pages committed, never unsafe. */
static void trim(Stack *stack, int64_t elapsed)
{
    char *low = stack->map + GUARD_BYTES;
    char *keep_floor = low + stack->stack_size - KEEP_BYTES;
    int deep = elapsed > LONG_RUN_NS;
    if (!deep && elapsed >= QUICK_RUN_NS) {
        unsigned char resident[PROBE_BYTES / 4096 + 1];
        size_t pages = PROBE_BYTES / (size_t)page_size;
        if (pages == 0 || pages > sizeof(resident))
            pages = 1;
        if (mincore(keep_floor - pages * (size_t)page_size, pages * (size_t)page_size, resident) != 0) {
            deep = 1;
        } else {
            for (size_t i = 0; i < pages && !deep; i++)
                deep = resident[i] & 1;
        }
    }
    if (deep)
        madvise(low, (size_t)(keep_floor - low), MADV_DONTNEED);
}

#ifdef DIRECT_SWITCH
/* x86-64: switch the stack pointer directly. getcontext/swapcontext/setcontext each make a
   sigprocmask system call to save and restore a signal mask that cannot differ here (same
   thread, nothing changes it in between), about a microsecond per run. */

static void guest_entry(Call *call)
{
    call->result = PyObject_CallNoArgs(call->function);
}

/* Run call->function on `stack` and come back; always 0 (call->result is the call's result,
   or NULL with its exception set). The old stack pointer is kept in rbx, which the callee
   preserves (System V ABI); every caller-saved register is declared clobbered, so no caller
   state lives across the call in one. The new stack pointer is 16-byte aligned at the call. */
static __attribute__((noinline)) int switch_and_call(Call *call, Stack *stack)
{
    uintptr_t top = ((uintptr_t)(stack->map + GUARD_BYTES + stack->stack_size)) & ~(uintptr_t)15;
    void (*entry)(Call *) = guest_entry;
    __asm__ volatile(
        "mov %%rsp, %%rbx\n\t"
        "mov %[top], %%rsp\n\t"
        "call *%[entry]\n\t"
        "mov %%rbx, %%rsp\n\t"
        : "+D"(call), [top] "+r"(top), [entry] "+r"(entry)
        :
        : "rbx", "rax", "rcx", "rdx", "rsi", "r8", "r9", "r10", "r11", "memory", "cc",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    return 0;
}

#else

static __thread Call *current_call;

static void trampoline(void)
{
    Call *call = current_call;
    call->result = PyObject_CallNoArgs(call->function);
    setcontext(&call->caller);
    abort(); /* setcontext returns only on failure */
}

/* Run call->function on `stack` and come back; 0 on success (call->result is then the call's
   result, or NULL with its exception set), -1 with errno when the context could not be set up.
   Kept out of line so no caller state lives across the switch in registers. */
static __attribute__((noinline)) int switch_and_call(Call *call, Stack *stack)
{
    if (getcontext(&call->guest) != 0)
        return -1;
    call->guest.uc_stack.ss_sp = stack->map + GUARD_BYTES;
    call->guest.uc_stack.ss_size = stack->stack_size;
    call->guest.uc_link = NULL;
    makecontext(&call->guest, trampoline, 0);
    Call *outer = current_call;
    current_call = call;
    int failed = swapcontext(&call->caller, &call->guest) != 0 ? -1 : 0;
    current_call = outer;
    return failed;
}

#endif

static PyObject *run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "run(function, stack_bytes) takes 2 arguments");
        return NULL;
    }
    if (!SUPPORTED) {
        PyErr_SetString(StackUnavailable, "_deepstack is not supported on this Python version");
        return NULL;
    }
    PyObject *function = args[0];
    size_t wanted = PyLong_AsSize_t(args[1]);
    if (wanted == (size_t)-1 && PyErr_Occurred())
        return NULL;

    Stack *stack = pthread_getspecific(stack_key);
    int temporary = 0;
    if (stack == NULL || stack->busy || stack->stack_size < wanted) {
        Stack *fresh = map_stack(wanted);
        if (fresh == NULL)
            return NULL;
        if (stack != NULL && stack->busy) {
            temporary = 1;  /* nested: the cached stack is in use below us */
        } else {
            if (pthread_setspecific(stack_key, fresh) != 0) {
                unmap_stack(fresh);
                PyErr_SetString(StackUnavailable, "pthread_setspecific failed");
                return NULL;
            }
            unmap_stack(stack);
        }
        stack = fresh;
    }

    Call call;
    call.function = function;
    call.result = NULL;
    stack->busy = 1;
#if PY_VERSION_HEX < 0x030C0000
    PyThreadState *tstate = PyThreadState_Get();
    int saved_remaining = tstate->recursion_remaining;
    tstate->recursion_remaining = tstate->recursion_limit;
#endif
    Py_INCREF(function);
    int64_t started = now_ns();
    int failed = switch_and_call(&call, stack);
    int64_t elapsed = now_ns() - started;
    Py_DECREF(function);
#if PY_VERSION_HEX < 0x030C0000
    tstate->recursion_remaining = saved_remaining;
#endif
    stack->busy = 0;
    if (failed) {
        if (temporary)
            unmap_stack(stack);
        PyErr_SetFromErrno(StackUnavailable);
        return NULL;
    }
    if (temporary)
        unmap_stack(stack);
    else
        trim(stack, elapsed);
    return call.result;
}

static PyObject *resident_bytes(PyObject *module, PyObject *unused)
{
    Stack *stack = pthread_getspecific(stack_key);
    if (stack == NULL)
        return PyLong_FromLong(0);
    size_t pages = stack->stack_size / (size_t)page_size;
    unsigned char *vec = malloc(pages);
    if (vec == NULL)
        return PyErr_NoMemory();
    if (mincore(stack->map + GUARD_BYTES, stack->stack_size, vec) != 0) {
        free(vec);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    size_t count = 0;
    for (size_t i = 0; i < pages; i++)
        count += vec[i] & 1;
    free(vec);
    return PyLong_FromSize_t(count * (size_t)page_size);
}

static PyObject *stack_size(PyObject *module, PyObject *unused)
{
    Stack *stack = pthread_getspecific(stack_key);
    return PyLong_FromSize_t(stack != NULL ? stack->stack_size : 0);
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "run(function, stack_bytes): function() on a stack of at least stack_bytes, on this thread."},
    {"resident_bytes", resident_bytes, METH_NOARGS,
     "Committed bytes of this thread's cached stack (0 without one); for tests."},
    {"stack_size", stack_size, METH_NOARGS, "Usable bytes of this thread's cached stack (0 without one)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_deepstack",
    "Run a callable on a large C stack on the calling thread (see the comment in _deepstack.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__deepstack(void)
{
    page_size = sysconf(_SC_PAGESIZE);
    if (page_size <= 0)
        page_size = 4096;
    if (pthread_key_create(&stack_key, on_thread_exit) != 0) {
        PyErr_SetString(PyExc_ImportError, "_deepstack: pthread_key_create failed");
        return NULL;
    }
    PyObject *module = PyModule_Create(&moduledef);
    if (module == NULL)
        return NULL;
    StackUnavailable = PyErr_NewExceptionWithDoc("_deepstack.StackUnavailable",
        "No deep stack could be set up; the function was not called.", PyExc_OSError, NULL);
    if (StackUnavailable == NULL || PyModule_AddObjectRef(module, "StackUnavailable", StackUnavailable) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "SUPPORTED", SUPPORTED) != 0 ||
        PyModule_AddIntConstant(module, "KEEP_BYTES", (long)KEEP_BYTES) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
