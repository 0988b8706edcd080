/*
 * processors._frozen_window: the binary search of processors/frozen_window.py in C.
 *
 * find(names, ends, key) is frozen_window.find_py: the index of the entry named `key` among the sorted
 * names (one bytes-like buffer, `ends` an array('I') of where each name ends), -1 when absent. In Python a
 * lookup costs ~14 interpreted steps at 10k entries; expiring a window looks each of its name servers up in
 * every other window (NsState._retired_records), millions of lookups an hour on a real feed.
 *
 * merge(names, name_ends, values, value_ends, drop, add) is frozen_window.merge_py: a frozen window's
 * buffers without the entries named in `drop` and with the records of `add`, as four bytes objects. In
 * Python it costs ~1.5 us an entry kept (a tuple and two slices each); NsState merges its hot totals into
 * frozen totals of hundreds of thousands of name servers this way, a few times as they grow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "frozen_search.h"

static PyObject *
find(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer names, ends, key;
    PyObject *result = NULL;

    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "find(names, ends, key) takes 3 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &names, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &ends, PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&names);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &key, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&ends);
        PyBuffer_Release(&names);
        return NULL;
    }
    if (ends.itemsize != 4 || ends.format == NULL || strcmp(ends.format, "I") != 0) {
        PyErr_SetString(PyExc_TypeError, "find: ends must be an array('I')");
        goto done;
    }
    {
        Py_ssize_t found = frozen_search((const char *)names.buf, names.len, (const uint32_t *)ends.buf,
                                         ends.len / 4, (const char *)key.buf, key.len);
        if (found > -2)
            result = PyLong_FromSsize_t(found);
    }
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&names);
    return result;
}

/* the name and value of entry i of a frozen window's buffers */
typedef struct {
    const char *names, *values;
    const uint32_t *name_ends, *value_ends;
    Py_ssize_t n;
} window_t;

static Py_ssize_t
start_of(const uint32_t *ends, Py_ssize_t i)
{
    return i ? (Py_ssize_t)ends[i - 1] : 0;
}

/* (name, value) bytes of an added record: a tuple of two bytes; TypeError else */
static int
record_of(PyObject *record, PyObject **name, PyObject **value)
{
    if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(record, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(record, 1))) {
        PyErr_SetString(PyExc_TypeError, "merge: add must hold (bytes, bytes) records");
        return -1;
    }
    *name = PyTuple_GET_ITEM(record, 0);
    *value = PyTuple_GET_ITEM(record, 1);
    return 0;
}

/* out[*at] = an entry's end, checked against the 32-bit limit */
static int
put_end(char *out, Py_ssize_t at, Py_ssize_t end)
{
    uint32_t e;

    if (end > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "merge: the buffers would pass 32-bit offsets");
        return -1;
    }
    e = (uint32_t)end;
    memcpy(out + 4 * at, &e, 4);
    return 0;
}

/*
 * The names of `list` (merge's drop: bytes; with `names_size`, its add: (name, value) records, whose sizes
 * are summed) sorted, without repeats; TypeError or ValueError, naming the argument `what`, else.
 */
static int
check_sorted(PyObject *list, const char *what, Py_ssize_t *names_size, Py_ssize_t *values_size)
{
    const char *prev = NULL;
    Py_ssize_t prev_len = 0;

    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(list); k++) {
        PyObject *name = PyList_GET_ITEM(list, k), *value;
        if (names_size != NULL) {
            if (record_of(name, &name, &value) < 0)
                return -1;
            *names_size += PyBytes_GET_SIZE(name);
            *values_size += PyBytes_GET_SIZE(value);
        }
        else if (!PyBytes_Check(name)) {
            PyErr_Format(PyExc_TypeError, "merge: %s must hold bytes", what);
            return -1;
        }
        if (k && frozen_compare(prev, prev_len, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)) >= 0) {
            PyErr_Format(PyExc_ValueError, "merge: %s must be sorted by name, without repeats", what);
            return -1;
        }
        prev = PyBytes_AS_STRING(name);
        prev_len = PyBytes_GET_SIZE(name);
    }
    return 0;
}

/*
 * merge_py: walks the window's entries, the sorted names to drop and the sorted records to add together,
 * once, copying each kept entry's bytes into buffers sized for the most they can hold, then cut to size.
 */
