/* Fast path of `runtimes.wire.plain` / `runtimes.wire.encode` for values made only of the
 * exact JSON types (dict with exact str keys, list, tuple, str, int, float, bool, None).
 *
 * `copy` returns exactly what the Python walk (`runtimes.wire._Walk`) returns for such a value,
 * with the same caps, the same size and node accounting, the same shared-reference handling (a
 * container met again is the same converted object, counted again) and the same time checks
 * (`check()` each time the node count passes another `check_every`). For anything else it
 * returns `UNHANDLED` and the caller runs the Python walk from the start: an object of another
 * type or a subclass, a non-str or str-subclass key, a marker key (`TAG` when converting to
 * JSON, the secret-handle marker when a handle token is in use), an int over the bit cap, a
 * non-finite float, a container nested too deep, a value over the size or node cap, a dict
 * that changed size while it was walked. So every error, refusal and lenient repr comes from
 * the Python walk alone, and this code never runs code of the value's own (no method of a
 * subclass, no __repr__, no __eq__: only exact types are touched).
 *
 * `depth` is `runtimes.wire.depth`: the nesting depth of plain data, counted up to a limit.
 *
 * One file over the usual length: the copy, its shared-reference table and the depth count
 * share the exact-type rules and the constants `configure` sets.
 *
 * Exceptions from `check()` and from allocation (MemoryError) propagate as they would from the
 * Python walk. Containers being walked and the items being converted are held by strong
 * references, and list/dict bounds are read again after every call that may run Python code
 * (`check()`), so a value mutated meanwhile by another thread is never read out of bounds.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

typedef struct {
    PyObject *key;     /* the input container (strong reference) */
    PyObject *result;  /* its converted copy (strong reference) */
    Py_ssize_t nodes;
    Py_ssize_t size;
} SeenEntry;

typedef struct {
    int as_json;
    int handle_token;
    PyObject *check;
    Py_ssize_t max_bytes;
    Py_ssize_t max_nodes;
    Py_ssize_t nodes;
    Py_ssize_t size;
    Py_ssize_t next_check;
    SeenEntry *seen;
    Py_ssize_t seen_cap;  /* a power of two, or 0 */
    Py_ssize_t seen_used;
} Walk;

/* Set once by `configure` from runtimes.wire, which owns these rules. */
static PyObject *UNHANDLED;
static PyObject *TAG;
static PyObject *SECRET_MARKER;
static PyObject *TUPLE_NAME;
static PyObject *V_KEY;
static Py_ssize_t MAX_DEPTH = -1;
static Py_ssize_t MAX_INT_BITS;
static Py_ssize_t CHECK_EVERY;
static Py_ssize_t TAG_BYTES;

/* Bytes of each code point below 128 in compact ASCII JSON (`json.encoder.encode_basestring_ascii`). */
static unsigned char ASCII_BYTES[128];

#define BAIL ((PyObject *)1)  /* returned (not an object) when the Python walk must take over */

static int
is_bail(PyObject *o)
{
    return o == BAIL;
}

#define ONES ((uint64_t)0x0101010101010101ULL)

/* Length of encode_basestring_ascii(text), quotes included. */
static Py_ssize_t
json_ascii_len(PyObject *text)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    Py_ssize_t total = 2;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *p = (const Py_UCS1 *)data;
        Py_ssize_t i = 0;
        /* Eight characters at a time: 8 bytes when none is below ' ', above '~', '"' or '\\'. */
        for (; i + 8 <= n; i += 8) {
            uint64_t x;
            memcpy(&x, p + i, 8);
            uint64_t q = x ^ (ONES * '"'), b = x ^ (ONES * '\\');
            uint64_t special = ((x - ONES * ' ') & ~x) | ((x + ONES * (127 - '~')) | x) |
                               ((q - ONES) & ~q) | ((b - ONES) & ~b);
            if (special & (ONES * 0x80)) {
                for (int j = 0; j < 8; j++) {
                    Py_UCS1 c = p[i + j];
                    total += c < 128 ? ASCII_BYTES[c] : 6;
                }
            }
            else {
                total += 8;
            }
        }
        for (; i < n; i++) {
            Py_UCS1 c = p[i];
            total += c < 128 ? ASCII_BYTES[c] : 6;
        }
        return total;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        total += c < 128 ? ASCII_BYTES[c] : (c >= 0x10000 ? 12 : 6);
    }
    return total;
}

static int
is_marker(PyObject *key, PyObject *marker)
{
    return PyUnicode_GET_LENGTH(key) == PyUnicode_GET_LENGTH(marker) && PyUnicode_Compare(key, marker) == 0;
}

