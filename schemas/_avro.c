/*
 * dnsqr_schemas._avro: schemaless Avro records of primitive fields in C, read (one field) and written.
 *
 * Why this exists: a flat record is a plain sequence of zig-zag varints, length-prefixed bytes and
 * one-byte booleans, and fastavro's generic code was most of the cost of the failures topic's value on
 * both ends (dnsqr_schemas/edns_failure.py, whose fastavro calls are the specification):
 *
 *  - flat_field() (below): the sink reads every failures-topic value (an EdnsFailure record,
 *    edns_failure.avsc) only for its `payload` field, and must check that the whole value is one record.
 *    fastavro's schemaless_reader built the full dict for that, ~5 us per record, most of the sink's CPU;
 *    this walks the record directly and builds only the one field asked for.
 *  - avro_record() (further below): the filter agent writes one such record per failure; fastavro's
 *    schemaless_writer was ~5 us of it.
 *
 * fastavro is the specification, not this file. flat_field() accepts only values that are clearly
 * well-formed, and for those gives exactly what fastavro gives; for everything else it returns None and
 * the caller (edns_failure.failure_payload) asks fastavro, which decides and words the error. So this
 * code never rejects a value itself. Where fastavro is lenient it is still left to decide, because
 * reproducing its leniency would be guessing (fastavro 1.13, tests/schemas/test_avro_reader.py):
 *
 *  - a boolean byte other than 0 or 1 (fastavro reads any non-zero byte as True);
 *  - a varint that is not the shortest form (0x80 0x00 is 0 for fastavro), or longer than 10 bytes
 *    (fastavro keeps shifting past 64 bits and returns whatever is left), or a 10-byte varint whose last
 *    byte holds more than bit 63 (fastavro drops the excess bits);
 *  - an "int" outside 32 bits is NOT among them: fastavro reads int and long alike, without a range
 *    check, and so does this code (both are kind 0).
 *
 * Every read is bounds-checked against the size of the bytes object; a length that is negative or runs
 * past the end of the value, a truncated varint, a string that is not strict UTF-8 (Python's decoder,
 * which fastavro uses), or bytes left after the last field all mean None.
 *
 * Varints are nmsgdns/varint.h's (through avro.h). Kind codes (avro.h) are those of
 * edns_failure.flat_fields. tests/schemas/test_avro_writer.py holds avro_record() to fastavro's bytes,
 * and its outcome (bytes or exception type) on odd values.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "avro.h"

/* ------------------------------------------------------------------------------------------------ */
/* One field of a flat record (edns_failure.failure_payload)                                        */

/*
 * 1 when s[0:n] is well-formed UTF-8 as Python's strict decoder (fastavro's bytes.decode()) reads it:
 * Unicode's table 3-7, i.e. no overlong forms, no surrogates (U+D800..DFFF), nothing above U+10FFFF.
 */
static int
utf8_valid(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;

    while (i < n) {
        unsigned char c = s[i], lo = 0x80, hi = 0xBF;
        int more; /* continuation bytes after the lead byte */

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            more = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0)
                lo = 0xA0; /* E0 80..9F would be overlong */
            else if (c == 0xED)
                hi = 0x9F; /* ED A0..BF would be a surrogate */
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0)
                lo = 0x90; /* F0 80..8F would be overlong */
            else if (c == 0xF4)
                hi = 0x8F; /* F4 90.. would be above U+10FFFF */
        }
        else
            return 0; /* a continuation byte, C0/C1 (overlong) or F5..FF */
        if (more > n - i - 1)
            return 0; /* the sequence runs past the end */
        /* only the second byte has a narrowed range; the others are any continuation byte */
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (int j = 2; j <= more; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
        i += more + 1;
    }
    return 1;
}

PyDoc_STRVAR(flat_field_doc,
"flat_field(fields, value, index) -> object | None\n--\n\n"
"Field ``index`` of ``value`` (bytes), read as one schemaless Avro record of the primitive ``fields``\n"
"((name, kind) pairs, kind 0 long/int, 1 string, 2 bytes, 3 boolean) that must end exactly at the end\n"
"of ``value``: exactly what fastavro's schemaless_reader gives for it (int, str, bytes or bool). None\n"
"for a value that is not clearly well-formed (fastavro must decide whether it reads it, and how).");

