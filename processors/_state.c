/*
 * processors._state: the aggregator's per-name-server work (processors/state.py, snapshots.py) in C.
 *
 * Why this exists: at ~480k distinct name servers (bench/out/big-hc.nmsg) decoding the ns-stats records,
 * adding them to the state, writing the changelog values and the counts snapshots cost ~8 s of CPU of a
 * ~25 s worker run in Python, nearly all of it per-row interpreter work (dict and list building, one
 * orjson or Avro call per key). These functions do the same work on the SAME Python objects the rest of
 * the code reads (NsState.hot_totals, windows, the changed name servers; counts lists [answered, failures, timeouts,
 * by_kind dict | None, observations dict | None]), so views, metrics and recovery are unchanged.
 *
 * The Python functions are the specification (tests/processors/test_state_c.py holds these to them):
 *
 *  - apply(state, data, offset): NsState.apply(decode_batch(data), offset), straight from the encoded
 *    NsStatsBatch. It parses only what is clearly well-formed (canonical varints, strict UTF-8, no
 *    trailing bytes, consistent columns) and returns None for anything else, WITHOUT touching the state:
 *    the caller then runs the Python path, which decides (applies what fastavro reads, or raises
 *    ValueError). So this code never rejects a record itself, and everything is validated before the
 *    state is mutated. The window lookup (NsState._window, with its expiry and clock bound), the count of
 *    the rows it refused (NsState._count_outside) and the marks (NsState._mark) stay Python calls: once
 *    per window change and once per record.
 *  - load(state, key, value): NsState.load of a W or R changelog record whose key and value are exactly
 *    what this version writes (see its block); None, the state untouched, for anything else (M records,
 *    odd or damaged ones): NsState.load's Python code then reads it or raises.
 *  - counts_records(prefix, changed, encode_value): state.counts_records_py, the changelog records
 *    of the changed name servers (name server -> counts); values are orjson's compact JSON, written here for the plain cases (ints that
 *    fit int64, None, dicts of printable-ASCII keys that need no escaping) and left to encode_value for
 *    any other counts list.
 *  - snapshot_records(changed, totals, encoder): snapshots.snapshot_records_py, the counts-topic
 *    records (Avro NsCounts) of the changed (name server, window)s (the snapshots without a window, a
 *    few, are written in Python); a counts list this code does not
 *    write exactly as the Python encoder does (ints beyond int64, a rate of ints beyond 2**53, odd types)
 *    goes to the encoder itself.
 *  - add_table(totals, table): state.add_table_py, totals[ns] += counts for every name server of the dict
 *    `table` (a restore's retired counts, then each window: NsState.loaded), with Python's own + on the
 *    numbers (ints beyond int64 too); a name server new to the totals gets its own list and maps. A value
 *    that is not a counts list (a list of 5, its kinds maps dicts or None) is a TypeError, as in apply.
 *
 * The counts lists apply, load and add_table create are untracked by the cycle collector (see add_row): the one
 * difference from the Python path, invisible to everything but gc.is_tracked() and gc.get_objects().
 *
 * Every read of a record is bounds-checked against the size of its bytes object. Values are fixed-size
 * local buffers; a value that would not fit goes to the Python fallback, it is never truncated.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../nmsgdns/varint.h"
#include "counts.h" /* SLOT_* of a counts list */
#include "frozen_search.h"

#define NS_STATS_VERSION 1
/* a changelog value or a snapshot longer than this goes to the Python fallback */
#define VALUE_MAX 1024
/* 2**53: ints up to this size convert to double exactly, so C's division rounds as Python's does */
#define EXACT_DOUBLE (INT64_C(1) << 53)
/* the branch index of the second type of an Avro union ["null", T], as its zigzag varint */
#define UNION_SECOND 2

/* ------------------------------------------------------------------------------------------------ */
/* Reading an NsStatsBatch                                                                          */

/* Longs are read with zigzag_read (nmsgdns/varint.h): the shortest form only (fastavro reads longer
 * forms too: the Python path decides). */

/* A length-prefixed Avro string or bytes at buf[*pos]: 1 with its start and size, 0 if it is not whole. */
static int
read_span(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos, const unsigned char **start,
          Py_ssize_t *size)
{
    int64_t n;

    if (!zigzag_read(buf, end, pos, &n) || n < 0 || n > end - *pos)
        return 0;
    *start = buf + *pos;
    *size = (Py_ssize_t)n;
    *pos += (Py_ssize_t)n;
    return 1;
}

/* Little-endian int64 number i of a packed column (its size was checked). */
static int64_t
packed(const unsigned char *column, Py_ssize_t i)
{
    const unsigned char *p = column + 8 * i;
    uint64_t n = 0;

    for (int k = 7; k >= 0; k--)
        n = (n << 8) | p[k];
    return (int64_t)n;
}

/* The columns of one NsStatsBatch, pointing into its bytes; the strings as new Python objects. */
typedef struct {
    Py_ssize_t rows;
    PyObject **names;    /* rows new references */
    PyObject *kind_names; /* list of interned str */
    const unsigned char *starts, *answered, *failures, *timeouts, *by_kind, *observations;
    Py_ssize_t by_kind_triples, observation_triples;
} batch_t;

static void
batch_free(batch_t *b)
{
    if (b->names != NULL) {
        for (Py_ssize_t i = 0; i < b->rows; i++)
            Py_XDECREF(b->names[i]);
        PyMem_Free(b->names);
        b->names = NULL;
    }
    Py_CLEAR(b->kind_names);
}

/* 1 when every (row, kind name, count) triple of a kinds column refers to a row and a kind name. */
static int
triples_valid(const unsigned char *column, Py_ssize_t triples, Py_ssize_t rows, Py_ssize_t kinds)
{
    for (Py_ssize_t t = 0; t < triples; t++) {
        int64_t row = packed(column, 3 * t), name = packed(column, 3 * t + 1);
        if (row < 0 || row >= rows || name < 0 || name >= kinds)
            return 0;
    }
    return 1;
}

/*
 * Parse a whole NsStatsBatch into *b: 1 when it is clearly well-formed, 0 when the Python path must
 * decide (b is then empty), -1 with an exception (out of memory).
 */