/* Counts `items` nodes (bail over the node cap) and calls check() at a checkpoint; the byte
 * cap needs no check there, `add_size` never lets `size` pass it.
 * Returns 0, 1 to bail, or -1 with an exception set. */
static int
count(Walk *w, Py_ssize_t items)
{
    if (w->nodes > w->max_nodes - items) {
        return 1;
    }
    w->nodes += items;
    if (w->nodes > w->next_check) {
        w->next_check = w->nodes + CHECK_EVERY;
        if (w->check != Py_None) {
            PyObject *r = PyObject_CallNoArgs(w->check);
            if (r == NULL) {
                return -1;
            }
            Py_DECREF(r);
        }
    }
    return 0;
}

static int
add_size(Walk *w, Py_ssize_t bytes)
{
    if (bytes > w->max_bytes - w->size) {
        return 1;
    }
    w->size += bytes;
    return 0;
}

/* Adds the JSON bytes of a ready str plus `extra` (0, or 1 to bail over the byte cap); a str
 * whose length alone passes the cap is refused before it is scanned. */
static int
add_str(Walk *w, PyObject *text, Py_ssize_t extra)
{
    if (PyUnicode_GET_LENGTH(text) > w->max_bytes - w->size) {
        return 1;
    }
    return add_size(w, json_ascii_len(text) + extra);
}

/* --- containers already converted ---------------------------------------------------------- */

static Py_ssize_t
seen_slot(Walk *w, PyObject *key)
{
    size_t mask = (size_t)w->seen_cap - 1;
    size_t i = ((size_t)key >> 4) & mask;
    while (w->seen[i].key != NULL && w->seen[i].key != key) {
        i = (i + 1) & mask;
    }
    return (Py_ssize_t)i;
}

static SeenEntry *
seen_find(Walk *w, PyObject *key)
{
    if (w->seen_cap == 0) {
        return NULL;
    }
    SeenEntry *e = &w->seen[seen_slot(w, key)];
    return e->key == NULL ? NULL : e;
}

