/* _ticker: advances a Wasmtime engine's epoch from a native thread that never takes the GIL
(sandbox.wasi._engine.Ticker uses it when this module is built, else a Python thread).

Why: a Python ticker thread wakes every tick and must take the GIL to go on. On a busy machine
it can be preempted while holding it, and a run's thread (or a capability call thread) then
waits for the GIL for a scheduler time slice; measured on 2 shared vCPUs, about half of the
capability calls a tick landed in took over 0.3 ms.

The thread is started by the first `enter`, sleeps on a condition variable while no run is
active, and otherwise increments the epoch every interval. It holds its own reference to the
engine (a clone, never released), so the engine outlives it whatever Python frees at exit. In a
forked child the thread is gone: the child's first `enter` starts its own.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

typedef void (*increment_fn)(void *engine);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static long active = 0;
static int started = 0;
static void *engine = NULL;
static increment_fn increment = NULL;
static struct timespec interval;

static void *loop(void *unused) {
    for (;;) {
        pthread_mutex_lock(&lock);
        while (active <= 0)
            pthread_cond_wait(&wake, &lock);
        pthread_mutex_unlock(&lock);
        struct timespec left = interval;
        while (nanosleep(&left, &left) != 0 && errno == EINTR) {
        }
        increment(engine);
    }
    return NULL;
}

static void in_child(void) {
    /* only the forking thread survives: no ticker thread, no run of another thread, and the
       lock may have been held by one */
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&wake, NULL);
    started = 0;
    active = 0;
}

static PyObject *configure(PyObject *module, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 3) {
        PyErr_SetString(PyExc_TypeError, "configure(increment_epoch, engine, interval_ns)");
        return NULL;
    }
    void *fn = PyLong_AsVoidPtr(argv[0]), *owned = PyLong_AsVoidPtr(argv[1]);
    long long ns = PyLong_AsLongLong(argv[2]);
    if (PyErr_Occurred())
        return NULL;
    if (fn == NULL || owned == NULL || ns <= 0) {
        PyErr_SetString(PyExc_ValueError, "an increment function, an engine and a positive interval are needed");
        return NULL;
    }
    pthread_mutex_lock(&lock);
    int taken = engine != NULL;
    if (!taken) {
        increment = (increment_fn)fn;
        engine = owned;
        interval.tv_sec = (time_t)(ns / 1000000000LL);
        interval.tv_nsec = (long)(ns % 1000000000LL);
    }
    pthread_mutex_unlock(&lock);
    if (taken) {
        PyErr_SetString(PyExc_RuntimeError, "the ticker serves one engine per process, and has one");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *enter(PyObject *module, PyObject *unused) {
    int error = 0;
    pthread_mutex_lock(&lock);
    if (engine == NULL) {
        error = -1;
    } else {
        active++;
        if (!started) {
            pthread_t thread;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_attr_setstacksize(&attr, 64 * 1024);
            error = pthread_create(&thread, &attr, loop, NULL);
            pthread_attr_destroy(&attr);
            if (error == 0)
                started = 1;
            else
                active--;
        }
        pthread_cond_signal(&wake);
    }
    pthread_mutex_unlock(&lock);
    if (error == -1) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (error != 0) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *exit_(PyObject *module, PyObject *unused) {
    pthread_mutex_lock(&lock);
    if (active > 0)
        active--;
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

static PyObject *state(PyObject *module, PyObject *unused) {
    pthread_mutex_lock(&lock);
    long now_active = active;
    int now_started = started;
    pthread_mutex_unlock(&lock);
    return Py_BuildValue("(lO)", now_active, now_started ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(increment_epoch, engine, interval_ns): the C function that advances the epoch, an engine "
     "reference the ticker keeps (never released) and the tick interval. Once per process."},
    {"enter", (PyCFunction)enter, METH_NOARGS, "A run starts: tick (starting the thread if needed)."},
    {"exit", (PyCFunction)exit_, METH_NOARGS, "A run ended: with none left, the thread sleeps."},
    {"state", (PyCFunction)state, METH_NOARGS, "(active runs, whether the thread runs), for tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ticker",
                                    "A Wasmtime epoch ticker on a native thread (see the source's header).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__ticker(void) {
    if (pthread_atfork(NULL, NULL, in_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    return PyModule_Create(&module);
}