static int
batch_parse(const unsigned char *buf, Py_ssize_t end, batch_t *b)
{
    Py_ssize_t pos = 0, size, names_size, sizes[6];
    const unsigned char *names_text, *columns[6];
    int64_t version, part, count;

    memset(b, 0, sizeof(*b));
    if (!zigzag_read(buf, end, &pos, &version) || version != NS_STATS_VERSION)
        return 0; /* another version: decode_batch words the error */
    if (!zigzag_read(buf, end, &pos, &part) || !read_span(buf, end, &pos, &names_text, &names_size))
        return 0;
    for (int c = 0; c < 4; c++) /* window_starts, edns_answered, failures, timeouts */
        if (!read_span(buf, end, &pos, &columns[c], &sizes[c]))
            return 0;
    b->kind_names = PyList_New(0);
    if (b->kind_names == NULL)
        return -1;
    /* array<string>: blocks of a positive count and that many strings, ended by a 0 count (a negative
     * count, which encode_batch never writes, is left to fastavro) */
    for (;;) {
        if (!zigzag_read(buf, end, &pos, &count) || count < 0)
            goto undecided;
        if (count == 0)
            break;
        while (count--) {
            const unsigned char *text;
            PyObject *kind;
            if (!read_span(buf, end, &pos, &text, &size))
                goto undecided;
            kind = PyUnicode_DecodeUTF8((const char *)text, size, "strict");
            if (kind == NULL)
                goto undecided_or_error;
            PyUnicode_InternInPlace(&kind);
            if (PyList_Append(b->kind_names, kind) < 0) {
                Py_DECREF(kind);
                goto error;
            }
            Py_DECREF(kind);
        }
    }
    for (int c = 4; c < 6; c++) /* by_kind, observations */
        if (!read_span(buf, end, &pos, &columns[c], &sizes[c]))
            goto undecided;
    if (pos != end)
        goto undecided; /* trailing bytes */

    /* rows: the newline-separated names (str.split("\n"), so an empty text is one empty name) */
    b->rows = 1;
    for (Py_ssize_t i = 0; i < names_size; i++)
        b->rows += names_text[i] == '\n';
    for (int c = 0; c < 4; c++)
        if (sizes[c] != 8 * b->rows)
            goto undecided;
    for (int c = 4; c < 6; c++)
        if (sizes[c] % 24)
            goto undecided;
    b->starts = columns[0];
    b->answered = columns[1];
    b->failures = columns[2];
    b->timeouts = columns[3];
    b->by_kind = columns[4];
    b->observations = columns[5];
    b->by_kind_triples = sizes[4] / 24;
    b->observation_triples = sizes[5] / 24;
    if (!triples_valid(b->by_kind, b->by_kind_triples, b->rows, PyList_GET_SIZE(b->kind_names)) ||
        !triples_valid(b->observations, b->observation_triples, b->rows, PyList_GET_SIZE(b->kind_names)))
        goto undecided;

    b->names = PyMem_Calloc((size_t)b->rows, sizeof(PyObject *));
    if (b->names == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    {
        Py_ssize_t start = 0, row = 0;
        for (Py_ssize_t i = 0; i <= names_size; i++) {
            if (i < names_size && names_text[i] != '\n')
                continue;
            /* '\n' never occurs inside a multi-byte sequence: the text is valid UTF-8 iff each name is */
            b->names[row] = PyUnicode_DecodeUTF8((const char *)names_text + start, i - start, "strict");
            if (b->names[row] == NULL)
                goto undecided_or_error;
            row++;
            start = i + 1;
        }
    }
    return 1;

undecided_or_error:
    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        goto error;
    PyErr_Clear();
undecided:
    batch_free(b);
    return 0;
error:
    batch_free(b);
    return -1;
}

/* ------------------------------------------------------------------------------------------------ */
/* Adding to counts lists                                                                           */

/* list[i] += n, for a counts list (exact list of SLOTS, checked by the caller). */
static int
add_at(PyObject *list, Py_ssize_t i, int64_t n)
{
    PyObject *old = PyList_GET_ITEM(list, i), *sum;

    if (n == 0)
        return 0; /* c[i] += 0 leaves the same value */
    if (PyLong_CheckExact(old)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(old, &overflow), r;
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (!overflow && !__builtin_add_overflow(v, (long long)n, &r)) {
            sum = PyLong_FromLongLong(r);
            goto set;
        }
    }
    {
        PyObject *delta = PyLong_FromLongLong((long long)n);
        if (delta == NULL)
            return -1;
        sum = PyNumber_Add(old, delta);
        Py_DECREF(delta);
    }
set:
    if (sum == NULL)
        return -1;
    PyList_SET_ITEM(list, i, sum);
    Py_DECREF(old);
    return 0;
}

/* counts, or a TypeError when it is not the [answered, failures, timeouts, by_kind, observations] list */
static PyObject *
check_counts(PyObject *counts)
{
    if (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) != SLOTS) {
        PyErr_SetString(PyExc_TypeError, "a name server's counts must be a list of 5");
        return NULL;
    }
    return counts;
}

/* A new counts list [a, f, t, None, None], taking the references a, f, t (NULL: an error, the others are
 * released); NULL with an exception. */
static PyObject *
new_counts(PyObject *a, PyObject *f, PyObject *t)
{
    PyObject *c = a == NULL || f == NULL || t == NULL ? NULL : PyList_New(SLOTS);

    if (c == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(f);
        Py_XDECREF(t);
        return NULL;
    }
    PyList_SET_ITEM(c, SLOT_ANSWERED, a);
    PyList_SET_ITEM(c, SLOT_FAILURES, f);
    PyList_SET_ITEM(c, SLOT_TIMEOUTS, t);
    Py_INCREF(Py_None);
    PyList_SET_ITEM(c, SLOT_BY_KIND, Py_None);
    Py_INCREF(Py_None);
    PyList_SET_ITEM(c, SLOT_OBSERVATIONS, Py_None);
    /* Not tracked by the cycle collector: a counts list holds ints, None and kinds dicts of str -> int
     * (which CPython leaves untracked), so it can never be part of a cycle, and with hundreds of thousands
     * of name servers the collector's full passes over these lists (and every int and dict in them) cost
     * ~40% of apply (bench/state_bench.py). CPython untracks tuples and dicts of atomic values the same
     * way; only this list is not untracked by CPython itself. */
    PyObject_GC_UnTrack(c);
    return c;
}

/*
 * The counts of `ns` in `table` plus (answered, failures, timeouts), a new [a, f, t, None, None] if none:
 * that counts list (borrowed from table), or NULL with an exception.
 */
static PyObject *
add_row(PyObject *table, PyObject *ns, int64_t a, int64_t f, int64_t t)
{
    PyObject *c = PyDict_GetItemWithError(table, ns);

    if (c == NULL) {
        int rc;
        if (PyErr_Occurred())
            return NULL;
        c = new_counts(PyLong_FromLongLong((long long)a), PyLong_FromLongLong((long long)f),
                       PyLong_FromLongLong((long long)t));
        if (c == NULL)
            return NULL;
        rc = PyDict_SetItem(table, ns, c);
        Py_DECREF(c); /* table holds it */
        return rc < 0 ? NULL : c;
    }
    if (check_counts(c) == NULL)
        return NULL;
    return add_at(c, SLOT_ANSWERED, a) < 0 || add_at(c, SLOT_FAILURES, f) < 0 || add_at(c, SLOT_TIMEOUTS, t) < 0
               ? NULL
               : c;
}

/*
 * counts.add_kind: the number n added to `kind` in the map at counts[index] (None stands for an empty map),
 * with Python's +=; a new map or a new kind holds n itself, as in Python.
 */
static int
add_kind_number(PyObject *counts, Py_ssize_t index, PyObject *kind, PyObject *n)
{
    PyObject *current = PyList_GET_ITEM(counts, index), *old, *sum;
    int rc;

    if (current == Py_None) {
        PyObject *map = PyDict_New();
        if (map == NULL)
            return -1;
        if (PyDict_SetItem(map, kind, n) < 0) {
            Py_DECREF(map);
            return -1;
        }
        PyList_SET_ITEM(counts, index, map);
        Py_DECREF(current);
        return 0;
    }
    if (!PyDict_Check(current)) {
        PyErr_SetString(PyExc_TypeError, "a kinds map must be a dict or None");
        return -1;
    }
    /* the map stays alive even if an odd number's + replaces it in counts */
    Py_INCREF(current);
    old = PyDict_GetItemWithError(current, kind);
    if (old == NULL) {
        rc = PyErr_Occurred() ? -1 : PyDict_SetItem(current, kind, n);
        Py_DECREF(current);
        return rc;
    }
    Py_INCREF(old);
    sum = PyNumber_InPlaceAdd(old, n);
    Py_DECREF(old);
    rc = sum == NULL ? -1 : PyDict_SetItem(current, kind, sum);
    Py_XDECREF(sum);
    Py_DECREF(current);
    return rc;
}

/* add_kind_number of an int64 n (a row of a batch) */
static int
add_kind(PyObject *counts, Py_ssize_t index, PyObject *kind, int64_t n)
{
    PyObject *number = PyLong_FromLongLong((long long)n);
    int rc;

    if (number == NULL)
        return -1;
    rc = add_kind_number(counts, index, kind, number);
    Py_DECREF(number);
    return rc;
}

