/*
 * processors._failure_record: the filter agent's per-failure path in C (processors/failure_record.py).
 *
 * failure_record(payload): a selected payload's (name server, kind, Avro EdnsFailure), the bytes the
 * Python path (judgement_of, classify_failure, failure_dict, dnsqr_schemas.edns_failure.encode_failure)
 * writes; held to it by tests/processors/test_failure_fast.py and tests/processors/test_filter_container.py.
 *
 * It reads the payload with the EDNS0 rule's own C walks, included from the domain package
 * (nmsgdns/wirescan.h: the payload's protobuf fields, the derived query and response, their scans, the
 * rule's SELECTED verdict, the question name's text), so it selects exactly what nmsgdns._wirescan.judge
 * selects without a second copy of that code; and it writes the record with the contract's Avro
 * primitives (schemas/avro.h, dnsqr_schemas).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h> /* inet_ntop, as socket.inet_ntop */
#include <stdint.h>
#include <string.h>
#include <sys/socket.h> /* AF_INET, AF_INET6 */

#include "../nmsgdns/wirescan.h"
#include "../schemas/avro.h"

/* ------------------------------------------------------------------------------------------------ */
/* One selected payload -> its failures-topic record (processors.filter_agent.filter_container)     */
/*
 * Why: for each record the rule selects (about a quarter of a stream) the worker decoded the record with
 * protobuf (edns.judgement_of), labelled it (classify.classify_failure), built the EdnsFailure dict
 * (failure_record.failure_dict) and wrote it (edns_failure.encode_failure): a quarter of the worker's
 * CPU, for fields that all sit in the payload bytes judge() walks anyway. failure_record() walks them
 * again (parse_dnsqr_payload and the two scans, ~1 us) and writes the Avro bytes directly.
 *
 * Same rule as everywhere in the C extensions: the Python path stays the specification and this returns None
 * (the caller then runs that path) for whatever it is not sure of: a payload the rule does not select
 * or judge() leaves to Python, and a record whose fields upb would read differently from this walk (a
 * singular field given twice, a uint32 wider than 32 bits). tests/processors/test_failure_fast.py holds
 * the two to the same bytes.
 */

/* The EdnsFailure fields in the order failure_record() writes them, with avro.h's kind codes: exported
 * as FAILURE_FIELDS, which processors.failure_record compares with the schema's (edns_failure.FIELDS) at
 * import (a schema change turns the fast path off instead of writing a stale layout). */
static const struct {
    const char *name;
    int kind;
} failure_fields[] = {
    {"time_sec", AVRO_LONG},
    {"time_nsec", AVRO_LONG},
    {"name_server", AVRO_STRING},
    {"resolver", AVRO_STRING},
    {"query_port", AVRO_LONG},
    {"response_port", AVRO_LONG},
    {"proto", AVRO_LONG},
    {"qname", AVRO_STRING},
    {"qtype", AVRO_LONG},
    {"qclass", AVRO_LONG},
    {"rcode", AVRO_LONG},
    {"kind", AVRO_STRING},
    {"query_edns_udp_size", AVRO_LONG},
    {"query_edns_version", AVRO_LONG},
    {"query_edns_do", AVRO_BOOLEAN},
    {"payload", AVRO_BYTES},
    {"source", AVRO_LONG},
};
#define N_FAILURE_FIELDS ((int)(sizeof failure_fields / sizeof failure_fields[0]))

/* The DnsQR fields read for a failure record besides those judge() needs: with any of them repeated or
 * wide the values upb reads are not the ones read here. */
#define FAILURE_DNSQR_FIELDS                                                                          \
    (FIELD_BIT(4) | FIELD_BIT(5) | FIELD_BIT(6) | FIELD_BIT(8) | FIELD_BIT(9) | FIELD_BIT(10))

/* The kinds classify.classify_failure labels a selected record with, in the order of classify.KINDS:
 * exported as KINDS, which processors.failure_record compares with classify.KINDS at import (a new or
 * renamed kind turns the fast path off instead of writing a stale label). The str objects are made once,
 * at import. */
enum {
    KIND_BADVERS,
    KIND_FORMERR,
    KIND_SERVFAIL,
    KIND_NOTIMP,
    KIND_REFUSED,
    KIND_TRUNCATED_NOOPT,
    KIND_NOOPT,
    N_KINDS,
};
static const char *const kind_names[N_KINDS] = {
    "badvers", "formerr", "servfail", "notimp", "refused", "truncated-noopt", "noopt",
};
static PyObject *kind_strs[N_KINDS];

