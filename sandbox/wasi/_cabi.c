/* _cabi: the C side of sandbox.wasi._abi, for the two calls every capability call and every run
make: the guest's `host.call(name: string, args-json: string) -> string` import, as a C function
that Wasmtime calls directly, and the call of the guest's `run` export. sandbox.wasi._abi uses
them when this module is built; without it the same calls go through ctypes in Python.

Why C: a ctypes callback converts its seven arguments to Python objects on every call, and
reading and writing component values through ctypes structures costs about a microsecond per
field; a capability round trip and a session run each paid around ten.

host.call: one Python call of its handler, handler(context: int, name: str, args: LentText)
-> str | int. `bind` pairs a handler with a name cap; the pair's address is the ``data``
Wasmtime passes back to the function.

- ``name`` is decoded from at most ``max_name_bytes`` bytes (a character cut there is dropped):
  a longer name is no capability's, and is never decoded whole.
- ``args`` lends the argument text: its ``size`` in UTF-8 bytes, and ``text()`` decodes it. It
  is valid only during the call: once the handler returns, the bytes are freed and ``text()``
  raises ValueError (a handler that kept it can never read freed memory). A handler that
  wants no part of an oversized text just does not call ``text()``.
- A str result becomes the function's string result; an int is a `wasmtime_error_t *` (made by
  sandbox.wasi._ffi.trap) returned as the call's trap. Anything else, or an exception, traps
  with a fixed message: no Python exception ever unwinds into Wasmtime.
- Both argument strings are freed here and their values left as plain bools, as the Python
  trampoline does.

run: `call_run` lowers the code, lends the options (and inputs, when given as a lent string)
and an empty handle list, sets the run's fuel and an epoch deadline of one tick (unless the
fuel given is negative), calls the export with the GIL released, and returns the report
decoded, or its size unread when it is over the cap, or the trap.

Before a run, `handlers_are` checks that the fatal-signal handlers Wasmtime installed are still
the ones in place (another library may replace them): four sigaction reads without ctypes.

The value layout (wasmtime's component/val.h) and the C API functions used are given to
`configure` from wasmtime-py's own bindings; it checks the layout against this file's.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    size_t size;
    uint8_t *data;
} byte_vec;

typedef struct {
    uint8_t kind;
    union {
        uint8_t boolean;
        byte_vec string;
        uint8_t raw[24];
    } of;
} component_val;

/* The argument text lent to the handler: ``data`` is NULL once the call has returned. */
typedef struct {
    PyObject_HEAD
    const char *data;
    Py_ssize_t size;
} LentText;

static PyObject *lent_text(LentText *self, PyObject *unused) {
    if (self->data == NULL) {
        PyErr_SetString(PyExc_ValueError, "the host call that lent this text has returned");
        return NULL;
    }
    return PyUnicode_DecodeUTF8(self->data, self->size, "strict");
}

static PyObject *lent_size(LentText *self, void *closure) { return PyLong_FromSsize_t(self->size); }