/* table[ns], borrowed; KeyError as Python's table[ns] gives. */
static PyObject *
item_of(PyObject *table, PyObject *ns)
{
    PyObject *c = PyDict_GetItemWithError(table, ns);

    if (c == NULL && !PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, ns);
    return c;
}

/* table[ns] as a counts list, borrowed */
static PyObject *
counts_of(PyObject *table, PyObject *ns)
{
    PyObject *c = item_of(table, ns);

    return c == NULL ? NULL : check_counts(c);
}

/*
 * One kinds column's triples added to the totals and to the windows that are still there. The rows' counts
 * lists were kept by the rows' loop (row_totals, row_windows: borrowed, NULL for a row whose window had
 * expired), which saves two lookups in dicts of hundreds of thousands of name servers per triple: those
 * are cache misses. A window's lists are alive while the window is in `windows` (only expiry removes
 * them, a whole window at a time), which is checked here as Python's windows.get(start) does.
 */
static int
add_kinds(batch_t *b, const unsigned char *column, Py_ssize_t triples, Py_ssize_t index, PyObject **row_totals,
          PyObject **row_windows, PyObject *windows)
{
    int64_t cached_start = 0;
    PyObject *window = NULL; /* borrowed from windows: no Python code runs in this loop to free it */
    int have_cache = 0;

    for (Py_ssize_t t = 0; t < triples; t++) {
        Py_ssize_t row = (Py_ssize_t)packed(column, 3 * t);
        PyObject *ns = b->names[row];
        PyObject *kind = PyList_GET_ITEM(b->kind_names, (Py_ssize_t)packed(column, 3 * t + 1));
        int64_t n = packed(column, 3 * t + 2), start = packed(b->starts, row);
        PyObject *c = row_totals[row];

        if (add_kind(c, index, kind, n) < 0)
            return -1;
        if (!have_cache || start != cached_start) {
            PyObject *key = PyLong_FromLongLong((long long)start);
            if (key == NULL)
                return -1;
            window = PyDict_GetItemWithError(windows, key);
            Py_DECREF(key);
            if (window == NULL && PyErr_Occurred())
                return -1;
            cached_start = start;
            have_cache = 1;
        }
        if (window != NULL && window != Py_None) {
            c = row_windows[row] != NULL ? row_windows[row] : counts_of(window, ns);
            if (c == NULL || add_kind(c, index, kind, n) < 0)
                return -1;
        }
    }
    return 0;
}

/* getattr(state, name), which must be of `type` */
static PyObject *
state_attr(PyObject *state, const char *name, PyTypeObject *type)
{
    PyObject *value = PyObject_GetAttrString(state, name);

    if (value != NULL && !PyObject_TypeCheck(value, type)) {
        PyErr_Format(PyExc_TypeError, "NsState.%s must be a %s", name, type->tp_name);
        Py_CLEAR(value);
    }
    return value;
}