static PyObject *
avro_flat_field(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fields, *value;
    const unsigned char *buf;
    Py_ssize_t nf, index, i, end, pos = 0;
    /* what field `index` turned out to be: its kind, and its number or where its bytes are */
    long want_kind = -1;
    int64_t want_num = 0;
    Py_ssize_t want_start = 0, want_len = 0;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "flat_field() takes exactly 3 arguments (fields, value, index)");
        return NULL;
    }
    fields = args[0];
    value = args[1];
    if (!PyTuple_CheckExact(fields)) {
        PyErr_SetString(PyExc_TypeError, "flat_field() fields must be a tuple of (name, kind) pairs");
        return NULL;
    }
    nf = PyTuple_GET_SIZE(fields);
    index = PyNumber_AsSsize_t(args[2], PyExc_IndexError);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= nf) {
        PyErr_SetString(PyExc_IndexError, "flat_field() index out of range");
        return NULL;
    }
    /* a bytearray, memoryview...: fastavro's reading of it is the reference, and it is not the hot path */
    if (!PyBytes_CheckExact(value))
        Py_RETURN_NONE;
    buf = (const unsigned char *)PyBytes_AS_STRING(value);
    end = PyBytes_GET_SIZE(value);

    /* The whole record is walked, not only up to `index`: trailing garbage, a bad boolean or a bad
     * string after the field all change fastavro's answer. */
    for (i = 0; i < nf; i++) {
        PyObject *spec = PyTuple_GET_ITEM(fields, i);
        int64_t num = 0;
        Py_ssize_t start = 0;
        long kind;

        if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != 2) {
            PyErr_SetString(PyExc_TypeError, "flat_field() fields must be a tuple of (name, kind) pairs");
            return NULL;
        }
        /* the name is not needed: a schemaless record is its fields' values in schema order */
        kind = PyLong_AsLong(PyTuple_GET_ITEM(spec, 1));
        if (kind == -1 && PyErr_Occurred())
            return NULL;
        switch (kind) {
        case AVRO_LONG:
            /* the shortest form only (nmsgdns/varint.h): fastavro decides the others, see above */
            if (!zigzag_read(buf, end, &pos, &num))
                Py_RETURN_NONE;
            break;
        case AVRO_BOOLEAN:
            if (pos >= end || buf[pos] > 1)
                Py_RETURN_NONE;
            num = buf[pos++];
            break;
        case AVRO_STRING:
        case AVRO_BYTES:
            /* a long length, then that many bytes; pos <= end always holds, so end - pos cannot overflow */
            if (!zigzag_read(buf, end, &pos, &num) || num < 0 || num > end - pos)
                Py_RETURN_NONE;
            start = pos;
            pos += (Py_ssize_t)num;
            if (kind == AVRO_STRING && !utf8_valid(buf + start, (Py_ssize_t)num))
                Py_RETURN_NONE;
            break;
        default:
            Py_RETURN_NONE; /* a kind this code does not know: fastavro's */
        }
        if (i == index) {
            want_kind = kind;
            want_num = num;
            want_start = start;
            want_len = (Py_ssize_t)num;
        }
    }
    if (pos != end)
        Py_RETURN_NONE; /* trailing bytes: fastavro reads the record, the caller words the error */

    switch (want_kind) {
    case AVRO_LONG:
        return PyLong_FromLongLong((long long)want_num);
    case AVRO_BOOLEAN:
        return PyBool_FromLong((long)want_num);
    case AVRO_BYTES:
        return PyBytes_FromStringAndSize((const char *)buf + want_start, want_len);
    default: { /* AVRO_STRING, validated above; a decode error would still only mean "not decided" */
        PyObject *text = PyUnicode_DecodeUTF8((const char *)buf + want_start, want_len, "strict");
        if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        return text;
    }
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Schemaless Avro of a flat record (edns_failure.encode_failure)                                   */
/*
 * Why: fastavro's schemaless_writer was ~5 us per failure record, a sixth of the worker's time. A record
 * of primitive fields is only varints and length-prefixed bytes, so this writes it directly, and returns
 * None (the caller then uses fastavro, whose errors and conversions stay the reference) for anything
 * but the plain types: a missing field, an int that is not an int or does not fit 64 bits, a string that
 * is not a str or has no UTF-8 form, bytes that are not bytes, a boolean that is not True/False.
 */

#define AVRO_MAX_FIELDS 64

PyDoc_STRVAR(avro_record_doc,
"avro_record(fields, value) -> bytes | None\n--\n\n"
"Schemaless Avro of dict ``value`` for a record of primitive ``fields`` ((name, kind) pairs, kind 0\n"
"long/int, 1 string, 2 bytes, 3 boolean), byte for byte as fastavro writes it; None where fastavro must\n"
"decide.");

static PyObject *
avro_avro_record(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fields, *value, *out;
    const char *data[AVRO_MAX_FIELDS];
    Py_ssize_t len[AVRO_MAX_FIELDS];
    uint64_t num[AVRO_MAX_FIELDS];
    int kinds[AVRO_MAX_FIELDS];
    Py_ssize_t nf, i, size = 0, o = 0;
    unsigned char *dst;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "avro_record() takes exactly 2 arguments (fields, value)");
        return NULL;
    }
    fields = args[0];
    value = args[1];
    if (!PyTuple_CheckExact(fields) || !PyDict_CheckExact(value))
        Py_RETURN_NONE;
    nf = PyTuple_GET_SIZE(fields);
    if (nf > AVRO_MAX_FIELDS)
        Py_RETURN_NONE;
    for (i = 0; i < nf; i++) {
        PyObject *spec = PyTuple_GET_ITEM(fields, i), *item;
        long kind;
        if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != 2)
            Py_RETURN_NONE;
        kind = PyLong_AsLong(PyTuple_GET_ITEM(spec, 1));
        if (kind == -1 && PyErr_Occurred())
            return NULL;
        item = PyDict_GetItemWithError(value, PyTuple_GET_ITEM(spec, 0)); /* borrowed */
        if (item == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
        kinds[i] = (int)kind;
        switch (kind) {
        case AVRO_LONG: {
            int overflow;
            long long v;
            if (!PyLong_Check(item))
                Py_RETURN_NONE;
            v = PyLong_AsLongLongAndOverflow(item, &overflow);
            if (v == -1 && PyErr_Occurred())
                return NULL;
            if (overflow)
                Py_RETURN_NONE;
            num[i] = zigzag_encode((int64_t)v);
            size += VARINT_MAX_BYTES;
            break;
        }
        case AVRO_STRING:
            if (!PyUnicode_CheckExact(item))
                Py_RETURN_NONE;
            data[i] = PyUnicode_AsUTF8AndSize(item, &len[i]);
            if (data[i] == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeError))
                    return NULL;
                PyErr_Clear();
                Py_RETURN_NONE;
            }
            size += VARINT_MAX_BYTES + len[i];
            break;
        case AVRO_BYTES:
            if (!PyBytes_CheckExact(item))
                Py_RETURN_NONE;
            data[i] = PyBytes_AS_STRING(item);
            len[i] = PyBytes_GET_SIZE(item);
            size += VARINT_MAX_BYTES + len[i];
            break;
        case AVRO_BOOLEAN:
            if (item != Py_True && item != Py_False)
                Py_RETURN_NONE;
            num[i] = item == Py_True;
            size += 1;
            break;
        default:
            Py_RETURN_NONE;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    dst = (unsigned char *)PyBytes_AS_STRING(out);
    for (i = 0; i < nf; i++) {
        switch (kinds[i]) {
        case AVRO_LONG:
            o = varint_put(dst + o, num[i]) - dst;
            break;
        case AVRO_BOOLEAN:
            dst[o++] = (unsigned char)num[i];
            break;
        default: /* string, bytes: zigzag length, then the bytes */
            o = varint_put(dst + o, zigzag_encode((int64_t)len[i])) - dst;
            memcpy(dst + o, data[i], (size_t)len[i]);
            o += len[i];
        }
    }
    if (_PyBytes_Resize(&out, o) < 0)
        return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"flat_field", (PyCFunction)(void (*)(void))avro_flat_field, METH_FASTCALL, flat_field_doc},
    {"avro_record", (PyCFunction)(void (*)(void))avro_avro_record, METH_FASTCALL, avro_record_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "dnsqr_schemas._avro",
    "Schemaless Avro records of primitive fields: one field read, or a whole record written, as fastavro\n"
    "reads and writes them (faster; None where fastavro must decide).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__avro(void)
{
    return PyModule_Create(&module);
}