static int
seen_add(Walk *w, PyObject *key, PyObject *result, Py_ssize_t nodes, Py_ssize_t size)
{
    if (2 * (w->seen_used + 1) > w->seen_cap) {
        Py_ssize_t cap = w->seen_cap ? 2 * w->seen_cap : 64;
        SeenEntry *old = w->seen;
        Py_ssize_t old_cap = w->seen_cap;
        SeenEntry *table = PyMem_Calloc((size_t)cap, sizeof(SeenEntry));
        if (table == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        w->seen = table;
        w->seen_cap = cap;
        for (Py_ssize_t j = 0; j < old_cap; j++) {
            if (old[j].key != NULL) {
                table[seen_slot(w, old[j].key)] = old[j];
            }
        }
        PyMem_Free(old);
    }
    SeenEntry *e = &w->seen[seen_slot(w, key)];
    Py_INCREF(key);
    Py_INCREF(result);
    e->key = key;
    e->result = result;
    e->nodes = nodes;
    e->size = size;
    w->seen_used++;
    return 0;
}

static void
seen_clear(Walk *w)
{
    for (Py_ssize_t j = 0; j < w->seen_cap; j++) {
        Py_XDECREF(w->seen[j].key);
        Py_XDECREF(w->seen[j].result);
    }
    PyMem_Free(w->seen);
    w->seen = NULL;
    w->seen_cap = w->seen_used = 0;
}

/* --- the walk -------------------------------------------------------------------------------- */

static PyObject *node(Walk *w, PyObject *value, Py_ssize_t depth, Py_ssize_t own);

enum { NOT_SCALAR = 0, SCALAR = 1, SCALAR_BAIL = 2, SCALAR_ERROR = -1 };

/* A scalar of an exact JSON type (str, int, float, bool, None): counts its bytes and returns
 * SCALAR; SCALAR_BAIL when the Python walk must convert it, NOT_SCALAR for anything else. */
static int
scalar(Walk *w, PyObject *value)
{
    PyTypeObject *kind = Py_TYPE(value);
    Py_ssize_t bytes;
    if (kind == &PyUnicode_Type) {
        if (PyUnicode_READY(value) < 0) {
            return SCALAR_ERROR;
        }
        return add_str(w, value, 0) ? SCALAR_BAIL : SCALAR;
    }
    else if (kind == &PyLong_Type) {
        int overflow;
        long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
        int64_t bits;
        if (overflow == 0) {
            unsigned long long magnitude = small < 0 ? 0ULL - (unsigned long long)small : (unsigned long long)small;
            bits = magnitude == 0 ? 0 : 64 - __builtin_clzll(magnitude);
        }
        else {
            size_t numbits = _PyLong_NumBits(value);
            if (numbits == (size_t)-1 && PyErr_Occurred()) {
                return SCALAR_ERROR;
            }
            if (numbits > (size_t)MAX_INT_BITS) {
                return SCALAR_BAIL;
            }
            bits = (int64_t)numbits;
        }
        if (bits > MAX_INT_BITS) {
            return SCALAR_BAIL;
        }
        bytes = (Py_ssize_t)(bits / 3 + 2);
    }
    else if (kind == &PyFloat_Type) {
        if (!isfinite(PyFloat_AS_DOUBLE(value))) {
            return SCALAR_BAIL;
        }
        bytes = 24;
    }
    else if (value == Py_None || kind == &PyBool_Type) {
        bytes = 5;
    }
    else {
        return NOT_SCALAR;
    }
    return add_size(w, bytes) ? SCALAR_BAIL : SCALAR;
}

/* Converts one item, already counted as a node: a new reference, BAIL, or NULL with an error.
 * ``own`` is how many references to it the walk itself holds (see `node`). */
static PyObject *
item(Walk *w, PyObject *value, Py_ssize_t depth, Py_ssize_t own)
{
    switch (scalar(w, value)) {
    case SCALAR:
        Py_INCREF(value);
        return value;
    case SCALAR_BAIL:
        return BAIL;
    case SCALAR_ERROR:
        return NULL;
    default:
        return node(w, value, depth, own);
    }
}

/* Counts a container of ``n`` items (its items as nodes, its brackets and commas as bytes):
 * 0, 1 to bail, or -1 with an exception set. */
static int
enter(Walk *w, Py_ssize_t n)
{
    int status = count(w, n);
    return status ? status : add_size(w, 1 + n);
}

/* The converted items of a list or tuple, as a new list. Exactly the counted items are
 * visited, fewer if a list got shorter during a check(). */
static PyObject *
walk_items(Walk *w, PyObject *value, Py_ssize_t depth)
{
    int list = PyList_CheckExact(value);
    Py_ssize_t n = Py_SIZE(value);
    int status = enter(w, n);
    if (status) {
        return status > 0 ? BAIL : NULL;
    }
    PyObject *result = PyList_New(n);
    if (result == NULL) {
        return NULL;
    }
    Py_ssize_t i = 0;
    for (; i < n && i < Py_SIZE(value); i++) {
        /* a list's item is held while it is converted; a tuple holds its own */
        PyObject *source = list ? PyList_GET_ITEM(value, i) : PyTuple_GET_ITEM(value, i);
        if (list) {
            Py_INCREF(source);
        }
        PyObject *converted = item(w, source, depth + 1, list);
        if (list) {
            Py_DECREF(source);
        }
        if (converted == NULL || is_bail(converted)) {
            Py_DECREF(result);
            return converted;
        }
        PyList_SET_ITEM(result, i, converted);
    }
    if (i < n) {
        PyObject *visited = PyList_GetSlice(result, 0, i);
        Py_DECREF(result);
        return visited;
    }
    return result;
}

static PyObject *
walk_tuple(Walk *w, PyObject *value, Py_ssize_t depth)
{
    PyObject *items = walk_items(w, value, depth);
    if (items == NULL || is_bail(items)) {
        return items;
    }
    if (add_size(w, TAG_BYTES + PyUnicode_GET_LENGTH(TUPLE_NAME))) {
        Py_DECREF(items);
        return BAIL;
    }
    PyObject *result;
    if (w->as_json) {
        result = PyDict_New();
        if (result != NULL && (PyDict_SetItem(result, TAG, TUPLE_NAME) < 0 || PyDict_SetItem(result, V_KEY, items) < 0)) {
            Py_CLEAR(result);
        }
    }
    else {
        result = PyList_AsTuple(items);
    }
    Py_DECREF(items);
    return result;
}

static PyObject *
walk_dict(Walk *w, PyObject *value, Py_ssize_t depth)
{
    Py_ssize_t n = PyDict_GET_SIZE(value);
    int status = enter(w, n);
    if (status) {
        return status > 0 ? BAIL : NULL;
    }
    PyObject *result = _PyDict_NewPresized(n);
    if (result == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *source;
    while (PyDict_Next(value, &pos, &key, &source)) {
        if (PyDict_GET_SIZE(value) != n || !PyUnicode_CheckExact(key)) {
            Py_DECREF(result);
            return BAIL;
        }
        if (PyUnicode_READY(key) < 0) {
            Py_DECREF(result);
            return NULL;
        }
        if ((w->as_json && is_marker(key, TAG)) || (w->handle_token && is_marker(key, SECRET_MARKER))) {
            Py_DECREF(result);
            return BAIL;
        }
        if (add_str(w, key, 1)) {
            Py_DECREF(result);
            return BAIL;
        }
        Py_INCREF(key);
        Py_INCREF(source);
        PyObject *converted = item(w, source, depth + 1, 1);
        Py_DECREF(source);
        if (converted == NULL || is_bail(converted)) {
            Py_DECREF(key);
            Py_DECREF(result);
            return converted;
        }
        int failed = PyDict_SetItem(result, key, converted);
        Py_DECREF(key);
        Py_DECREF(converted);
        if (failed) {
            Py_DECREF(result);
            return NULL;
        }
    }
    if (PyDict_GET_SIZE(value) != n) {
        Py_DECREF(result);
        return BAIL;
    }
    return result;
}

/* Converts a container (or any value that is not a scalar of an exact JSON type), already
 * counted as a node. ``own`` is how many references to ``value`` the walk itself holds (-1:
 * unknown). A container with no reference but its parent's cannot be met again in this walk,
 * so only the others are looked up and recorded as already converted. */
static PyObject *
node(Walk *w, PyObject *value, Py_ssize_t depth, Py_ssize_t own)
{
    PyTypeObject *kind = Py_TYPE(value);
    if (kind != &PyList_Type && kind != &PyDict_Type && kind != &PyTuple_Type) {
        return BAIL;
    }
    if (depth >= MAX_DEPTH) {
        return BAIL;
    }
    int shareable = own < 0 || Py_REFCNT(value) > 1 + own;
    SeenEntry *seen = shareable ? seen_find(w, value) : NULL;
    if (seen != NULL) {
        if (w->nodes > w->max_nodes - (seen->nodes - 1) || add_size(w, seen->size)) {
            return BAIL;
        }
        w->nodes += seen->nodes - 1;
        Py_INCREF(seen->result);
        return seen->result;
    }
    Py_ssize_t nodes = w->nodes - 1, size = w->size;
    PyObject *result;
    Py_INCREF(value);
    if (kind == &PyDict_Type) {
        result = walk_dict(w, value, depth);
    }
    else if (kind == &PyList_Type) {
        result = walk_items(w, value, depth);
    }
    else {
        result = walk_tuple(w, value, depth);
    }
    if (shareable && result != NULL && !is_bail(result) &&
        seen_add(w, value, result, w->nodes - nodes, w->size - size) < 0) {
        Py_CLEAR(result);
    }
    Py_DECREF(value);
    return result;
}

static PyObject *
wirecopy_copy(PyObject *module, PyObject *args)
{
    PyObject *value, *check;
    int as_json, handle_token;
    Py_ssize_t max_bytes, max_nodes;
    if (!PyArg_ParseTuple(args, "OppnnO:copy", &value, &as_json, &handle_token, &max_bytes, &max_nodes, &check)) {
        return NULL;
    }
    if (MAX_DEPTH < 0) {
        PyErr_SetString(PyExc_RuntimeError, "_wirecopy.configure was not called");
        return NULL;
    }
    Walk w = {as_json, handle_token, check, max_bytes, max_nodes, 0, 0, CHECK_EVERY, NULL, 0, 0};
    PyObject *result;
    int status = count(&w, 1);
    if (status) {
        result = status > 0 ? BAIL : NULL;
    }
    else {
        result = item(&w, value, 0, -1);
    }
    seen_clear(&w);
    if (is_bail(result)) {
        Py_INCREF(UNHANDLED);
        return UNHANDLED;
    }
    return result;
}

/* --- depth ----------------------------------------------------------------------------------- */

static int
is_container(PyObject *value)
{
    PyTypeObject *kind = Py_TYPE(value);
    return kind == &PyList_Type || kind == &PyDict_Type || kind == &PyTuple_Type || kind == &PySet_Type ||
           kind == &PyFrozenSet_Type;
}

static Py_ssize_t depth_of(PyObject *value, Py_ssize_t level, Py_ssize_t limit);

/* `deepest`, or the depth of `child` one level below `level` when that is deeper; -1 with an
 * exception set. The child is held while it is walked: walking a set allocates, which may
 * collect and run finalisers that change the container `child` came from. */
static Py_ssize_t
deeper(PyObject *child, Py_ssize_t level, Py_ssize_t limit, Py_ssize_t deepest)
{
    if (!is_container(child)) {
        return deepest;
    }
    Py_INCREF(child);
    Py_ssize_t d = depth_of(child, level + 1, limit);
    Py_DECREF(child);
    return d < 0 ? -1 : d > deepest ? d : deepest;
}

/* Depth of the container `value` at nesting `level`, counted up to `limit + 1`; -1 with an
 * exception set. Only exact container types are entered, so no code of the value's runs; a
 * list's size is read again at every step, as a finaliser may have shortened it. */
static Py_ssize_t
depth_of(PyObject *value, Py_ssize_t level, Py_ssize_t limit)
{
    if (level > limit) {
        return level;
    }
    Py_ssize_t deepest = level;
    PyTypeObject *kind = Py_TYPE(value);
    if (kind == &PyList_Type || kind == &PyTuple_Type) {
        int list = kind == &PyList_Type;
        for (Py_ssize_t i = 0; i < Py_SIZE(value) && deepest >= 0 && deepest <= limit; i++) {
            deepest = deeper(list ? PyList_GET_ITEM(value, i) : PyTuple_GET_ITEM(value, i), level, limit, deepest);
        }
        return deepest;
    }
    if (kind == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *key, *child;
        while (deepest >= 0 && deepest <= limit && PyDict_Next(value, &pos, &key, &child)) {
            deepest = deeper(child, level, limit, deepest);
        }
        return deepest;
    }
    PyObject *iterator = PyObject_GetIter(value);  /* an exact set or frozenset */
    if (iterator == NULL) {
        return -1;
    }
    PyObject *child;
    while (deepest >= 0 && deepest <= limit && (child = PyIter_Next(iterator)) != NULL) {
        deepest = deeper(child, level, limit, deepest);
        Py_DECREF(child);
    }
    Py_DECREF(iterator);
    return PyErr_Occurred() ? -1 : deepest;
}

static PyObject *
wirecopy_depth(PyObject *module, PyObject *args)
{
    PyObject *value;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "On:depth", &value, &limit)) {
        return NULL;
    }
    if (!is_container(value)) {
        return PyLong_FromLong(0);
    }
    Py_ssize_t d = depth_of(value, 1, limit);
    return d < 0 ? NULL : PyLong_FromSsize_t(d);
}