/* NsState._count_outside(start, rows): the refused rows of one window start counted as late or early */
static int
count_outside(PyObject *state, PyObject *start, Py_ssize_t rows)
{
    PyObject *r = PyObject_CallMethod(state, "_count_outside", "(On)", start, rows);

    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The name buffers of NsState.frozen_totals (a FrozenWindow), held while an apply runs */
typedef struct {
    Py_buffer names, ends;
    int held;
} frozen_names_t;

static int
frozen_names_get(frozen_names_t *f, PyObject *frozen)
{
    PyObject *names = PyObject_GetAttrString(frozen, "names"), *ends = NULL;
    int rc = -1;

    if (names == NULL || (ends = PyObject_GetAttrString(frozen, "name_ends")) == NULL)
        goto done;
    if (PyObject_GetBuffer(names, &f->names, PyBUF_SIMPLE) < 0)
        goto done;
    if (PyObject_GetBuffer(ends, &f->ends, PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&f->names);
        goto done;
    }
    f->held = 1;
    if (f->ends.itemsize != 4 || f->ends.format == NULL || strcmp(f->ends.format, "I") != 0) {
        PyErr_SetString(PyExc_TypeError, "FrozenWindow.name_ends must be an array('I')");
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(names);
    Py_XDECREF(ends);
    return rc;
}

static void
frozen_names_release(frozen_names_t *f)
{
    if (f->held) {
        PyBuffer_Release(&f->ends);
        PyBuffer_Release(&f->names);
        f->held = 0;
    }
}

/*
 * NsState.apply's `total = totals.get(ns)` then `self._thaw_total(ns)` when the state has frozen totals
 * (`frozen`: their names): a name server missing from the hot totals but frozen has its totals put there,
 * in Python, before add_row finds them; one frozen or not is looked up here, without the call. It never
 * removes a hot entry, so the rows' borrowed counts lists stay valid, and nothing merges during an apply,
 * so the buffers do too.
 */
static int
thaw_total(PyObject *state, PyObject *totals, frozen_names_t *frozen, PyObject *ns)
{
    const char *key;
    Py_ssize_t key_len, found;
    PyObject *r;

    if (PyDict_GetItemWithError(totals, ns) != NULL)
        return 0;
    if (PyErr_Occurred() || (key = PyUnicode_AsUTF8AndSize(ns, &key_len)) == NULL)
        return -1;
    found = frozen_search((const char *)frozen->names.buf, frozen->names.len, (const uint32_t *)frozen->ends.buf,
                          frozen->ends.len / 4, key, key_len);
    if (found < 0)
        return found == -1 ? 0 : -1;
    r = PyObject_CallMethod(state, "_thaw_total", "(O)", ns);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The rows of a parsed batch added to state (NsState.apply's loops). */
static int
apply_rows(PyObject *state, batch_t *b)
{
    PyObject *totals = NULL, *windows = NULL, *dirty_retired = NULL, *dirty_windows = NULL, *changed = NULL;
    PyObject *outside = NULL, *frozen_totals = NULL;
    PyObject *window = NULL, *dirty = NULL, *changed_names = NULL, *key = NULL; /* of the current window */
    PyObject **row_totals = PyMem_Calloc((size_t)b->rows * 2, sizeof(PyObject *));
    PyObject **row_windows = row_totals + b->rows;
    int64_t current = 0;
    Py_ssize_t refused = 0; /* rows of the current window start that count in the totals only */
    int have_current = 0, has_frozen_totals, rc = -1;
    frozen_names_t frozen = {.held = 0};

    if (row_totals == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if ((frozen_totals = PyObject_GetAttrString(state, "frozen_totals")) == NULL)
        goto done;
    has_frozen_totals = frozen_totals != Py_None;
    if (has_frozen_totals && frozen_names_get(&frozen, frozen_totals) < 0)
        goto done;
    if ((totals = state_attr(state, "hot_totals", &PyDict_Type)) == NULL ||
        (windows = state_attr(state, "windows", &PyDict_Type)) == NULL ||
        (dirty_retired = state_attr(state, "_dirty_retired", &PyDict_Type)) == NULL ||
        (dirty_windows = state_attr(state, "_dirty_windows", &PyDict_Type)) == NULL ||
        (changed = state_attr(state, "_changed", &PyDict_Type)) == NULL ||
        (outside = state_attr(state, "_outside", &PyDict_Type)) == NULL)
        goto done;
    for (Py_ssize_t row = 0; row < b->rows; row++) {
        PyObject *ns = b->names[row];
        int64_t start = packed(b->starts, row), a = packed(b->answered, row), f = packed(b->failures, row),
                t = packed(b->timeouts, row);

        if ((has_frozen_totals && thaw_total(state, totals, &frozen, ns) < 0) ||
            (row_totals[row] = add_row(totals, ns, a, f, t)) == NULL)
            goto done;
        if (!have_current || start != current) {
            /* a new window: NsState._window, in Python (it may create the window and expire others) */
            if (refused > 0 && count_outside(state, key, refused) < 0)
                goto done;
            refused = 0;
            Py_CLEAR(key);
            if ((key = PyLong_FromLongLong((long long)start)) == NULL)
                goto done;
            current = start;
            have_current = 1;
            Py_CLEAR(window);
            window = PyObject_CallMethod(state, "_window", "(O)", key);
            if (window == NULL || (window != Py_None && !PyDict_Check(window))) {
                if (window != NULL)
                    PyErr_SetString(PyExc_TypeError, "NsState._window must give a dict or None");
                goto done;
            }
            if (window != Py_None) {
                PyObject *empty, *set;
                Py_CLEAR(dirty);
                Py_CLEAR(changed_names);
                for (int k = 0; k < 2; k++) {
                    empty = PyDict_New();
                    if (empty == NULL)
                        goto done;
                    set = PyDict_SetDefault(k == 0 ? dirty_windows : changed, key, empty);
                    Py_DECREF(empty);
                    if (set == NULL || !PyDict_Check(set)) {
                        if (set != NULL)
                            PyErr_SetString(PyExc_TypeError, "NsState's changed names must be dicts");
                        goto done;
                    }
                    Py_INCREF(set);
                    if (k == 0)
                        dirty = set;
                    else
                        changed_names = set;
                }
            }
        }
        if (window != Py_None) {
            if ((row_windows[row] = add_row(window, ns, a, f, t)) == NULL ||
                PyDict_SetItem(dirty, ns, row_windows[row]) < 0 ||
                PyDict_SetItem(changed_names, ns, row_windows[row]) < 0)
                goto done;
        }
        else {
            /* counts in the totals only: its retired part grew (NsState._dirty_retired), its totals must be
             * published (NsState._outside) */
            if (PyDict_SetItem(dirty_retired, ns, Py_None) < 0 || PyDict_SetItem(outside, ns, row_totals[row]) < 0)
                goto done;
            refused++;
        }
    }
    if (refused > 0 && count_outside(state, key, refused) < 0)
        goto done;
    if (add_kinds(b, b->by_kind, b->by_kind_triples, SLOT_BY_KIND, row_totals, row_windows, windows) < 0 ||
        add_kinds(b, b->observations, b->observation_triples, SLOT_OBSERVATIONS, row_totals, row_windows, windows) < 0)
        goto done;
    rc = 0;
done:
    frozen_names_release(&frozen);
    Py_XDECREF(frozen_totals);
    Py_XDECREF(totals);
    Py_XDECREF(windows);
    Py_XDECREF(dirty_retired);
    Py_XDECREF(dirty_windows);
    Py_XDECREF(changed);
    Py_XDECREF(outside);
    Py_XDECREF(key);
    Py_XDECREF(window);
    Py_XDECREF(dirty);
    Py_XDECREF(changed_names);
    PyMem_Free(row_totals);
    return rc;
}

PyDoc_STRVAR(apply_doc,
"apply(state, data, offset) -> bool | None\n--\n\n"
"NsState.apply(decode_batch(data), offset) for a clearly well-formed NsStatsBatch ``data`` (bytes):\n"
"True when applied, False when the mark holds ``offset`` (applied already). None, with the state\n"
"untouched, for anything else: the Python path must decide (apply it, or raise ValueError).");

static PyObject *
ns_apply(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *state, *data, *offset;
    batch_t b;
    int parsed;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "apply() takes exactly 3 arguments (state, data, offset)");
        return NULL;
    }
    state = args[0];
    data = args[1];
    offset = args[2];
    if (!PyBytes_CheckExact(data))
        Py_RETURN_NONE;
    parsed = batch_parse((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &b);
    if (parsed < 0)
        return NULL;
    if (parsed == 0)
        Py_RETURN_NONE;
    if (offset != Py_None) {
        PyObject *fresh = PyObject_CallMethod(state, "_mark", "(O)", offset);
        int is_fresh = fresh == NULL ? -1 : PyObject_IsTrue(fresh);
        Py_XDECREF(fresh);
        if (is_fresh <= 0) {
            batch_free(&b);
            if (is_fresh < 0)
                return NULL;
            Py_RETURN_FALSE;
        }
    }
    if (apply_rows(state, &b) < 0) {
        batch_free(&b);
        return NULL;
    }
    batch_free(&b);
    Py_RETURN_TRUE;
}

/* ------------------------------------------------------------------------------------------------ */
/* Restoring changelog records (NsState.load)                                                       */

/*
 * load(state, key, value): NsState.load of the W and R records, nearly all of a changelog (a restore reads
 * ~400k of them per worker: ~1.6 s of Python, mostly orjson's objects and the comprehension that interns
 * the kind names). Read here: a W key of a start int() reads as this code does (-?digits, the shortest
 * form, within int64) or an R key, with a strict UTF-8 name server; a tombstone, or a value exactly as
 * encode_value writes a plain counts list: the version byte, then orjson's compact JSON (no whitespace) of
 * [int, int, int, null | {str: int, ...}, null | {str: int, ...}], ints in their shortest form within
 * int64 (no "-0"), strings of strict UTF-8 without raw control characters (JSON forbids them), with the
 * short escapes (\" \\ \/ \b \f \n \r \t) or \uXXXX outside the surrogates (orjson writes \u00XX for the
 * other control characters).
 *
 * Anything else returns None with the state untouched, and NsState.load decides (reads it or raises its
 * own error): M records, unknown tags, starts like "+5", " 5", "5_0", "007" or beyond int64, other
 * versions, damaged values, bools, floats, big ints, surrogate escapes, a state whose tables are not
 * dicts. So this code raises nothing of its own but MemoryError, and the whole record is parsed before
 * the state is changed.
 *
 * It builds what NsState.load builds: counts lists [a, f, t, map | None, map | None] with None for an
 * empty map, the kind names interned (sys.intern), a window created if new (setdefault), a tombstone
 * popping the name server from its window or the retired counts. The lists are untracked by the cycle
 * collector, as add_row's are (they hold ints, None and dicts of str -> int, which CPython leaves
 * untracked); the same difference from the Python path as apply's.
 */

/* the longest JSON string (between its quotes, escapes included) read here; a longer one goes to Python */
#define JSON_STR_MAX 256

/* JSON being read: p moves past what was read */
typedef struct {
    const unsigned char *p, *end;
} json_t;

/* 1, and past it, when the next byte is c */
static int
json_byte(json_t *j, unsigned char c)
{
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return 1;
    }
    return 0;
}

/* 1, and past it, when the next bytes are the literal `text` */
static int
json_literal(json_t *j, const char *text, Py_ssize_t size)
{
    if (j->end - j->p < size || memcmp(j->p, text, (size_t)size) != 0)
        return 0;
    j->p += size;
    return 1;
}

/* An int in its shortest form (-?(0|[1-9][0-9]*), not "-0") that fits int64 into *n: 1; else 0. What
 * follows is the caller's to check (a '.' or an 'e' there makes it a float). */
static int
json_int(json_t *j, int64_t *n)
{
    int negative = json_byte(j, '-');
    uint64_t u = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    const unsigned char *digits = j->p;

    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        unsigned d = (unsigned)(*j->p - '0');
        if (u > (limit - d) / 10)
            return 0; /* beyond int64: Python reads it */
        u = u * 10 + d;
        j->p++;
    }
    if (j->p == digits || (*digits == '0' && (j->p - digits > 1 || negative)))
        return 0; /* no digits, a leading zero, "-0" */
    *n = negative ? (int64_t)(0 - u) : (int64_t)u; /* 0 - 2**63 wraps to INT64_MIN */
    return 1;
}

/* The value of hex digit c, -1 if it is none */
static int
hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * A JSON string as a new str; NULL when it is not read here (no exception set: Python decides) or with an
 * exception (out of memory). Its text is strict UTF-8 (as orjson requires it); the unescaped text is never
 * longer than the escaped one, so a JSON_STR_MAX buffer holds it.
 */
static PyObject *
json_str(json_t *j)
{
    const unsigned char *start, *p;
    unsigned char text[JSON_STR_MAX];
    Py_ssize_t size = 0;
    int escaped = 0;
    PyObject *s;

    if (!json_byte(j, '"'))
        return NULL;
    start = j->p;
    for (;;) {
        if (j->p == j->end || *j->p < 0x20)
            return NULL; /* not closed, a raw control character */
        if (*j->p == '"')
            break;
        if (*j->p == '\\') {
            escaped = 1;
            j->p++; /* the escaped byte is skipped below: \" does not end the string */
            if (j->p == j->end)
                return NULL;
        }
        j->p++;
    }
    if (!escaped) {
        s = PyUnicode_DecodeUTF8((const char *)start, j->p - start, "strict");
        j->p++;
        goto decoded;
    }
    if (j->p - start > JSON_STR_MAX)
        return NULL;
    for (p = start; p < j->p;) {
        unsigned code = 0;
        if (*p != '\\') {
            text[size++] = *p++;
            continue;
        }
        switch (p[1]) {
        case '"': case '\\': case '/':
            text[size++] = p[1];
            break;
        case 'b': text[size++] = '\b'; break;
        case 'f': text[size++] = '\f'; break;
        case 'n': text[size++] = '\n'; break;
        case 'r': text[size++] = '\r'; break;
        case 't': text[size++] = '\t'; break;
        case 'u':
            if (j->p - p < 6)
                return NULL;
            for (int k = 2; k < 6; k++) {
                int d = hex_digit(p[k]);
                if (d < 0)
                    return NULL;
                code = code << 4 | (unsigned)d;
            }
            if (code >= 0xD800 && code <= 0xDFFF)
                return NULL; /* a surrogate: pairs and lone ones are orjson's to judge */
            if (code < 0x80)
                text[size++] = (unsigned char)code;
            else if (code < 0x800) {
                text[size++] = (unsigned char)(0xC0 | code >> 6);
                text[size++] = (unsigned char)(0x80 | (code & 0x3F));
            }
            else {
                text[size++] = (unsigned char)(0xE0 | code >> 12);
                text[size++] = (unsigned char)(0x80 | (code >> 6 & 0x3F));
                text[size++] = (unsigned char)(0x80 | (code & 0x3F));
            }
            p += 6;
            continue;
        default:
            return NULL; /* not a JSON escape */
        }
        p += 2;
    }
    s = PyUnicode_DecodeUTF8((const char *)text, size, "strict");
    j->p++;
decoded:
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();
    return s;
}

/*
 * A kinds map: *map a new dict of interned str -> int, or None for null and for {} (as _counts): 1; 0 when
 * it is not read here (nothing in *map), -1 with an exception.
 */
static int
json_kinds(json_t *j, PyObject **map)
{
    PyObject *kinds;

    if (json_literal(j, "null", 4) || json_literal(j, "{}", 2)) {
        *map = Py_NewRef(Py_None);
        return 1;
    }
    if (!json_byte(j, '{'))
        return 0;
    if ((kinds = PyDict_New()) == NULL)
        return -1;
    do {
        PyObject *kind = json_str(j), *number;
        int64_t n;
        int rc;
        if (kind == NULL)
            goto fail;
        PyUnicode_InternInPlace(&kind);
        if (!json_byte(j, ':') || !json_int(j, &n)) {
            Py_DECREF(kind);
            goto fail;
        }
        number = PyLong_FromLongLong((long long)n);
        rc = number == NULL ? -1 : PyDict_SetItem(kinds, kind, number); /* a repeated kind: the last wins */
        Py_DECREF(kind);
        Py_XDECREF(number);
        if (rc < 0)
            goto fail;
    } while (json_byte(j, ','));
    if (json_byte(j, '}')) {
        *map = kinds;
        return 1;
    }
fail:
    Py_DECREF(kinds);
    return PyErr_Occurred() ? -1 : 0;
}

/* _counts(decode_value(value)) of a plain value: a new counts list, untracked; NULL when it is not read
 * here (no exception set) or with an exception. */
static PyObject *
load_counts(PyObject *value)
{
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(value);
    json_t j = {data, data + PyBytes_GET_SIZE(value)};
    PyObject *counts, *maps[2] = {NULL, NULL};
    int64_t n[3];

    if (!json_byte(&j, 0x01) || !json_byte(&j, '['))
        return NULL; /* another version, not a list */
    for (int i = 0; i < 3; i++)
        if (!json_int(&j, &n[i]) || !json_byte(&j, ','))
            return NULL;
    for (int i = 0; i < 2; i++)
        if (json_kinds(&j, &maps[i]) <= 0 || !json_byte(&j, i == 0 ? ',' : ']'))
            goto fail;
    if (j.p != j.end || (counts = PyList_New(SLOTS)) == NULL)
        goto fail; /* trailing bytes, out of memory */
    for (int i = 0; i < 3; i++) {
        PyObject *number = PyLong_FromLongLong((long long)n[i]);
        if (number == NULL) {
            Py_DECREF(counts);
            goto fail;
        }
        PyList_SET_ITEM(counts, i, number);
    }
    PyList_SET_ITEM(counts, SLOT_BY_KIND, maps[0]);
    PyList_SET_ITEM(counts, SLOT_OBSERVATIONS, maps[1]);
    PyObject_GC_UnTrack(counts); /* as add_row's lists */
    return counts;
fail:
    Py_XDECREF(maps[0]);
    Py_XDECREF(maps[1]);
    return NULL;
}

/* dict.pop(key, None), its result dropped */
static int
dict_discard(PyObject *dict, PyObject *key)
{
    PyObject *old = PyDict_GetItemWithError(dict, key);

    if (old == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return PyDict_DelItem(dict, key);
}

/* the NsState attributes load changes, interned once */
static PyObject *windows_name, *loaded_retired_name;

PyDoc_STRVAR(load_doc,
"load(state, key, value) -> True | None\n--\n\n"
"NsState.load(key, value) of a W or R record (bytes key, bytes value or None) written as encode_value\n"
"writes a plain counts list: True once loaded. None, with the state untouched, for anything else:\n"
"NsState.load must decide (load it, or raise ValueError).");

static PyObject *
ns_load(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *state, *key, *value, *ns = NULL, *counts = NULL, *table = NULL, *start_key = NULL;
    PyObject *window = NULL, *result = NULL;
    const unsigned char *k;
    Py_ssize_t size, at = 1;
    int64_t start = 0;
    int rc;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "load() takes exactly 3 arguments (state, key, value)");
        return NULL;
    }
    state = args[0];
    key = args[1];
    value = args[2];
    if (!PyBytes_CheckExact(key) || (value != Py_None && !PyBytes_CheckExact(value)))
        Py_RETURN_NONE;
    k = (const unsigned char *)PyBytes_AS_STRING(key);
    size = PyBytes_GET_SIZE(key);
    if (size == 0 || (k[0] != 'W' && k[0] != 'R'))
        Py_RETURN_NONE; /* the mark, an unknown tag */
    if (windows_name == NULL &&
        ((windows_name = PyUnicode_InternFromString("windows")) == NULL ||
         (loaded_retired_name = PyUnicode_InternFromString("_loaded_retired")) == NULL)) {
        Py_CLEAR(windows_name);
        return NULL;
    }
    if (k[0] == 'W') {
        /* W<start> <name server>: the first space ends the start (the digits have none) */
        json_t j = {k + 1, k + size};
        if (!json_int(&j, &start) || !json_byte(&j, ' '))
            Py_RETURN_NONE;
        at = j.p - k;
    }
    ns = PyUnicode_DecodeUTF8((const char *)k + at, size - at, "strict");
    if (ns == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (value != Py_None && (counts = load_counts(value)) == NULL)
        goto done; /* None, or the exception */
    table = PyObject_GetAttr(state, k[0] == 'W' ? windows_name : loaded_retired_name);
    if (table == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError))
            PyErr_Clear();
        goto done;
    }
    if (!PyDict_CheckExact(table))
        goto done;
    if (k[0] == 'R')
        rc = counts == NULL ? dict_discard(table, ns) : PyDict_SetItem(table, ns, counts);
    else {
        if ((start_key = PyLong_FromLongLong((long long)start)) == NULL)
            goto done;
        window = Py_XNewRef(PyDict_GetItemWithError(table, start_key));
        if (window == NULL && PyErr_Occurred())
            goto done;
        if (window != NULL && !PyDict_CheckExact(window))
            goto done; /* not read here: Python's setdefault, pop or item assignment decides */
        if (counts == NULL)
            rc = window == NULL ? 0 : dict_discard(window, ns); /* a tombstone of a window not there */
        else {
            if (window == NULL) { /* windows.setdefault(start, {}) */
                if ((window = PyDict_New()) == NULL || PyDict_SetItem(table, start_key, window) < 0)
                    goto done;
            }
            rc = PyDict_SetItem(window, ns, counts);
        }
    }
    if (rc == 0)
        result = Py_NewRef(Py_True);
done:
    Py_DECREF(ns);
    Py_XDECREF(counts);
    Py_XDECREF(table);
    Py_XDECREF(start_key);
    Py_XDECREF(window);
    if (result == NULL && !PyErr_Occurred())
        result = Py_NewRef(Py_None);
    return result;
}