/* classify.classify_failure's kind: ``msg`` is the response (it parsed, so it has its 12-byte header),
 * ``version`` the EDNS version the query asked for. */
static int
failure_kind(const unsigned char *msg, unsigned version)
{
    if (version > 0)
        return KIND_BADVERS;
    switch (msg[3] & 0x0F) {
    case 1:
        return KIND_FORMERR;
    case 2:
        return KIND_SERVFAIL;
    case 4:
        return KIND_NOTIMP;
    case 5:
        return KIND_REFUSED;
    default:
        return msg[2] & 0x02 ? KIND_TRUNCATED_NOOPT : KIND_NOOPT; /* TC */
    }
}

#define IP_TEXT_MAX INET6_ADDRSTRLEN

/* An address field as text (dst: IP_TEXT_MAX bytes), as failure_record.ip_text and dnsqr.ip_to_text
 * write a 4- or 16-byte one: their socket.inet_ntop calls the C library's inet_ntop, as this does, so
 * the text is the same (mapped, compatible, compressed zeros). Returns its length, or -1 when the field
 * is absent or of another length (the Python path writes hex; a selected record never has one: the
 * derived query and response need 4 or 16 bytes). */
static int
ip_text(const unsigned char *p, const span *ip, char *dst)
{
    int af = ip->len == 4 ? AF_INET : ip->len == 16 ? AF_INET6 : -1;
    if (ip->start < 0 || af < 0 || inet_ntop(af, p + ip->start, dst, IP_TEXT_MAX) == NULL)
        return -1;
    return (int)strlen(dst);
}

PyDoc_STRVAR(failure_record_doc,
"failure_record(payload) -> (name_server, kind, avro) | None\n--\n\n"
"For a payload the EDNS0 rule selects: its name server (response_ip as text), its failure kind\n"
"(classify_failure) and its schemaless Avro EdnsFailure, the bytes encode_failure(failure_dict(...))\n"
"writes, in the field order of FAILURE_FIELDS. None for any other payload and wherever the Python path\n"
"must decide (see above).");