static PyObject *
wirecopy_configure(PyObject *module, PyObject *args)
{
    PyObject *tag, *marker, *tuple_name, *v_key;
    Py_ssize_t max_depth, max_int_bits, check_every, tag_bytes;
    if (!PyArg_ParseTuple(args, "UUUUnnnn:configure", &tag, &marker, &tuple_name, &v_key, &max_depth, &max_int_bits,
                          &check_every, &tag_bytes)) {
        return NULL;
    }
    Py_INCREF(tag);
    Py_INCREF(marker);
    Py_INCREF(tuple_name);
    Py_INCREF(v_key);
    Py_XSETREF(TAG, tag);
    Py_XSETREF(SECRET_MARKER, marker);
    Py_XSETREF(TUPLE_NAME, tuple_name);
    Py_XSETREF(V_KEY, v_key);
    MAX_DEPTH = max_depth;
    MAX_INT_BITS = max_int_bits;
    CHECK_EVERY = check_every;
    TAG_BYTES = tag_bytes;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"copy", wirecopy_copy, METH_VARARGS,
     "copy(value, as_json, handle_token, max_bytes, max_nodes, check): the plain copy of a value made only of "
     "exact JSON types (and tuples), or UNHANDLED when the Python walk must convert it."},
    {"depth", wirecopy_depth, METH_VARARGS,
     "depth(value, limit): runtimes.wire.depth of plain data, counted up to limit + 1."},
    {"configure", wirecopy_configure, METH_VARARGS,
     "configure(tag, secret_marker, tuple_name, v_key, max_depth, max_int_bits, check_every, tag_bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_wirecopy", "Fast path of runtimes.wire's plain-data copy.", -1, methods,
};

PyMODINIT_FUNC
PyInit__wirecopy(void)
{
    for (int c = 0; c < 128; c++) {
        ASCII_BYTES[c] = (c >= ' ' && c <= '~' && c != '\\' && c != '"') ? 1 : 6;
    }
    ASCII_BYTES['\\'] = ASCII_BYTES['"'] = ASCII_BYTES['\b'] = ASCII_BYTES['\f'] = 2;
    ASCII_BYTES['\n'] = ASCII_BYTES['\r'] = ASCII_BYTES['\t'] = 2;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    UNHANDLED = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (UNHANDLED == NULL || PyModule_AddObjectRef(module, "UNHANDLED", UNHANDLED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
