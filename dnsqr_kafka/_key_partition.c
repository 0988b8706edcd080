/*
 * dnsqr_kafka._key_partition: Kafka's default partition of a key, in C.
 *
 * Why this exists: the filter agent places every failure record itself (keyed by its name server) and
 * murmur2 in Python costs ~2 us a key. With 8 name servers a cache hides that; at real cardinality
 * (~150k distinct name servers among 230k failures per million records) most keys miss any cache.
 *
 * dnsqr_kafka/key_partition.py is the specification: murmur2() is its murmur2, partition() is
 * (murmur2(key) & 0x7FFFFFFF) % count, as KeyPartitioner computes it (tests/processors/
 * test_key_partition.py holds both to aiokafka's partitioner).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "murmur2.h"

PyDoc_STRVAR(murmur2_doc, "murmur2(data: bytes) -> int\n\nKafka's murmur2 of data (unsigned 32-bit).");

static PyObject *
kp_murmur2(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    uint32_t h;

    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    h = murmur2((const unsigned char *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(h);
}

PyDoc_STRVAR(partition_doc,
             "partition(key: bytes, count: int) -> int\n\n"
             "The partition among count (> 0) that Kafka's default partitioner gives key.");

static PyObject *
kp_partition(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t count;
    uint32_t h;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "partition() takes a key and a partition count");
        return NULL;
    }
    count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    if (count <= 0) {
        PyErr_SetString(PyExc_ValueError, "partition count must be positive");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    h = murmur2((const unsigned char *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t((Py_ssize_t)((h & 0x7FFFFFFFu) % (uint32_t)count));
}

static PyMethodDef methods[] = {
    {"murmur2", kp_murmur2, METH_O, murmur2_doc},
    {"partition", (PyCFunction)(void (*)(void))kp_partition, METH_FASTCALL, partition_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "dnsqr_kafka._key_partition",
    "Kafka's default partition of a key (dnsqr_kafka/key_partition.py), in C.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__key_partition(void)
{
    return PyModule_Create(&module);
}
