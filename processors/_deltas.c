/*
 * processors._deltas: the filter agent's per-name-server counting and its NsStatsBatch encoding, in C.
 *
 * Why this exists: at real name-server cardinality (~480k distinct name servers per million records)
 * almost every counted record starts a new (name server, window) key, and the Python code pays per key
 * for a counts object, a merge into the batch, murmur2 and the row tuples: about 7 s of a worker's
 * 25 s CPU per million records, against 1 s with 8 name servers.
 *
 * processors/deltas.py is the specification, not this file: fold() is fold_py() (the same dict of
 * the same lists and maps afterwards) and encode() is encode_py() (the same partitions and the same
 * bytes, which are delta_batch.encode_batch's, i.e. fastavro's), held to it by
 * tests/processors/test_deltas.py on the corpus and on hypothesis-generated counts.
 *
 * Inputs are checked strictly: the keys' parts must be exact bytes and int, kinds exact str, counts
 * exact int lists of five slots, else TypeError/ValueError. That also means no Python code runs while
 * this code holds borrowed references (hashing and comparing bytes, int and str is C code), so a
 * borrowed list item or dict value cannot be freed under it. Counts are int64: a count that would not
 * fit raises OverflowError (encode_batch's array('q') would too; real counts are far smaller).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "../nmsgdns/varint.h"
#include "../dnsqr_kafka/murmur2.h"
#include "counts.h" /* SLOT_* of a key's counts list, EVENT_* of a counted record */

/* ------------------------------------------------------------------------------------------------ */
/* fold                                                                                              */

/* list[slot] += n for an int slot; -1 with an exception set on failure. */
static int
add_to_slot(PyObject *list, Py_ssize_t slot, long long n)
{
    PyObject *old = PyList_GET_ITEM(list, slot), *sum;
    long long v;

    if (!PyLong_CheckExact(old)) {
        PyErr_SetString(PyExc_TypeError, "a count is not an int");
        return -1;
    }
    v = PyLong_AsLongLong(old);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v > LLONG_MAX - n) {
        PyErr_SetString(PyExc_OverflowError, "a count does not fit in int64");
        return -1;
    }
    sum = PyLong_FromLongLong(v + n);
    if (sum == NULL)
        return -1;
    PyList_SET_ITEM(list, slot, sum); /* steals sum; the old item is ours to release */
    Py_DECREF(old);
    return 0;
}

/* list[slot][kind] += 1, the map made when the slot is None; -1 with an exception set on failure. */
static int
add_kind(PyObject *list, Py_ssize_t slot, PyObject *kind)
{
    PyObject *map = PyList_GET_ITEM(list, slot), *old, *sum;
    long long v = 0;
    int rc;

    if (!PyUnicode_CheckExact(kind)) {
        PyErr_SetString(PyExc_TypeError, "a failure kind or observation is not a str");
        return -1;
    }
    if (map == Py_None) {
        map = PyDict_New();
        if (map == NULL)
            return -1;
        PyList_SET_ITEM(list, slot, map); /* steals map, and leaves the list's reference to None to us */
        Py_DECREF(Py_None);
    }
    else if (!PyDict_CheckExact(map)) {
        PyErr_SetString(PyExc_TypeError, "kind counts are neither None nor a dict");
        return -1;
    }
    old = PyDict_GetItemWithError(map, kind); /* borrowed */
    if (old != NULL) {
        if (!PyLong_CheckExact(old)) {
            PyErr_SetString(PyExc_TypeError, "a kind's count is not an int");
            return -1;
        }
        v = PyLong_AsLongLong(old);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v == LLONG_MAX) {
            PyErr_SetString(PyExc_OverflowError, "a count does not fit in int64");
            return -1;
        }
    }
    else if (PyErr_Occurred())
        return -1;
    sum = PyLong_FromLongLong(v + 1);
    if (sum == NULL)
        return -1;
    rc = PyDict_SetItem(map, kind, sum);
    Py_DECREF(sum);
    return rc;
}

/*
 * A new counts list [0, 0, 0, None, None], untracked by the cyclic garbage collector.
 *
 * Why untracked: at high cardinality a batch holds ~100k of these lists, and the collections that the
 * allocations trigger walked every one of them again and again (measured: 0.15 s of fold()'s 0.19 s on
 * 200 containers of 480k name servers). They hold only ints, None and dicts of str -> int (which
 * CPython itself leaves untracked), so they can never be part of a reference cycle; reference counting
 * frees them as it would anyway.
 */