static PyObject *
failure_failure_record(PyObject *Py_UNUSED(module), PyObject *payload)
{
    const unsigned char *p, *msg;
    Py_ssize_t n, rs, re, qname_len = 0, kind_len;
    dnsqr_t rec;
    optpos qo;
    unsigned version, flags;
    int kind, ns_len, resolver_len, sel;
    char ns[IP_TEXT_MAX], resolver[IP_TEXT_MAX];
    unsigned char qname_stack[1280], *qname = qname_stack, *start, *o;
    PyObject *avro = NULL, *out = NULL;

    if (!PyBytes_Check(payload))
        Py_RETURN_NONE;
    p = (const unsigned char *)PyBytes_AS_STRING(payload);
    n = PyBytes_GET_SIZE(payload);
    if (parse_dnsqr_payload(p, n, &rec) < 0 || ((rec.repeated | rec.wide) & FAILURE_DNSQR_FIELDS))
        Py_RETURN_NONE;
    sel = rule_selects(p, &rec, &rs, &re, &qo);
    if (sel < 0)
        return PyErr_NoMemory();
    if (sel == 0 || re - rs < 12) /* (a response that parsed has its header; checked, not assumed) */
        Py_RETURN_NONE;
    ns_len = ip_text(p, &rec.response_ip, ns);
    resolver_len = ip_text(p, &rec.query_ip, resolver);
    if (ns_len < 0 || resolver_len < 0)
        Py_RETURN_NONE;

    /* The query's Opt (make_opt): a question of type 41 has version and flags 0. */
    version = qo.found == 2 ? (qo.ttl >> 16) & 0xFF : 0;
    flags = qo.found == 2 ? qo.ttl & 0xFFFF : 0;
    msg = p + rs;
    kind = failure_kind(msg, version);
    kind_len = (Py_ssize_t)strlen(kind_names[kind]);

    /* failure_dict's qname: "" when the record has none, else qname_to_text's text. */
    if (rec.qname.start >= 0) {
        if (QNAME_TEXT_MAX(rec.qname.len) > (Py_ssize_t)sizeof qname_stack &&
            (qname = PyMem_Malloc((size_t)QNAME_TEXT_MAX(rec.qname.len))) == NULL)
            return PyErr_NoMemory();
        qname_len = render_qname(p + rec.qname.start, rec.qname.len, qname);
    }

    /* 16 varints (11 numbers, 5 lengths), 1 boolean, the texts and the payload; all text is ASCII, so
     * its UTF-8 form is the bytes themselves. */
    avro = PyBytes_FromStringAndSize(
        NULL, 16 * VARINT_MAX_BYTES + 1 + ns_len + resolver_len + qname_len + kind_len + n);
    if (avro == NULL)
        goto done;
    start = o = (unsigned char *)PyBytes_AS_STRING(avro);
    /* In the order of failure_fields; the values as failure_dict takes them. */
    o = avro_put_long(o, (int64_t)rec.time_sec);              /* time_sec: int64, as upb reads it */
    o = avro_put_long(o, (int64_t)rec.time_nsec);             /* time_nsec: fixed32 */
    o = avro_put_bytes(o, ns, ns_len);                        /* name_server: judgement.ns_ip */
    o = avro_put_bytes(o, resolver, resolver_len);            /* resolver */
    o = avro_put_long(o, (int64_t)rec.query_port);            /* absent: the protobuf default 0 */
    o = avro_put_long(o, (int64_t)rec.response_port);
    o = avro_put_long(o, (int64_t)rec.proto);
    o = avro_put_bytes(o, qname, qname_len);
    o = avro_put_long(o, (int64_t)rec.qtype);
    o = avro_put_long(o, (int64_t)rec.qclass);
    o = avro_put_long(o, (int64_t)(msg[3] & 0x0F));           /* rcode: the response header's */
    o = avro_put_bytes(o, kind_names[kind], kind_len);
    o = avro_put_long(o, (int64_t)qo.udp_size);               /* query_edns_*: the query's OPT */
    o = avro_put_long(o, (int64_t)version);
    *o++ = (flags & 0x8000) != 0;                             /* query_edns_do: the DO bit */
    /* source (version 2): a payload that has one (envelope field 7) is left to Python by
     * parse_dnsqr_payload, so here it is always absent, which the schema writes as 0. */
    o = avro_put_bytes(o, p, n);                              /* payload, byte for byte */
    *o++ = 0;                                                 /* source: 0 (absent: see below) */
    if (_PyBytes_Resize(&avro, o - start) < 0)                /* (frees it and sets NULL on failure) */
        goto done;
    out = Py_BuildValue("(s#OO)", ns, (Py_ssize_t)ns_len, kind_strs[kind], avro);
done:
    if (qname != qname_stack)
        PyMem_Free(qname);
    Py_XDECREF(avro);
    return out;
}

/* FAILURE_FIELDS, the kind strings and KINDS, at import. */
static int
init_failure_record(PyObject *m)
{
    PyObject *fields, *kinds;
    int i;
    for (i = 0; i < N_KINDS; i++)
        if (kind_strs[i] == NULL && (kind_strs[i] = PyUnicode_InternFromString(kind_names[i])) == NULL)
            return -1;
    kinds = PyTuple_New(N_KINDS);
    if (kinds == NULL)
        return -1;
    for (i = 0; i < N_KINDS; i++)
        PyTuple_SET_ITEM(kinds, i, Py_NewRef(kind_strs[i]));
    i = PyModule_AddObjectRef(m, "KINDS", kinds);
    Py_DECREF(kinds);
    if (i < 0)
        return -1;
    fields = PyTuple_New(N_FAILURE_FIELDS);
    if (fields == NULL)
        return -1;
    for (i = 0; i < N_FAILURE_FIELDS; i++) {
        PyObject *pair = Py_BuildValue("(si)", failure_fields[i].name, failure_fields[i].kind);
        if (pair == NULL) {
            Py_DECREF(fields);
            return -1;
        }
        PyTuple_SET_ITEM(fields, i, pair);
    }
    i = PyModule_AddObjectRef(m, "FAILURE_FIELDS", fields);
    Py_DECREF(fields);
    return i;
}

static PyMethodDef methods[] = {
    {"failure_record", failure_failure_record, METH_O, failure_record_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "processors._failure_record",
    "A selected payload's failure record in C (the same bytes as processors.failure_record's Python path,\n"
    "faster; None where that path must decide).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__failure_record(void)
{
    PyObject *m;
    init_specs(); /* the RDATA table of this extension's copy of the scan (nmsgdns/wirescan.h) */
    m = PyModule_Create(&module);
    if (m != NULL && init_failure_record(m) < 0)
        Py_CLEAR(m);
    return m;
}