static PyMethodDef lent_methods[] = {
    {"text", (PyCFunction)lent_text, METH_NOARGS, "The lent text, decoded (strict UTF-8); ValueError once returned."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef lent_getset[] = {
    {"size", (getter)lent_size, NULL, "The lent text's size in UTF-8 bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LentTextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sandbox.wasi._cabi.LentText",
    .tp_basicsize = sizeof(LentText),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A host call's argument text, lent to its handler for the call's duration.",
    .tp_methods = lent_methods,
    .tp_getset = lent_getset,
};

typedef void (*vec_new_fn)(byte_vec *out, size_t size);
typedef void (*vec_delete_fn)(byte_vec *vec);
typedef void *(*error_new_fn)(const char *message);
typedef void (*val_delete_fn)(component_val *val);
typedef void *(*func_call_fn)(const void *func, void *context, const component_val *args, size_t nargs,
                              component_val *results, size_t nresults);
typedef void *(*set_fuel_fn)(void *context, uint64_t fuel);
typedef void (*set_epoch_deadline_fn)(void *context, uint64_t ticks);

typedef struct {
    PyObject *handler;
    size_t max_name_bytes;
} binding;

static vec_new_fn vec_new = NULL;
static vec_delete_fn vec_delete = NULL;
static error_new_fn error_new = NULL;
static val_delete_fn val_delete = NULL;
static func_call_fn func_call = NULL;
static set_fuel_fn set_fuel = NULL;
static set_epoch_deadline_fn set_epoch_deadline = NULL;
static uint8_t kind_string, kind_bool, kind_list;

static void drop_string(component_val *val) {
    vec_delete(&val->of.string);
    val->kind = kind_bool;
    val->of.boolean = 0;
}

/* Under the GIL: the error for the current exception (cleared), or for a wrong result type. */
static void *failure(const char *what) {
    PyErr_Clear();
    return error_new(what);
}

static void *trampoline(void *data, void *context, const void *type, component_val *args, size_t nargs,
                        component_val *results, size_t nresults) {
    if (nargs != 2 || nresults != 1 || args[0].kind != kind_string || args[1].kind != kind_string)
        return error_new("sandbox host call: unexpected signature");
    binding *bound = (binding *)data;
    PyGILState_STATE gil = PyGILState_Ensure();
    size_t max_name_bytes = bound->max_name_bytes; /* read under the GIL: its capsule is freed under it */
    void *error = NULL;
    byte_vec *name_vec = &args[0].of.string, *args_vec = &args[1].of.string;
    size_t name_size = name_vec->size < max_name_bytes ? name_vec->size : max_name_bytes;
    PyObject *name = PyUnicode_DecodeUTF8((const char *)name_vec->data, (Py_ssize_t)name_size, "ignore");
    LentText *lent = NULL;
    PyObject *address = NULL, *out = NULL;
    if (name != NULL)
        lent = PyObject_New(LentText, &LentTextType);
    if (lent != NULL) {
        lent->data = (const char *)args_vec->data;
        lent->size = (Py_ssize_t)args_vec->size;
        address = PyLong_FromVoidPtr(context);
    }
    if (address != NULL) {
        PyObject *argv[3] = {address, name, (PyObject *)lent};
        out = PyObject_Vectorcall(bound->handler, argv, 3, NULL);
    }
    if (out == NULL) {
        error = failure("sandbox host call failed");
    } else if (PyUnicode_CheckExact(out)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(out, &size);
        if (text == NULL) {
            error = failure("sandbox host call failed: its result is not valid Unicode");
        } else {
            vec_new(&results[0].of.string, (size_t)size);
            if (size > 0)
                memcpy(results[0].of.string.data, text, (size_t)size);
            results[0].kind = kind_string;
        }
    } else if (PyLong_CheckExact(out)) {
        error = PyLong_AsVoidPtr(out);
        if (error == NULL)
            error = failure("sandbox host call failed");
    } else {
        error = failure("sandbox host call failed: its handler returned neither text nor a trap");
    }
    if (lent != NULL)
        lent->data = NULL;
    Py_XDECREF(out);
    Py_XDECREF(address);
    Py_XDECREF(lent);
    Py_XDECREF(name);
    PyGILState_Release(gil);
    drop_string(&args[0]);
    drop_string(&args[1]);
    return error;
}

static PyObject *configure(PyObject *module, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 12) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(vec_new, vec_delete, error_new, val_delete, func_call, set_fuel, "
                        "set_epoch_deadline, val_size, of_offset, string_kind, bool_kind, list_kind)");
        return NULL;
    }
    void *fns[7];
    for (int i = 0; i < 7; i++) {
        fns[i] = PyLong_AsVoidPtr(argv[i]);
        if (fns[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a C API function address is missing");
            return NULL;
        }
    }
    size_t val_size = PyLong_AsSize_t(argv[7]);
    if (val_size == (size_t)-1 && PyErr_Occurred())
        return NULL;
    size_t of_offset = PyLong_AsSize_t(argv[8]);
    if (of_offset == (size_t)-1 && PyErr_Occurred())
        return NULL;
    long kinds[3];
    for (int i = 0; i < 3; i++) {
        kinds[i] = PyLong_AsLong(argv[9 + i]);
        if (kinds[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    if (val_size != sizeof(component_val) || of_offset != offsetof(component_val, of)) {
        PyErr_Format(PyExc_ValueError,
                     "wasmtime's component value layout (size %zu, union at %zu) is not this module's "
                     "(size %zu, union at %zu)",
                     val_size, of_offset, sizeof(component_val), offsetof(component_val, of));
        return NULL;
    }
    for (int i = 0; i < 3; i++) {
        if (kinds[i] < 0 || kinds[i] > 255) {
            PyErr_SetString(PyExc_ValueError, "a value kind is out of range");
            return NULL;
        }
    }
    if (vec_new != NULL &&
        (vec_new != (vec_new_fn)fns[0] || vec_delete != (vec_delete_fn)fns[1] || error_new != (error_new_fn)fns[2] ||
         val_delete != (val_delete_fn)fns[3] || func_call != (func_call_fn)fns[4] ||
         set_fuel != (set_fuel_fn)fns[5] || set_epoch_deadline != (set_epoch_deadline_fn)fns[6] ||
         kind_string != (uint8_t)kinds[0] || kind_bool != (uint8_t)kinds[1] || kind_list != (uint8_t)kinds[2])) {
        PyErr_SetString(PyExc_ValueError, "configured already, differently");
        return NULL;
    }
    vec_new = (vec_new_fn)fns[0];
    vec_delete = (vec_delete_fn)fns[1];
    error_new = (error_new_fn)fns[2];
    val_delete = (val_delete_fn)fns[3];
    func_call = (func_call_fn)fns[4];
    set_fuel = (set_fuel_fn)fns[5];
    set_epoch_deadline = (set_epoch_deadline_fn)fns[6];
    kind_string = (uint8_t)kinds[0];
    kind_bool = (uint8_t)kinds[1];
    kind_list = (uint8_t)kinds[2];
    return PyLong_FromVoidPtr((void *)trampoline);
}

/* A string value of ``text``'s UTF-8 bytes, owned (free it with vec_delete). -1 with an exception set
   when ``text`` has no UTF-8 form (a lone surrogate). */
static int put_owned_string(component_val *val, PyObject *text) {
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(text, &size);
    if (data == NULL)
        return -1;
    vec_new(&val->of.string, (size_t)size);
    if (size > 0)
        memcpy(val->of.string.data, data, (size_t)size);
    val->kind = kind_string;
    return 0;
}

/* A value of ``kind`` whose 16-byte payload (a byte vec or a value list: size, then data) is copied
   from ``address``: lent, never freed here. */
static int put_lent(component_val *val, uint8_t kind, PyObject *address) {
    void *from = PyLong_AsVoidPtr(address);
    if (from == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a lent value's address is missing");
        return -1;
    }
    memcpy(&val->of.string, from, sizeof(byte_vec));
    val->kind = kind;
    return 0;
}

static PyObject *call_run(PyObject *module, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 8 || !PyLong_Check(argv[0]) || !PyLong_Check(argv[1]) || !PyUnicode_Check(argv[2]) ||
        !PyLong_Check(argv[3]) || !PyLong_Check(argv[5]) ||
        !PyLong_Check(argv[6]) || !PyLong_Check(argv[7])) {
        PyErr_SetString(PyExc_TypeError,
                        "call_run(func: int, context: int, code: str, options: int, inputs: str | int, "
                        "handles: int, max_report: int, fuel: int)");
        return NULL;
    }
    if (func_call == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    void *func = PyLong_AsVoidPtr(argv[0]);
    if (func == NULL && PyErr_Occurred())
        return NULL;
    void *context = PyLong_AsVoidPtr(argv[1]);
    if (context == NULL && PyErr_Occurred())
        return NULL;
    size_t max_report = PyLong_AsSize_t(argv[6]);
    if (max_report == (size_t)-1 && PyErr_Occurred())
        return NULL;
    long long fuel = PyLong_AsLongLong(argv[7]);
    if (fuel == -1 && PyErr_Occurred())
        return NULL;
    if (func == NULL || context == NULL) {
        PyErr_SetString(PyExc_ValueError, "no function or store context");
        return NULL;
    }
    int inputs_owned = PyUnicode_Check(argv[4]);
    component_val params[4], result;
    memset(params, 0, sizeof params);
    memset(&result, 0, sizeof result);
    if (put_owned_string(&params[0], argv[2]) < 0)
        return NULL;
    if (put_lent(&params[1], kind_string, argv[3]) < 0 ||
        (inputs_owned ? put_owned_string(&params[2], argv[4]) : put_lent(&params[2], kind_string, argv[4])) < 0 ||
        put_lent(&params[3], kind_list, argv[5]) < 0) {
        vec_delete(&params[0].of.string);
        if (inputs_owned && params[2].kind == kind_string)
            vec_delete(&params[2].of.string);
        return NULL;
    }
    void *error = NULL;
    if (fuel >= 0) {
        error = set_fuel(context, (uint64_t)fuel);
        if (error == NULL)
            set_epoch_deadline(context, 1);
    }
    if (error == NULL) {
        Py_BEGIN_ALLOW_THREADS
        error = func_call(func, context, params, 4, &result, 1);
        Py_END_ALLOW_THREADS
    }
    vec_delete(&params[0].of.string);
    if (inputs_owned)
        vec_delete(&params[2].of.string);
    if (error != NULL)
        return Py_BuildValue("(iN)", 2, PyLong_FromVoidPtr(error));
    if (result.kind != kind_string) {
        val_delete(&result);
        return Py_BuildValue("(iO)", 3, Py_None);
    }
    size_t size = result.of.string.size;
    if (size > max_report) {
        val_delete(&result);
        return Py_BuildValue("(in)", 1, (Py_ssize_t)size);
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)result.of.string.data, (Py_ssize_t)size, "strict");
    val_delete(&result);
    if (text == NULL)
        return NULL;
    return Py_BuildValue("(iN)", 0, text);
}

static void free_binding(PyObject *capsule) {
    binding *bound = (binding *)PyCapsule_GetPointer(capsule, "sandbox.wasi._cabi.binding");
    if (bound == NULL) {
        PyErr_Clear();
        return;
    }
    Py_XDECREF(bound->handler);
    PyMem_Free(bound);
}

static PyObject *bind(PyObject *module, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 2 || !PyCallable_Check(argv[0])) {
        PyErr_SetString(PyExc_TypeError, "bind(handler: callable, max_name_bytes: int)");
        return NULL;
    }
    if (vec_new == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    size_t max_name = PyLong_AsSize_t(argv[1]);
    if (max_name == (size_t)-1 && PyErr_Occurred())
        return NULL;
    binding *bound = PyMem_Malloc(sizeof(binding));
    if (bound == NULL)
        return PyErr_NoMemory();
    Py_INCREF(argv[0]);
    bound->handler = argv[0];
    bound->max_name_bytes = max_name;
    PyObject *capsule = PyCapsule_New(bound, "sandbox.wasi._cabi.binding", free_binding);
    if (capsule == NULL) {
        Py_DECREF(argv[0]);
        PyMem_Free(bound);
        return NULL;
    }
    PyObject *address = PyLong_FromVoidPtr(bound);
    if (address == NULL) {
        Py_DECREF(capsule);
        return NULL;
    }
    return Py_BuildValue("(NN)", capsule, address);
}

static PyObject *handlers_are(PyObject *module, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 2 || !PyTuple_Check(argv[0]) || !PyTuple_Check(argv[1]) ||
        PyTuple_GET_SIZE(argv[0]) != PyTuple_GET_SIZE(argv[1])) {
        PyErr_SetString(PyExc_TypeError, "handlers_are(signals: tuple[int, ...], handlers: tuple[int, ...])");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(argv[0]); i++) {
        long sig = PyLong_AsLong(PyTuple_GET_ITEM(argv[0], i));
        if (sig == -1 && PyErr_Occurred())
            return NULL;
        if (sig <= 0 || sig > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "handlers_are: a signal number out of range");
            return NULL;
        }
        void *expected = PyLong_AsVoidPtr(PyTuple_GET_ITEM(argv[1], i));
        if (expected == NULL && PyErr_Occurred())
            return NULL;
        struct sigaction current;
        if (sigaction((int)sig, NULL, &current) != 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        /* the handler's address, whichever member of the union it was set through */
        if ((void *)current.sa_handler != expected)
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(vec_new, vec_delete, error_new, val_delete, func_call, set_fuel, set_epoch_deadline, val_size, "
     "of_offset, string_kind, bool_kind, list_kind) -> the host.call trampoline's address. Raises ValueError for a layout other "
     "than this module's, or when configured already with other values."},
    {"handlers_are", (PyCFunction)(void (*)(void))handlers_are, METH_FASTCALL,
     "handlers_are(signals, handlers) -> whether each signal's handler is at the address given (OSError "
     "when one cannot be read)."},
    {"call_run", (PyCFunction)(void (*)(void))call_run, METH_FASTCALL,
     "call_run(func, context, code, options, inputs, handles, max_report, fuel) -> (0, report) | (1, size "
     "over the cap) | (2, error address) | (3, None: not a string). A fuel of 0 or more is set first, with "
     "an epoch deadline of one tick. ``options``, ``handles`` (and ``inputs`` "
     "when an int) are addresses of lent 16-byte payloads; ``code`` (and ``inputs`` when a str) are "
     "lowered here."},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(handler, max_name_bytes) -> (owner, address): the ``data`` for the trampoline, valid while "
     "``owner`` lives."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cabi",
                                    "The wasi guest's host.call import and run export call in C (see the source's header).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__cabi(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddType(m, &LentTextType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