/* ------------------------------------------------------------------------------------------------ */
/* Adding tables (a restore's totals)                                                               */

/* TypeError unless both total and counts are counts lists: checked before every slot is read, as an odd
 * number's + (Python code) could change either list. */
static int
both_counts(PyObject *total, PyObject *counts)
{
    return check_counts(total) == NULL || check_counts(counts) == NULL ? -1 : 0;
}

/* The number slots of counts.add_counts(total, counts): Python's += slot by slot (ints beyond int64,
 * bools...: exactly Python's result). Both lists are held by the caller. */
static int
add_numbers(PyObject *total, PyObject *counts)
{
    for (Py_ssize_t i = 0; i < SLOT_BY_KIND; i++) {
        PyObject *n, *old, *sum;
        if (both_counts(total, counts) < 0)
            return -1;
        n = PyList_GET_ITEM(counts, i);
        old = PyList_GET_ITEM(total, i);
        Py_INCREF(n);
        Py_INCREF(old);
        sum = PyNumber_InPlaceAdd(old, n);
        Py_DECREF(n);
        Py_DECREF(old);
        if (sum == NULL || PyList_SetItem(total, i, sum) < 0) /* SetItem takes sum, even on error */
            return -1;
    }
    return 0;
}

/* The kinds maps of counts.add_counts(total, counts): added kind by kind (add_kind_number), so that total
 * never shares a map of counts. Both lists are held by the caller. */