static PyObject *
merge_entries(window_t *w, PyObject *drop, PyObject *add)
{
    Py_ssize_t nd = PyList_GET_SIZE(drop), na = PyList_GET_SIZE(add), names_max = 0, values_max = 0;
    Py_ssize_t i = 0, d = 0, a = 0, count = 0, names_len = 0, values_len = 0;
    PyObject *names = NULL, *name_ends = NULL, *values = NULL, *value_ends = NULL, *name, *value;

    if (check_sorted(drop, "drop", NULL, NULL) < 0 || check_sorted(add, "add", &names_max, &values_max) < 0)
        return NULL;
    names_max += w->n ? (Py_ssize_t)w->name_ends[w->n - 1] : 0;
    values_max += w->n ? (Py_ssize_t)w->value_ends[w->n - 1] : 0;
    if ((names = PyBytes_FromStringAndSize(NULL, names_max)) == NULL ||
        (values = PyBytes_FromStringAndSize(NULL, values_max)) == NULL ||
        (name_ends = PyBytes_FromStringAndSize(NULL, 4 * (w->n + na))) == NULL ||
        (value_ends = PyBytes_FromStringAndSize(NULL, 4 * (w->n + na))) == NULL)
        goto fail;
    while (i < w->n || a < na) {
        const char *bn = NULL, *src_name, *src_value;
        Py_ssize_t bn_len = 0, name_len, value_len;

        if (i < w->n) {
            int c = 1;
            bn = w->names + start_of(w->name_ends, i);
            bn_len = (Py_ssize_t)w->name_ends[i] - start_of(w->name_ends, i);
            while (d < nd && (c = frozen_compare(PyBytes_AS_STRING(PyList_GET_ITEM(drop, d)),
                                                 PyBytes_GET_SIZE(PyList_GET_ITEM(drop, d)), bn, bn_len)) < 0)
                d++;
            if (d < nd && c == 0) {
                i++;
                continue;
            }
        }
        if (a < na) {
            PyObject *record = PyList_GET_ITEM(add, a);
            name = PyTuple_GET_ITEM(record, 0);
            value = PyTuple_GET_ITEM(record, 1);
        }
        if (a < na && (i >= w->n || frozen_compare(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), bn, bn_len) <= 0)) {
            if (i < w->n && frozen_compare(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), bn, bn_len) == 0)
                i++; /* the added record replaces the window's entry of that name */
            src_name = PyBytes_AS_STRING(name);
            name_len = PyBytes_GET_SIZE(name);
            src_value = PyBytes_AS_STRING(value);
            value_len = PyBytes_GET_SIZE(value);
            a++;
        }
        else {
            src_name = bn;
            name_len = bn_len;
            src_value = w->values + start_of(w->value_ends, i);
            value_len = (Py_ssize_t)w->value_ends[i] - start_of(w->value_ends, i);
            i++;
        }
        memcpy(PyBytes_AS_STRING(names) + names_len, src_name, (size_t)name_len);
        memcpy(PyBytes_AS_STRING(values) + values_len, src_value, (size_t)value_len);
        names_len += name_len;
        values_len += value_len;
        if (put_end(PyBytes_AS_STRING(name_ends), count, names_len) < 0 ||
            put_end(PyBytes_AS_STRING(value_ends), count, values_len) < 0)
            goto fail;
        count++;
    }
    if (_PyBytes_Resize(&names, names_len) < 0 || _PyBytes_Resize(&values, values_len) < 0 ||
        _PyBytes_Resize(&name_ends, 4 * count) < 0 || _PyBytes_Resize(&value_ends, 4 * count) < 0)
        goto fail;
    return Py_BuildValue("(NNNN)", names, name_ends, values, value_ends);
fail:
    Py_XDECREF(names);
    Py_XDECREF(name_ends);
    Py_XDECREF(values);
    Py_XDECREF(value_ends);
    return NULL;
}

/* ends of n entries, within a buffer of len bytes and not decreasing; ValueError else */
static int
check_ends(const uint32_t *ends, Py_ssize_t n, Py_ssize_t len)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((Py_ssize_t)ends[i] > len || (i && ends[i] < ends[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "merge: ends must not decrease nor reach past their buffer");
            return -1;
        }
    }
    return 0;
}

static PyObject *
merge(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer bufs[4];
    int held = 0;
    PyObject *result = NULL;
    window_t w;

    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "merge(names, name_ends, values, value_ends, drop, add) takes 6 arguments");
        return NULL;
    }
    if (!PyList_Check(args[4]) || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "merge: drop and add must be lists");
        return NULL;
    }
    for (; held < 4; held++) {
        if (PyObject_GetBuffer(args[held], &bufs[held], held % 2 ? PyBUF_FORMAT : PyBUF_SIMPLE) < 0)
            goto done;
        if (held % 2 && (bufs[held].itemsize != 4 || bufs[held].format == NULL || strcmp(bufs[held].format, "I") != 0)) {
            PyErr_SetString(PyExc_TypeError, "merge: name_ends and value_ends must be arrays('I')");
            held++;
            goto done;
        }
    }
    w.names = (const char *)bufs[0].buf;
    w.name_ends = (const uint32_t *)bufs[1].buf;
    w.values = (const char *)bufs[2].buf;
    w.value_ends = (const uint32_t *)bufs[3].buf;
    w.n = bufs[1].len / 4;
    if (bufs[3].len / 4 != w.n) {
        PyErr_SetString(PyExc_ValueError, "merge: name_ends and value_ends differ in length");
        goto done;
    }
    if (check_ends(w.name_ends, w.n, bufs[0].len) < 0 || check_ends(w.value_ends, w.n, bufs[2].len) < 0)
        goto done;
    result = merge_entries(&w, args[4], args[5]);
done:
    while (held-- > 0)
        PyBuffer_Release(&bufs[held]);
    return result;
}

static PyMethodDef methods[] = {
    {"merge", (PyCFunction)(void (*)(void))merge, METH_FASTCALL,
     "merge(names, name_ends, values, value_ends, drop, add): frozen_window.merge_py"},
    {"find", (PyCFunction)(void (*)(void))find, METH_FASTCALL,
     "find(names, ends, key): index of the entry named key, -1 when absent (frozen_window.find_py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_frozen_window", "processors/frozen_window.py's find and merge in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__frozen_window(void)
{
    return PyModule_Create(&module_def);
}
