/* _hostcall: the wasi guest's `host.call(name: string, args-json: string) -> string` import as a
C function that Wasmtime calls directly (sandbox.wasi._abi registers it when this module is
built; without it the same import is a ctypes callback in Python).

Why C: a ctypes callback converts its seven arguments to Python objects on every call, and reading
and writing the string values through ctypes structures costs several microseconds more; a
capability round trip pays both. Here the call costs one Python call of its handler:
handler(context: int, name: str, args: LentText) -> str | int. `bind` pairs a handler with a
name cap; the pair's address is the ``data`` Wasmtime passes back to the function.

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

The value layout (wasmtime's component/val.h) and the three C API functions used are given to
`configure` from wasmtime-py's own bindings; it checks the layout against this file's.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
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
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sandbox.wasi._hostcall.LentText",
    .tp_basicsize = sizeof(LentText),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A host call's argument text, lent to its handler for the call's duration.",
    .tp_methods = lent_methods,
    .tp_getset = lent_getset,
};

typedef void (*vec_new_fn)(byte_vec *out, size_t size);
typedef void (*vec_delete_fn)(byte_vec *vec);
typedef void *(*error_new_fn)(const char *message);

typedef struct {
    PyObject *handler;
    size_t max_name_bytes;
} binding;

static vec_new_fn vec_new = NULL;
static vec_delete_fn vec_delete = NULL;
static error_new_fn error_new = NULL;
static uint8_t kind_string, kind_bool;

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
    size_t max_name_bytes = bound->max_name_bytes;
    PyGILState_STATE gil = PyGILState_Ensure();
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
    if (argc != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(vec_new, vec_delete, error_new, val_size, of_offset, string_kind, bool_kind)");
        return NULL;
    }
    void *new_fn = PyLong_AsVoidPtr(argv[0]), *delete_fn = PyLong_AsVoidPtr(argv[1]),
         *error_fn = PyLong_AsVoidPtr(argv[2]);
    size_t val_size = PyLong_AsSize_t(argv[3]), of_offset = PyLong_AsSize_t(argv[4]);
    long string_kind = PyLong_AsLong(argv[5]), bool_kind = PyLong_AsLong(argv[6]);
    if (PyErr_Occurred())
        return NULL;
    if (new_fn == NULL || delete_fn == NULL || error_fn == NULL) {
        PyErr_SetString(PyExc_ValueError, "a C API function address is missing");
        return NULL;
    }
    if (val_size != sizeof(component_val) || of_offset != offsetof(component_val, of)) {
        PyErr_Format(PyExc_ValueError,
                     "wasmtime's component value layout (size %zu, union at %zu) is not this module's "
                     "(size %zu, union at %zu)",
                     val_size, of_offset, sizeof(component_val), offsetof(component_val, of));
        return NULL;
    }
    if (string_kind < 0 || string_kind > 255 || bool_kind < 0 || bool_kind > 255) {
        PyErr_SetString(PyExc_ValueError, "a value kind is out of range");
        return NULL;
    }
    if (vec_new != NULL && (vec_new != (vec_new_fn)new_fn || vec_delete != (vec_delete_fn)delete_fn ||
                            error_new != (error_new_fn)error_fn || kind_string != (uint8_t)string_kind ||
                            kind_bool != (uint8_t)bool_kind)) {
        PyErr_SetString(PyExc_ValueError, "configured already, differently");
        return NULL;
    }
    vec_new = (vec_new_fn)new_fn;
    vec_delete = (vec_delete_fn)delete_fn;
    error_new = (error_new_fn)error_fn;
    kind_string = (uint8_t)string_kind;
    kind_bool = (uint8_t)bool_kind;
    return PyLong_FromVoidPtr((void *)trampoline);
}

static void free_binding(PyObject *capsule) {
    binding *bound = (binding *)PyCapsule_GetPointer(capsule, "sandbox.wasi._hostcall.binding");
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
    PyObject *capsule = PyCapsule_New(bound, "sandbox.wasi._hostcall.binding", free_binding);
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

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(vec_new, vec_delete, error_new, val_size, of_offset, string_kind, bool_kind) -> the "
     "trampoline's address. Raises ValueError for a layout other than this module's, or when "
     "configured already with other values."},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(handler, max_name_bytes) -> (owner, address): the ``data`` for the trampoline, valid while "
     "``owner`` lives."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hostcall",
                                    "The wasi guest's host.call import as a C function (see the source's header).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__hostcall(void) {
    if (PyType_Ready(&LentTextType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LentTextType);
    if (PyModule_AddObject(m, "LentText", (PyObject *)&LentTextType) < 0) {
        Py_DECREF(&LentTextType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