static int
add_maps(PyObject *total, PyObject *counts)
{
    for (Py_ssize_t index = SLOT_BY_KIND; index <= SLOT_OBSERVATIONS; index++) {
        PyObject *kinds, *kind, *n;
        Py_ssize_t pos = 0, size;
        if (both_counts(total, counts) < 0)
            return -1;
        kinds = PyList_GET_ITEM(counts, index);
        if (kinds == Py_None)
            continue;
        if (!PyDict_Check(kinds)) {
            PyErr_SetString(PyExc_TypeError, "a kinds map must be a dict or None");
            return -1;
        }
        Py_INCREF(kinds);
        size = PyDict_GET_SIZE(kinds);
        while (PyDict_Next(kinds, &pos, &kind, &n)) {
            int rc;
            Py_INCREF(kind);
            Py_INCREF(n);
            rc = both_counts(total, counts) < 0 ? -1 : add_kind_number(total, index, kind, n);
            Py_DECREF(kind);
            Py_DECREF(n);
            if (rc == 0 && PyDict_GET_SIZE(kinds) != size) {
                PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
                rc = -1;
            }
            if (rc < 0) {
                Py_DECREF(kinds);
                return -1;
            }
        }
        Py_DECREF(kinds);
    }
    return 0;
}

/*
 * totals[ns] += counts (counts checked, both held by the caller): add_table_py's loop body, with one lookup
 * in the totals, PyDict_SetDefault(totals, ns, *spare): *spare is a zero() made beforehand, which becomes
 * the counts list of a name server new to the totals (the next entry then gets a new spare). As in Python,
 * the new list is in the totals before anything is added to it; when the counts' numbers are ints they
 * become its numbers (0 + n is n), which spares three additions.
 */
static int
add_entry(PyObject *totals, PyObject *ns, PyObject *counts, PyObject **spare)
{
    PyObject *total;
    int rc;

    if (*spare == NULL &&
        (*spare = new_counts(PyLong_FromLong(0), PyLong_FromLong(0), PyLong_FromLong(0))) == NULL)
        return -1;
    total = PyDict_SetDefault(totals, ns, *spare);
    if (total == NULL)
        return -1;
    if (total == *spare) {
        PyObject *a = PyList_GET_ITEM(counts, SLOT_ANSWERED), *f = PyList_GET_ITEM(counts, SLOT_FAILURES),
                 *t = PyList_GET_ITEM(counts, SLOT_TIMEOUTS);
        *spare = NULL; /* its reference is the one held while adding */
        if (PyLong_CheckExact(a) && PyLong_CheckExact(f) && PyLong_CheckExact(t)) {
            PyObject *numbers[] = {a, f, t};
            for (Py_ssize_t i = 0; i < SLOT_BY_KIND; i++) {
                Py_INCREF(numbers[i]);
                Py_DECREF(PyList_GET_ITEM(total, i)); /* the 0 of zero() */
                PyList_SET_ITEM(total, i, numbers[i]);
            }
            rc = add_maps(total, counts);
        }
        else
            rc = add_numbers(total, counts) < 0 ? -1 : add_maps(total, counts);
    }
    else {
        if (check_counts(total) == NULL)
            return -1;
        Py_INCREF(total);
        rc = add_numbers(total, counts) < 0 ? -1 : add_maps(total, counts);
    }
    Py_DECREF(total);
    return rc;
}

PyDoc_STRVAR(add_table_doc,
"add_table(totals, table) -> None\n--\n\n"
"state.add_table_py: totals[ns] += counts for every ns, counts of the dict ``table`` (``totals`` is a\n"
"dict too); a name server new to ``totals`` gets its own lists and maps. TypeError for a value that is not\n"
"a counts list.");

static PyObject *
ns_add_table(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *totals, *table, *ns, *counts;
    PyObject *spare = NULL; /* see add_entry */
    Py_ssize_t pos = 0, size;
    int rc = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add_table() takes exactly 2 arguments (totals, table)");
        return NULL;
    }
    totals = args[0];
    table = args[1];
    if (!PyDict_Check(totals) || !PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "add_table() needs a dict of totals and a dict of counts");
        return NULL;
    }
    size = PyDict_GET_SIZE(table);
    while (PyDict_Next(table, &pos, &ns, &counts)) {
        /* an odd number's + (Python code) could change the table: keep this entry alive */
        Py_INCREF(ns);
        Py_INCREF(counts);
        rc = check_counts(counts) == NULL ? -1 : add_entry(totals, ns, counts, &spare);
        Py_DECREF(ns);
        Py_DECREF(counts);
        if (rc == 0 && PyDict_GET_SIZE(table) != size) {
            PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
            rc = -1;
        }
        if (rc < 0)
            break;
    }
    Py_XDECREF(spare);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------------ */