static PyObject *
new_counts(void)
{
    PyObject *list = PyList_New(SLOTS);
    Py_ssize_t i;

    if (list == NULL)
        return NULL;
    for (i = 0; i < SLOTS; i++) {
        PyObject *item = i < SLOT_BY_KIND ? PyLong_FromLong(0) : Py_None;
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        if (item == Py_None)
            Py_INCREF(item);
        PyList_SET_ITEM(list, i, item);
    }
    PyObject_GC_UnTrack(list);
    return list;
}

PyDoc_STRVAR(fold_doc,
             "fold(counts, counted)\n--\n\n"
             "deltas.fold_py in C: add the flat (ip, start, event, kind) quadruples of ``counted`` to\n"
             "``counts``.");

static PyObject *
ns_fold(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *counts, *counted;
    Py_ssize_t n, i;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fold() takes counts and counted");
        return NULL;
    }
    counts = args[0];
    counted = args[1];
    if (!PyDict_CheckExact(counts) || !PyList_CheckExact(counted)) {
        PyErr_SetString(PyExc_TypeError, "fold() takes a dict and a list");
        return NULL;
    }
    n = PyList_GET_SIZE(counted);
    if (n % 4) {
        PyErr_Format(PyExc_ValueError, "%zd items are not whole (ip, start, what, kind) quadruples", n);
        return NULL;
    }
    for (i = 0; i < n; i += 4) {
        /* borrowed: counted is not changed below (no Python code runs, see the top of the file) */
        PyObject *ip = PyList_GET_ITEM(counted, i), *start = PyList_GET_ITEM(counted, i + 1);
        PyObject *event_obj = PyList_GET_ITEM(counted, i + 2), *kind = PyList_GET_ITEM(counted, i + 3);
        PyObject *key, *c;
        long event;

        if (!PyBytes_CheckExact(ip) || !PyLong_CheckExact(start) || !PyLong_CheckExact(event_obj)) {
            PyErr_SetString(PyExc_TypeError, "a counted record is not (bytes, int, int, kind)");
            return NULL;
        }
        event = PyLong_AsLong(event_obj);
        if (event == -1 && PyErr_Occurred())
            return NULL;
        if (event != EVENT_ANSWERED && event != EVENT_FAILURE && event != EVENT_TIMEOUT) {
            PyErr_Format(PyExc_ValueError, "counted record of unknown kind %R", event_obj);
            return NULL;
        }
        key = PyTuple_Pack(2, ip, start);
        if (key == NULL)
            return NULL;
        c = PyDict_GetItemWithError(counts, key); /* borrowed; the dict keeps it */
        if (c == NULL) {
            if (PyErr_Occurred() || (c = new_counts()) == NULL) {
                Py_DECREF(key);
                return NULL;
            }
            /* a tuple of bytes and int, which the collector would untrack itself on its next pass */
            PyObject_GC_UnTrack(key);
            if (PyDict_SetItem(counts, key, c) < 0) {
                Py_DECREF(c);
                Py_DECREF(key);
                return NULL;
            }
            Py_DECREF(c);
        }
        Py_DECREF(key);
        if (!PyList_CheckExact(c) || PyList_GET_SIZE(c) != SLOTS) {
            PyErr_SetString(PyExc_TypeError, "counts of a key are not a list of five");
            return NULL;
        }
        if (event == EVENT_TIMEOUT) {
            if (add_to_slot(c, SLOT_TIMEOUTS, 1) < 0)
                return NULL;
            continue;
        }
        if (add_to_slot(c, SLOT_ANSWERED, 1) < 0)
            return NULL;
        if (event == EVENT_FAILURE) {
            if (add_to_slot(c, SLOT_FAILURES, 1) < 0 || add_kind(c, SLOT_BY_KIND, kind) < 0)
                return NULL;
        }
        else if (kind != Py_None && add_kind(c, SLOT_OBSERVATIONS, kind) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------------ */
/* encode                                                                                            */

/* A growable byte buffer; the functions return -1 with MemoryError set when it cannot grow. */
typedef struct {
    unsigned char *data;
    size_t len, cap;
} Buf;

static int
buf_reserve(Buf *b, size_t more)
{
    size_t cap;
    unsigned char *data;

    if (more <= b->cap - b->len)
        return 0;
    if (more > PY_SSIZE_T_MAX - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    cap = b->cap ? b->cap : 256;
    while (cap - b->len < more)
        cap = cap > PY_SSIZE_T_MAX / 2 ? b->len + more : cap * 2;
    data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int
buf_put(Buf *b, const void *src, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

/* Avro "long" (and "int"): zig-zag, then base-128 varint, low groups first (fastavro's write_long). */
static int
buf_put_long(Buf *b, int64_t v)
{
    unsigned char tmp[VARINT_MAX_BYTES];

    return buf_put(b, tmp, (size_t)(varint_put(tmp, zigzag_encode(v)) - tmp));
}

/* One int64 little-endian (an element of a packed column), whatever the host's byte order. */
static int
buf_put_le64(Buf *b, int64_t v)
{
    unsigned char tmp[8];
    uint64_t u = (uint64_t)v;
    int k;

    for (k = 0; k < 8; k++)
        tmp[k] = (unsigned char)(u >> (8 * k));
    return buf_put(b, tmp, 8);
}

/* Avro "bytes"/"string": length, then the bytes. */
static int
buf_put_avro_bytes(Buf *b, const void *src, size_t n)
{
    if (buf_put_long(b, (int64_t)n) < 0)
        return -1;
    return buf_put(b, src, n);
}

/* One row of the batch: a key of counts, its name server's text and the partition it goes to. */
typedef struct {
    PyObject *counts; /* the key's counts list (a reference of ours) */
    int64_t start, answered, failures, timeouts;
    char text[INET6_ADDRSTRLEN];
    size_t text_len;
    Py_ssize_t next; /* the partition's next row, -1 at its end */
} Row;

/* An exact int as int64; -1 with an exception set when it is not one or does not fit. */
static int
as_int64(PyObject *obj, int64_t *out)
{
    long long v;

    if (!PyLong_CheckExact(obj)) {
        PyErr_SetString(PyExc_TypeError, "a count or window start is not an int");
        return -1;
    }
    v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* Fill `row` from one item of the counts dict (with a new reference to the counts); -1 on error. */
static int
read_row(PyObject *key, PyObject *value, Row *row)
{
    PyObject *ip, *start;
    const unsigned char *raw;
    Py_ssize_t n, i;

    if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 2) {
        PyErr_SetString(PyExc_TypeError, "a counts key is not (ip, start)");
        return -1;
    }
    ip = PyTuple_GET_ITEM(key, 0);
    start = PyTuple_GET_ITEM(key, 1);
    if (!PyBytes_CheckExact(ip)) {
        PyErr_SetString(PyExc_TypeError, "a counts key's address is not bytes");
        return -1;
    }
    if (as_int64(start, &row->start) < 0)
        return -1;
    if (!PyList_CheckExact(value) || PyList_GET_SIZE(value) != SLOTS) {
        PyErr_SetString(PyExc_TypeError, "counts of a key are not a list of five");
        return -1;
    }
    if (as_int64(PyList_GET_ITEM(value, SLOT_ANSWERED), &row->answered) < 0
        || as_int64(PyList_GET_ITEM(value, SLOT_FAILURES), &row->failures) < 0
        || as_int64(PyList_GET_ITEM(value, SLOT_TIMEOUTS), &row->timeouts) < 0)
        return -1;
    for (i = SLOT_BY_KIND; i <= SLOT_OBSERVATIONS; i++) {
        PyObject *map = PyList_GET_ITEM(value, i);
        if (map != Py_None && !PyDict_CheckExact(map)) {
            PyErr_SetString(PyExc_TypeError, "kind counts are neither None nor a dict");
            return -1;
        }
    }
    /* the name server's text: inet_ntop, as ip_to_text (socket.inet_ntop is libc's too); "" for b"" */
    raw = (const unsigned char *)PyBytes_AS_STRING(ip);
    n = PyBytes_GET_SIZE(ip);
    if (n == 0)
        row->text[0] = '\0';
    else if ((n != 4 && n != 16)
             || inet_ntop(n == 4 ? AF_INET : AF_INET6, raw, row->text, sizeof row->text) == NULL) {
        PyErr_Format(PyExc_ValueError, "IP address field has %zd bytes, expected 4 or 16", n);
        return -1;
    }
    row->text_len = strlen(row->text);
    Py_INCREF(value);
    row->counts = value;
    return 0;
}

/*
 * The (row, kind index, count) triples of slot `slot` of rows first..(in the partition's chain, `count`
 * rows) into `triples`, numbering new kind names in `index` (str -> int) and appending them to `names`.
 */
static int
kind_triples(Row *rows, Py_ssize_t first, Py_ssize_t count, Py_ssize_t slot, PyObject *index,
             PyObject *names, Buf *triples)
{
    Py_ssize_t r, j;

    for (r = first, j = 0; j < count; r = rows[r].next, j++) {
        PyObject *map = PyList_GET_ITEM(rows[r].counts, slot), *kind, *n;
        Py_ssize_t pos = 0;

        if (map == Py_None)
            continue;
        while (PyDict_Next(map, &pos, &kind, &n)) {
            PyObject *at;
            int64_t k, v;

            if (!PyUnicode_CheckExact(kind)) {
                PyErr_SetString(PyExc_TypeError, "a failure kind or observation is not a str");
                return -1;
            }
            if (as_int64(n, &v) < 0)
                return -1;
            at = PyDict_GetItemWithError(index, kind); /* borrowed */
            if (at == NULL) {
                if (PyErr_Occurred())
                    return -1;
                at = PyLong_FromSsize_t(PyList_GET_SIZE(names));
                if (at == NULL)
                    return -1;
                if (PyDict_SetItem(index, kind, at) < 0 || PyList_Append(names, kind) < 0) {
                    Py_DECREF(at);
                    return -1;
                }
                Py_DECREF(at); /* the index dict keeps it */
            }
            k = (int64_t)PyLong_AsSsize_t(at);
            if (buf_put_le64(triples, j) < 0 || buf_put_le64(triples, k) < 0 || buf_put_le64(triples, v) < 0)
                return -1;
        }
    }
    return 0;
}

/*
 * encode_batch() of `count` rows of a partition's chain from `first`: the NsStatsBatch record, as
 * fastavro's schemaless_writer writes it (fields in schema order; an array is its item count, the items
 * and a 0, or just 0 when empty).
 */
static PyObject *
encode_part(Row *rows, Py_ssize_t first, Py_ssize_t count, int64_t version, int64_t part)
{
    PyObject *index = NULL, *names = NULL, *result = NULL;
    Buf out = {NULL, 0, 0}, by_kind = {NULL, 0, 0}, observations = {NULL, 0, 0};
    Py_ssize_t r, j, column;
    size_t text_len = 0;

    index = PyDict_New();
    names = PyList_New(0);
    if (index == NULL || names == NULL)
        goto done;
    if (kind_triples(rows, first, count, SLOT_BY_KIND, index, names, &by_kind) < 0
        || kind_triples(rows, first, count, SLOT_OBSERVATIONS, index, names, &observations) < 0)
        goto done;
    if (buf_put_long(&out, version) < 0 || buf_put_long(&out, part) < 0)
        goto done;
    /* name_servers: the texts joined by newlines */
    for (r = first, j = 0; j < count; r = rows[r].next, j++)
        text_len += rows[r].text_len + (j > 0);
    if (buf_put_long(&out, (int64_t)text_len) < 0 || buf_reserve(&out, text_len) < 0)
        goto done;
    for (r = first, j = 0; j < count; r = rows[r].next, j++) {
        if ((j > 0 && buf_put(&out, "\n", 1) < 0) || buf_put(&out, rows[r].text, rows[r].text_len) < 0)
            goto done;
    }
    /* the packed int64 columns: window_starts, edns_answered, failures, timeouts */
    for (column = 0; column < 4; column++) {
        if (buf_put_long(&out, 8 * (int64_t)count) < 0 || buf_reserve(&out, 8 * (size_t)count) < 0)
            goto done;
        for (r = first, j = 0; j < count; r = rows[r].next, j++) {
            const Row *row = &rows[r];
            int64_t v = column == 0   ? row->start
                        : column == 1 ? row->answered
                        : column == 2 ? row->failures
                                      : row->timeouts;
            if (buf_put_le64(&out, v) < 0)
                goto done;
        }
    }
    /* kind_names */
    if (PyList_GET_SIZE(names) > 0) {
        if (buf_put_long(&out, PyList_GET_SIZE(names)) < 0)
            goto done;
        for (j = 0; j < PyList_GET_SIZE(names); j++) {
            Py_ssize_t size;
            const char *utf8 = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(names, j), &size);
            if (utf8 == NULL || buf_put_avro_bytes(&out, utf8, (size_t)size) < 0)
                goto done;
        }
    }
    if (buf_put_long(&out, 0) < 0)
        goto done;
    if (buf_put_avro_bytes(&out, by_kind.data, by_kind.len) < 0
        || buf_put_avro_bytes(&out, observations.data, observations.len) < 0)
        goto done;
    result = PyBytes_FromStringAndSize((const char *)out.data, (Py_ssize_t)out.len);
done:
    Py_XDECREF(index);
    Py_XDECREF(names);
    PyMem_Free(out.data);
    PyMem_Free(by_kind.data);
    PyMem_Free(observations.data);
    return result;
}

PyDoc_STRVAR(encode_doc,
             "encode(counts, partitions, max_rows, version)\n--\n\n"
             "deltas.encode_py in C: {ns-stats partition: [NsStatsBatch bytes, ...]} of ``counts``,\n"
             "the partition of a name server being Kafka's default (murmur2) among ``partitions``.");

static PyObject *
ns_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *counts, *key, *value, *result = NULL;
    Py_ssize_t n, i = 0, pos = 0, max_rows, partitions, *head = NULL, *tail = NULL, *size = NULL;
    Py_ssize_t *order = NULL, used = 0, filled = 0;
    long long version;
    Row *rows = NULL;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "encode() takes counts, partitions, max_rows and version");
        return NULL;
    }
    counts = args[0];
    if (!PyDict_CheckExact(counts)) {
        PyErr_SetString(PyExc_TypeError, "encode() takes a dict of counts");
        return NULL;
    }
    partitions = PyLong_AsSsize_t(args[1]);
    if (partitions == -1 && PyErr_Occurred())
        return NULL;
    max_rows = PyLong_AsSsize_t(args[2]);
    if (max_rows == -1 && PyErr_Occurred())
        return NULL;
    version = PyLong_AsLongLong(args[3]);
    if (version == -1 && PyErr_Occurred())
        return NULL;
    if (partitions < 1 || max_rows < 1) {
        PyErr_SetString(PyExc_ValueError, "encode() needs at least one partition and one row per record");
        return NULL;
    }
    n = PyDict_GET_SIZE(counts);
    rows = PyMem_Calloc(n ? (size_t)n : 1, sizeof *rows);
    head = PyMem_Calloc((size_t)partitions, sizeof *head);
    tail = PyMem_Calloc((size_t)partitions, sizeof *tail);
    size = PyMem_Calloc((size_t)partitions, sizeof *size);
    order = PyMem_Calloc((size_t)partitions, sizeof *order);
    if (rows == NULL || head == NULL || tail == NULL || size == NULL || order == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* rows in the dict's order, chained per partition; partitions in the order of their first row */
    while (PyDict_Next(counts, &pos, &key, &value)) {
        Py_ssize_t p;

        if (i >= n) { /* cannot happen: nothing changes the dict while this runs */
            PyErr_SetString(PyExc_RuntimeError, "counts changed size during encode()");
            goto done;
        }
        if (read_row(key, value, &rows[i]) < 0)
            goto done;
        filled = i + 1;
        p = (Py_ssize_t)((murmur2((const unsigned char *)rows[i].text, rows[i].text_len) & 0x7FFFFFFFu)
                         % (uint32_t)partitions);
        rows[i].next = -1;
        if (size[p] == 0) {
            head[p] = i;
            order[used++] = p;
        }
        else
            rows[tail[p]].next = i;
        tail[p] = i;
        size[p]++;
        i++;
    }
    result = PyDict_New();
    if (result == NULL)
        goto done;
    for (i = 0; i < used; i++) {
        Py_ssize_t p = order[i], first = head[p], left = size[p], part = 0;
        PyObject *records = PyList_New(0), *pkey;
        int rc;

        if (records == NULL)
            goto fail;
        while (left > 0) {
            Py_ssize_t take = left < max_rows ? left : max_rows, k;
            PyObject *record = encode_part(rows, first, take, (int64_t)version, part++);
            if (record == NULL || PyList_Append(records, record) < 0) {
                Py_XDECREF(record);
                Py_DECREF(records);
                goto fail;
            }
            Py_DECREF(record);
            for (k = 0; k < take; k++)
                first = rows[first].next;
            left -= take;
        }
        pkey = PyLong_FromSsize_t(p);
        rc = pkey == NULL ? -1 : PyDict_SetItem(result, pkey, records);
        Py_XDECREF(pkey);
        Py_DECREF(records);
        if (rc < 0)
            goto fail;
    }
    goto done;
fail:
    Py_CLEAR(result);
done:
    for (i = 0; rows != NULL && i < filled; i++)
        Py_DECREF(rows[i].counts);
    PyMem_Free(rows);
    PyMem_Free(head);
    PyMem_Free(tail);
    PyMem_Free(size);
    PyMem_Free(order);
    return result;
}

static PyMethodDef methods[] = {
    {"fold", (PyCFunction)(void (*)(void))ns_fold, METH_FASTCALL, fold_doc},
    {"encode", (PyCFunction)(void (*)(void))ns_encode, METH_FASTCALL, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "processors._deltas",
    "The filter agent's per-name-server counts and their NsStatsBatch records (processors/deltas.py),\n"
    "in C.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__deltas(void)
{
    return PyModule_Create(&module);
}
