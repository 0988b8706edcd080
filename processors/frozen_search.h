/*
 * The binary search of processors/frozen_window.py (find_py) over a FrozenWindow's sorted names, shared by
 * processors/_frozen_window.c (find) and processors/_state.c (the apply's check for frozen totals).
 */
#ifndef PROCESSORS_FROZEN_SEARCH_H
#define PROCESSORS_FROZEN_SEARCH_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* memcmp order of a and b, the shorter first on a tie: Python's bytes order */
static inline int
frozen_compare(const char *a, Py_ssize_t alen, const char *b, Py_ssize_t blen)
{
    int c = memcmp(a, b, (size_t)(alen < blen ? alen : blen));

    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}

/*
 * The index of `key` among the `n` names of `names` (`names_len` bytes) ending at `ends`, -1 when absent,
 * -2 with a ValueError set when the ends reach past the names or decrease.
 */
static inline Py_ssize_t
frozen_search(const char *names, Py_ssize_t names_len, const uint32_t *ends, Py_ssize_t n, const char *key,
              Py_ssize_t key_len)
{
    Py_ssize_t lo = 0, hi = n;

    if (n > 0 && (Py_ssize_t)ends[n - 1] > names_len) {
        PyErr_SetString(PyExc_ValueError, "find: ends reach past names");
        return -2;
    }
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        Py_ssize_t from = mid ? (Py_ssize_t)ends[mid - 1] : 0, to = (Py_ssize_t)ends[mid];
        int c;

        if (to < from) {
            PyErr_SetString(PyExc_ValueError, "find: ends must not decrease");
            return -2;
        }
        c = frozen_compare(names + from, to - from, key, key_len);
        if (c < 0)
            lo = mid + 1;
        else if (c > 0)
            hi = mid;
        else
            return mid;
    }
    return -1;
}

#endif