/* Writing values                                                                                   */

/* A value being written into a fixed buffer; `full` once something did not fit. */
typedef struct {
    unsigned char data[VALUE_MAX];
    Py_ssize_t size;
    int full;
} out_t;

static void
put(out_t *o, const void *bytes, Py_ssize_t n)
{
    if (o->full || n > VALUE_MAX - o->size) {
        o->full = 1;
        return;
    }
    memcpy(o->data + o->size, bytes, (size_t)n);
    o->size += n;
}

static void
put_byte(out_t *o, unsigned char c)
{
    put(o, &c, 1);
}

/* n in decimal, as orjson writes an int */
static void
put_decimal(out_t *o, int64_t n)
{
    char text[24];
    int len = 0;
    uint64_t u = n < 0 ? (uint64_t)0 - (uint64_t)n : (uint64_t)n;

    do {
        text[sizeof(text) - 1 - len++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (n < 0)
        text[sizeof(text) - 1 - len++] = '-';
    put(o, text + sizeof(text) - len, len);
}

/* Avro long: zig-zag varint */
static void
put_long(out_t *o, int64_t n)
{
    unsigned char tmp[VARINT_MAX_BYTES];

    put(o, tmp, varint_put(tmp, zigzag_encode(n)) - tmp);
}

/* An exact int that fits int64 into *n: 1; 0 for anything else (the Python fallback writes it). */
static int
small_int(PyObject *value, int64_t *n)
{
    int overflow;
    long long v;

    if (!PyLong_CheckExact(value))
        return 0; /* bool, a subclass, a float...: orjson and the Avro encoder have their own ways */
    v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *n = (int64_t)v;
    return 1;
}

/* A str key orjson writes as its own bytes between quotes: printable ASCII without '"' or '\\'. */
static int
plain_key(PyObject *key, const char **text, Py_ssize_t *size)
{
    const unsigned char *s;

    if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key))
        return 0;
    s = PyUnicode_1BYTE_DATA(key);
    *size = PyUnicode_GET_LENGTH(key);
    for (Py_ssize_t i = 0; i < *size; i++)
        if (s[i] < 0x20 || s[i] > 0x7E || s[i] == '"' || s[i] == '\\')
            return 0;
    *text = (const char *)s;
    return 1;
}

/* The changelog value of a counts list (b"\x01" and orjson's JSON of it): 1 written, 0 not plain. */
static int
put_changelog_value(out_t *o, PyObject *counts)
{
    put_byte(o, 0x01);
    if (!PyList_CheckExact(counts))
        return 0;
    put_byte(o, '[');
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(counts); i++) {
        PyObject *item = PyList_GET_ITEM(counts, i);
        int64_t n;
        if (i)
            put_byte(o, ',');
        if (item == Py_None)
            put(o, "null", 4);
        else if (small_int(item, &n))
            put_decimal(o, n);
        else if (PyDict_CheckExact(item)) {
            PyObject *key, *value;
            Py_ssize_t pos = 0, size;
            const char *text;
            int first = 1;
            put_byte(o, '{');
            while (PyDict_Next(item, &pos, &key, &value)) {
                if (!plain_key(key, &text, &size) || !small_int(value, &n))
                    return 0;
                if (!first)
                    put_byte(o, ',');
                first = 0;
                put_byte(o, '"');
                put(o, text, size);
                put(o, "\":", 2);
                put_decimal(o, n);
            }
            put_byte(o, '}');
        }
        else
            return 0;
    }
    put_byte(o, ']');
    return !o->full;
}

/* `prefix` + ns.encode() */
static PyObject *
prefixed_key(PyObject *prefix, PyObject *ns)
{
    const char *text;
    Py_ssize_t size;
    PyObject *key;

    if (!PyUnicode_Check(ns)) {
        PyErr_SetString(PyExc_TypeError, "a name server must be a str");
        return NULL;
    }
    text = PyUnicode_AsUTF8AndSize(ns, &size);
    if (text == NULL)
        return NULL;
    key = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(prefix) + size);
    if (key == NULL)
        return NULL;
    memcpy(PyBytes_AS_STRING(key), PyBytes_AS_STRING(prefix), (size_t)PyBytes_GET_SIZE(prefix));
    memcpy(PyBytes_AS_STRING(key) + PyBytes_GET_SIZE(prefix), text, (size_t)size);
    return key;
}

/* Append (key, value) to records, taking both references. */
static int
append_record(PyObject *records, PyObject *key, PyObject *value)
{
    PyObject *record;
    int rc;

    if (key == NULL || value == NULL) {
        Py_XDECREF(key);
        Py_XDECREF(value);
        return -1;
    }
    record = PyTuple_Pack(2, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    if (record == NULL)
        return -1;
    /* a tuple of two bytes can be in no cycle: the collector would untrack it at its next pass (CPython
     * does so for tuples of untracked items), after traversing it; this spares it that work */
    PyObject_GC_UnTrack(record);
    rc = PyList_Append(records, record);
    Py_DECREF(record);
    return rc;
}

/* (key, value) as list[i], taking both references (list was made by PyList_New(size)) */
static int
set_record(PyObject *records, Py_ssize_t i, PyObject *key, PyObject *value)
{
    PyObject *record;

    if (key == NULL || value == NULL) {
        Py_XDECREF(key);
        Py_XDECREF(value);
        return -1;
    }
    record = PyTuple_Pack(2, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    if (record == NULL)
        return -1;
    PyObject_GC_UnTrack(record); /* as in append_record */
    PyList_SET_ITEM(records, i, record);
    return 0;
}

PyDoc_STRVAR(counts_records_doc,
"counts_records(prefix, changed, encode_value) -> list[tuple[bytes, bytes]]\n--\n\n"
"state.counts_records_py: (prefix + ns.encode(), encode_value(counts)) for each ns, counts of the\n"
"dict ``changed``, the plain values written here, byte for byte as orjson writes them.");

static PyObject *
ns_counts_records(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *prefix, *changed, *encode, *records, *ns, *c;
    Py_ssize_t pos = 0, i = 0;
    out_t o;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "counts_records() takes exactly 3 arguments");
        return NULL;
    }
    prefix = args[0];
    changed = args[1];
    encode = args[2];
    if (!PyBytes_CheckExact(prefix) || !PyDict_CheckExact(changed)) {
        PyErr_SetString(PyExc_TypeError, "counts_records() needs a bytes prefix and a dict of counts");
        return NULL;
    }
    records = PyList_New(PyDict_GET_SIZE(changed));
    if (records == NULL)
        return NULL;
    while (PyDict_Next(changed, &pos, &ns, &c)) {
        PyObject *value;
        if (i == PyList_GET_SIZE(records)) {
            PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
            goto error;
        }
        o.size = 0;
        o.full = 0;
        if (put_changelog_value(&o, c))
            value = PyBytes_FromStringAndSize((const char *)o.data, o.size);
        else {
            /* the Python encoder could in theory change the dict: keep what is being written alive */
            Py_INCREF(ns);
            Py_INCREF(c);
            value = PyObject_CallOneArg(encode, c);
            Py_DECREF(c);
            if (value == NULL) {
                Py_DECREF(ns);
                goto error;
            }
            if (set_record(records, i++, prefixed_key(prefix, ns), value) < 0) {
                Py_DECREF(ns);
                goto error;
            }
            Py_DECREF(ns);
            continue;
        }
        if (value == NULL || set_record(records, i++, prefixed_key(prefix, ns), value) < 0)
            goto error;
    }
    if (i != PyList_GET_SIZE(records)) {
        PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
        goto error;
    }
    return records;
error:
    Py_DECREF(records);
    return NULL;
}

/* An Avro map<long> of a kinds map (None or empty: the empty map): 1 written, 0 not plain. */
static int
put_avro_map(out_t *o, PyObject *map)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;

    if (map == Py_None || (PyDict_CheckExact(map) && PyDict_GET_SIZE(map) == 0)) {
        put_byte(o, 0);
        return 1;
    }
    if (!PyDict_CheckExact(map))
        return 0;
    put_long(o, PyDict_GET_SIZE(map));
    while (PyDict_Next(map, &pos, &key, &value)) {
        Py_ssize_t size;
        const char *text;
        int64_t n;
        if (!PyUnicode_CheckExact(key) || !small_int(value, &n))
            return 0;
        text = PyUnicode_AsUTF8AndSize(key, &size);
        if (text == NULL) {
            PyErr_Clear(); /* surrogates: the Python encoder raises its own error */
            return 0;
        }
        put_long(o, size);
        put(o, text, size);
        put_long(o, n);
    }
    put_byte(o, 0);
    return 1;
}

/* NsCountValues of a counts list: 1 written, 0 not plain. */
static int
put_avro_values(out_t *o, PyObject *counts)
{
    int64_t answered, failures, timeouts;
    char rate[8];

    if (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) != SLOTS ||
        !small_int(PyList_GET_ITEM(counts, SLOT_ANSWERED), &answered) ||
        !small_int(PyList_GET_ITEM(counts, SLOT_FAILURES), &failures) ||
        !small_int(PyList_GET_ITEM(counts, SLOT_TIMEOUTS), &timeouts))
        return 0;
    /* failures / answered as Python divides ints: exactly (double)f / (double)a while both are exact */
    if (answered < -EXACT_DOUBLE || answered > EXACT_DOUBLE || failures < -EXACT_DOUBLE || failures > EXACT_DOUBLE)
        return 0;
    if (PyFloat_Pack8(answered ? (double)failures / (double)answered : 0.0, rate, 1) < 0) {
        PyErr_Clear();
        return 0;
    }
    put_long(o, answered);
    put_long(o, failures);
    put(o, rate, 8);
    if (!put_avro_map(o, PyList_GET_ITEM(counts, SLOT_BY_KIND)))
        return 0;
    put_long(o, timeouts);
    return put_avro_map(o, PyList_GET_ITEM(counts, SLOT_OBSERVATIONS));
}

/* bytes attribute `name` of the encoder (an Avro field it wrote once) */
static PyObject *
encoder_field(PyObject *encoder, const char *name)
{
    PyObject *value = PyObject_GetAttrString(encoder, name);

    if (value != NULL && !PyBytes_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "SnapshotEncoder.%s must be bytes", name);
        Py_CLEAR(value);
    }
    return value;
}

PyDoc_STRVAR(snapshot_records_doc,
"snapshot_records(changed, totals, encoder) -> list[tuple[bytes, bytes]]\n--\n\n"
"snapshots.snapshot_records_py: (ns.encode(), encoder(ns, start, window, totals[ns])) for each ns, window\n"
"of each start, names of ``changed`` (dict of dicts), in that order; the plain values written here, byte\n"
"for byte as the SnapshotEncoder ``encoder`` writes them.");

static PyObject *
ns_snapshot_records(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *changed, *totals, *encoder, *records = NULL, *time_field = NULL, *seconds_field = NULL;
    PyObject *expired_field = NULL;
    PyObject *start, *names;
    Py_ssize_t pos = 0;
    out_t o;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "snapshot_records() takes exactly 3 arguments");
        return NULL;
    }
    changed = args[0];
    totals = args[1];
    encoder = args[2];
    if (!PyDict_CheckExact(changed) || !PyDict_Check(totals)) {
        PyErr_SetString(PyExc_TypeError, "snapshot_records() needs dicts of changed counts and of totals");
        return NULL;
    }
    if ((time_field = encoder_field(encoder, "time_field")) == NULL ||
        (seconds_field = encoder_field(encoder, "window_seconds_field")) == NULL ||
        (expired_field = encoder_field(encoder, "expired_through_field")) == NULL ||
        (records = PyList_New(0)) == NULL)
        goto error;
    while (PyDict_Next(changed, &pos, &start, &names)) {
        PyObject *ns, *w;
        Py_ssize_t at = 0;
        int64_t start_n = 0;
        int plain_start = small_int(start, &start_n);

        if (!PyDict_CheckExact(names)) {
            PyErr_SetString(PyExc_TypeError, "snapshot_records() needs a dict of counts per window");
            goto error;
        }
        Py_INCREF(start);
        Py_INCREF(names);
        while (PyDict_Next(names, &at, &ns, &w)) {
            PyObject *t = item_of(totals, ns), *value;
            int rc;
            const char *text;
            Py_ssize_t size;
            if (t == NULL)
                goto error_in_window;
            text = PyUnicode_Check(ns) ? PyUnicode_AsUTF8AndSize(ns, &size) : NULL;
            if (text == NULL)
                PyErr_Clear(); /* the fallback raises what the Python encoder raises */
            o.size = 0;
            o.full = 0;
            if (text != NULL && plain_start) {
                put_long(&o, size);
                put(&o, text, size);
                put(&o, PyBytes_AS_STRING(time_field), PyBytes_GET_SIZE(time_field));
                put_byte(&o, UNION_SECOND);
                put_long(&o, start_n);
                put(&o, PyBytes_AS_STRING(seconds_field), PyBytes_GET_SIZE(seconds_field));
                put(&o, PyBytes_AS_STRING(expired_field), PyBytes_GET_SIZE(expired_field));
                put_byte(&o, UNION_SECOND);
            }
            if (text != NULL && plain_start && put_avro_values(&o, w) && put_avro_values(&o, t) && !o.full) {
                value = PyBytes_FromStringAndSize((const char *)o.data, o.size);
                if (value == NULL || append_record(records, PyUnicode_AsUTF8String(ns), value) < 0)
                    goto error_in_window;
                continue;
            }
            /* the Python encoder: keep what it is given alive whatever it does */
            Py_INCREF(ns);
            Py_INCREF(w);
            Py_INCREF(t);
            value = PyObject_CallFunctionObjArgs(encoder, ns, start, w, t, NULL);
            rc = value == NULL ? -1 : append_record(records, PyUnicode_AsUTF8String(ns), value);
            Py_DECREF(ns);
            Py_DECREF(w);
            Py_DECREF(t);
            if (rc < 0)
                goto error_in_window;
        }
        Py_DECREF(start);
        Py_DECREF(names);
        continue;
    error_in_window:
        Py_DECREF(start);
        Py_DECREF(names);
        goto error;
    }
    Py_DECREF(time_field);
    Py_DECREF(seconds_field);
    Py_DECREF(expired_field);
    return records;
error:
    Py_XDECREF(time_field);
    Py_XDECREF(seconds_field);
    Py_XDECREF(expired_field);
    Py_XDECREF(records);
    return NULL;
}

static PyMethodDef methods[] = {
    {"apply", (PyCFunction)(void (*)(void))ns_apply, METH_FASTCALL, apply_doc},
    {"load", (PyCFunction)(void (*)(void))ns_load, METH_FASTCALL, load_doc},
    {"counts_records", (PyCFunction)(void (*)(void))ns_counts_records, METH_FASTCALL, counts_records_doc},
    {"snapshot_records", (PyCFunction)(void (*)(void))ns_snapshot_records, METH_FASTCALL, snapshot_records_doc},
    {"add_table", (PyCFunction)(void (*)(void))ns_add_table, METH_FASTCALL, add_table_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "processors._state",
    "The aggregator's per-name-server work (apply, changelog and snapshot records, a restore's totals) in\n"
    "C; the Python functions of processors.state and processors.snapshots are the specification.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__state(void)
{
    return PyModule_Create(&module);
}
