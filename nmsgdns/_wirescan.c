/*
 * nmsgdns._wirescan: the per-record hot path of the EDNS0 rule in C.
 *
 * Why this exists: the standalone filter and the Faust worker run the libwdns-exact DNS message walk
 * (nmsgdns/wire.py) and the IP/UDP header walk (nmsgdns/ippacket.py) once or twice for every record of
 * the stream; in pure Python they were about half of the filter's time. The walks (wirescan.h) are a
 * line-by-line transcription of those two Python functions, not a new parser: same checks in the same
 * order, same name-length cache, same error messages with the same offsets (the texts are here), so the
 * Python versions stay the specification and the tests assert that both agree on arbitrary bytes.
 *
 * Inputs that are not `bytes` go to the pure-Python fallback registered by wire.py / ippacket.py, so that
 * e.g. a bytearray keeps returning what the Python code returns for it.
 *
 * Two functions serve a per-record cost where the rule runs on every record: judge() decides the common
 * case of nmsgdns.edns.judge from the serialized payload without protobuf objects and returns None for
 * anything else; qname_to_text() is nmsgdns.dnsqr.qname_to_text. Each is held to its Python counterpart
 * by tests (tests/nmsgdns/test_wirescan.py, tests/nmsgdns/test_judge_fast.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wirescan.h"

/* ------------------------------------------------------------------------------------------------ */
/* Configuration handed over by the Python modules (they own the types and the fallbacks).          */

static PyObject *opt_type;       /* nmsgdns.wire.Opt (a NamedTuple: a tuple subclass) */
static PyObject *wire_error;     /* nmsgdns.errors.DnsWireError */
static PyObject *scan_fallback;  /* nmsgdns.wire.scan_opt_py */
static PyObject *udp_fallback;   /* nmsgdns.ippacket.udp_payload_py */

/* ------------------------------------------------------------------------------------------------ */
/* wire.scan_opt and the rule's scan_or: the walk of wirescan.h, its failures as DnsWireError.       */

static int
scan_bytes(PyObject *wire, scan_t *s, optpos *opt)
{
    return scan_buf((const unsigned char *)PyBytes_AS_STRING(wire), PyBytes_GET_SIZE(wire), s, opt);
}

static const char *
reason(int err)
{
    switch (err) {
    case E_SHORT: return "shorter than the 12-byte header";
    case E_PAST_END: return "name or record runs past the end";
    case E_NAME_TOO_LONG: return "name too long";
    case E_POINTER_FORWARD: return "compression pointer not backwards";
    case E_BAD_LABEL: return "invalid label length octet";
    case E_FIELD_CUT: return "RDATA field cut off";
    case E_NAME_PAST_RDATA: return "name runs past RDATA";
    case E_STRING_PAST_RDATA: return "string runs past RDATA";
    case E_A6_PREFIX: return "A6 prefix length > 128";
    case E_A6_CUT: return "A6 address cut off";
    case E_BITMAP_WINDOW: return "type bitmap window length not in 1..32";
    case E_BITMAP_PAST: return "type bitmap runs past RDATA";
    case E_SVC_HEADER: return "SvcParam header cut off";
    case E_SVC_VALUE: return "SvcParam value runs past RDATA";
    case E_LEFT_OVER: return "bytes left over after the last RDATA field";
    case E_QUESTION_CUT: return "question cut off";
    case E_RDATA_PAST_END: return "RDATA runs past the end";
    case E_NAME_NOT_RDATA_END: return "name does not end its RDATA";
    default: return "?";
    }
}

/* Raise DnsWireError with wire._fail's text. */
static PyObject *
raise_failure(const scan_t *s)
{
    static const char prefix[] = "DNS message does not parse: ";
    if (s->err == E_NOMEM)
        return PyErr_NoMemory();
    if (s->err == E_SVC_KEY)
        return PyErr_Format(wire_error, "%sinvalid SvcParam value for key %ld at offset %zd", prefix,
                            s->arg1, s->at);
    if (s->err == E_RDLEN_INVALID)
        return PyErr_Format(wire_error, "%sRDATA length %ld invalid for type %ld at offset %zd", prefix,
                            s->arg1, s->arg2, s->at);
    if (s->err == E_FIELD_CUT_TYPE)
        return PyErr_Format(wire_error, "%sRDATA field cut off for type %ld at offset %zd", prefix,
                            s->arg1, s->at);
    return PyErr_Format(wire_error, "%s%s at offset %zd", prefix, reason(s->err), s->at);
}

/* An Opt the way ``tuple.__new__(Opt, ...)`` builds it. */
static PyObject *
make_opt(const unsigned char *wire, const optpos *opt)
{
    PyTypeObject *tp = (PyTypeObject *)opt_type;
    PyObject *items[5];
    PyObject *result;
    int i;
    if (opt->found == 1) {
        items[0] = PyLong_FromUnsignedLong(opt->udp_size);
        items[1] = PyLong_FromLong(0);
        items[2] = PyLong_FromLong(0);
        items[3] = PyLong_FromLong(0);
        items[4] = PyBytes_FromStringAndSize(NULL, 0);
    } else {
        items[0] = PyLong_FromUnsignedLong(opt->udp_size);
        items[1] = PyLong_FromUnsignedLong(opt->ttl >> 24);
        items[2] = PyLong_FromUnsignedLong((opt->ttl >> 16) & 0xFF);
        items[3] = PyLong_FromUnsignedLong(opt->ttl & 0xFFFF);
        items[4] = PyBytes_FromStringAndSize((const char *)wire + opt->rd_start,
                                             opt->rd_end - opt->rd_start);
    }
    result = tp->tp_alloc(tp, 5);
    for (i = 0; i < 5; i++) {
        if (items[i] == NULL || result == NULL) {
            for (i = 0; i < 5; i++)
                Py_XDECREF(items[i]);
            Py_XDECREF(result);
            return NULL;
        }
    }
    for (i = 0; i < 5; i++)
        PyTuple_SET_ITEM(result, i, items[i]);
    return result;
}

static int
configured(void)
{
    if (opt_type == NULL || wire_error == NULL || scan_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "nmsgdns._wirescan is not configured (import nmsgdns.wire)");
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(scan_opt_doc,
"scan_opt(wire) -> Opt | None\n--\n\n"
"nmsgdns.wire.scan_opt in C: the first type-41 record of a DNS message, or None; raises DnsWireError\n"
"exactly where wdns_parse_message fails, with the Python version's message.");

static PyObject *
wirescan_scan_opt(PyObject *Py_UNUSED(module), PyObject *wire)
{
    scan_t s;
    optpos opt;
    if (!configured())
        return NULL;
    if (!PyBytes_Check(wire))
        return PyObject_CallOneArg(scan_fallback, wire);
    if (scan_bytes(wire, &s, &opt) < 0)
        return raise_failure(&s);
    if (opt.found == 0)
        Py_RETURN_NONE;
    return make_opt((const unsigned char *)PyBytes_AS_STRING(wire), &opt);
}

PyDoc_STRVAR(scan_doc,
"scan(wire, absent, malformed) -> Opt | None | absent | malformed\n--\n\n"
"The rule's view of one side of an exchange, without an exception on the hot path: ``absent`` when\n"
"wire is None, ``malformed`` where scan_opt would raise DnsWireError, else what scan_opt returns.");

static PyObject *
wirescan_scan(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *wire;
    scan_t s;
    optpos opt;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan() takes exactly 3 arguments (wire, absent, malformed)");
        return NULL;
    }
    if (!configured())
        return NULL;
    wire = args[0];
    if (wire == Py_None)
        return Py_NewRef(args[1]);
    if (!PyBytes_Check(wire)) {
        PyObject *r = PyObject_CallOneArg(scan_fallback, wire);
        if (r == NULL && PyErr_ExceptionMatches(wire_error)) {
            PyErr_Clear();
            return Py_NewRef(args[2]);
        }
        return r;
    }
    if (scan_bytes(wire, &s, &opt) < 0) {
        if (s.err == E_NOMEM)
            return PyErr_NoMemory();
        return Py_NewRef(args[2]);
    }
    if (opt.found == 0)
        Py_RETURN_NONE;
    return make_opt((const unsigned char *)PyBytes_AS_STRING(wire), &opt);
}

PyDoc_STRVAR(udp_payload_doc,
"udp_payload(packet, ipv6) -> bytes | None\n--\n\n"
"nmsgdns.ippacket.udp_payload in C: the UDP payload of one unfragmented IP packet, or None.");

static PyObject *
wirescan_udp_payload(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *packet;
    Py_ssize_t start, stop, n;
    int ipv6;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "udp_payload() takes exactly 2 arguments (packet, ipv6)");
        return NULL;
    }
    packet = args[0];
    if (!PyBytes_Check(packet)) {
        if (udp_fallback == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "nmsgdns._wirescan is not configured (import nmsgdns.ippacket)");
            return NULL;
        }
        return PyObject_Vectorcall(udp_fallback, args, 2, NULL);
    }
    ipv6 = PyObject_IsTrue(args[1]);
    if (ipv6 < 0)
        return NULL;
    n = PyBytes_GET_SIZE(packet);
    if (udp_span((const unsigned char *)PyBytes_AS_STRING(packet), n, ipv6, &start, &stop) < 0)
        Py_RETURN_NONE;
    if (start == 0 && stop == n && PyBytes_CheckExact(packet))
        return Py_NewRef(packet);
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(packet) + start, stop - start);
}

/* ------------------------------------------------------------------------------------------------ */
/* Module                                                                                           */

static PyObject *
set_ref(PyObject **slot, PyObject *value)
{
    Py_XSETREF(*slot, Py_NewRef(value));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------------ */
/* edns.judge's common case: NmsgPayload -> DnsQR by hand, derived query/response, both scans.     */
/*
 * The walk is parse_dnsqr_payload (wirescan.h, which says why and what it leaves alone); judge() returns
 * None (the caller runs the Python path, which stays the specification) wherever that walk gives up and
 * for more than one response packet (fragments: ippacket.reassemble).
 */

static PyObject *verdicts; /* tuple of the nmsgdns.edns.Verdict members, in VERDICT_* order */

enum {
    VERDICT_SELECTED = 0,
    VERDICT_NO_RESPONSE,
    VERDICT_RESPONSE_MALFORMED,
    VERDICT_RESPONSE_HAS_EDNS,
    VERDICT_NO_QUERY,
    VERDICT_QUERY_MALFORMED,
    VERDICT_QUERY_NO_EDNS,
    N_VERDICTS,
};

PyDoc_STRVAR(judge_doc,
"judge(payload, detail) -> tuple | None\n--\n\n"
"nmsgdns.edns.judge's common case without building protobuf messages: (verdict, query_opt,\n"
"response_opt, response, edns_answered, edns_timeout, response_ip, type, time_sec, time_nsec), the first\n"
"six as judge() fills a Judgement. None where the Python path must decide (see above).");

static PyObject *
wirescan_judge(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *payload, *query_opt = NULL, *response_opt = NULL, *response = NULL, *out = NULL;
    const unsigned char *p;
    dnsqr_t rec;
    optpos qo, ro;
    Py_ssize_t rs = 0, re = 0, qs = 0, qe = 0;
    int detail, r, q = SIDE_ABSENT, verdict, answered, timeout;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "judge() takes exactly 2 arguments (payload, detail)");
        return NULL;
    }
    if (verdicts == NULL || !configured()) {
        PyErr_SetString(PyExc_RuntimeError, "nmsgdns._wirescan is not configured (import nmsgdns.edns)");
        return NULL;
    }
    payload = args[0];
    if (!PyBytes_Check(payload))
        Py_RETURN_NONE;
    detail = PyObject_IsTrue(args[1]);
    if (detail < 0)
        return NULL;
    p = (const unsigned char *)PyBytes_AS_STRING(payload);
    if (parse_dnsqr_payload(p, PyBytes_GET_SIZE(payload), &rec) < 0 || rec.n_response > 1)
        Py_RETURN_NONE;

    /* derive_response: a packet and a non-empty response_ip; derive_query: exactly one packet */
    r = SIDE_ABSENT;
    if (rec.n_response == 1 && rec.response_ip.len > 0 &&
        derive_one(p, &rec.response_packet, rec.response_ip.len, &rs, &re))
        r = scan_side(p + rs, re - rs, &ro);
    if (r < 0)
        return NULL;
    if (!detail && r != SIDE_NO_OPT) {
        verdict = r == SIDE_ABSENT ? VERDICT_NO_RESPONSE
                  : r == SIDE_MALFORMED ? VERDICT_RESPONSE_MALFORMED
                  : VERDICT_RESPONSE_HAS_EDNS;
        if (r == SIDE_OPT && (response_opt = make_opt(p + rs, &ro)) == NULL)
            return NULL;
        answered = timeout = 0;
    } else {
        if (rec.n_query == 1 && rec.query_ip.start >= 0 &&
            derive_one(p, &rec.query_packet, rec.query_ip.len, &qs, &qe))
            q = scan_side(p + qs, qe - qs, &qo);
        if (q < 0)
            return NULL;
        if (r == SIDE_ABSENT)
            verdict = VERDICT_NO_RESPONSE;
        else if (r == SIDE_MALFORMED)
            verdict = VERDICT_RESPONSE_MALFORMED;
        else if (r == SIDE_OPT)
            verdict = VERDICT_RESPONSE_HAS_EDNS;
        else if (q == SIDE_ABSENT)
            verdict = VERDICT_NO_QUERY;
        else if (q == SIDE_MALFORMED)
            verdict = VERDICT_QUERY_MALFORMED;
        else if (q == SIDE_NO_OPT)
            verdict = VERDICT_QUERY_NO_EDNS;
        else
            verdict = VERDICT_SELECTED;
        if (q == SIDE_OPT && (query_opt = make_opt(p + qs, &qo)) == NULL)
            goto done;
        if (r == SIDE_OPT && (response_opt = make_opt(p + rs, &ro)) == NULL)
            goto done;
        if (r != SIDE_ABSENT &&
            (response = PyBytes_FromStringAndSize((const char *)p + rs, re - rs)) == NULL)
            goto done;
        answered = q == SIDE_OPT && r != SIDE_ABSENT && r != SIDE_MALFORMED;
        timeout = q == SIDE_OPT && rec.type == 2; /* UDP_UNANSWERED_QUERY */
    }
    out = Py_BuildValue(
        "(OOOOOOy#ILk)", PyTuple_GET_ITEM(verdicts, verdict), query_opt ? query_opt : Py_None,
        response_opt ? response_opt : Py_None, response ? response : Py_None,
        answered ? Py_True : Py_False, timeout ? Py_True : Py_False,
        rec.response_ip.start >= 0 ? (const char *)p + rec.response_ip.start : "",
        rec.response_ip.start >= 0 ? rec.response_ip.len : (Py_ssize_t)0, rec.type,
        (long long)(int64_t)rec.time_sec, (unsigned long)rec.time_nsec);
done:
    Py_XDECREF(query_opt);
    Py_XDECREF(response_opt);
    Py_XDECREF(response);
    return out;
}

PyDoc_STRVAR(configure_judge_doc,
"configure_judge(verdicts)\n--\n\n"
"Called by nmsgdns.edns: the Verdict members judge() returns, in the order SELECTED, NO_RESPONSE,\n"
"RESPONSE_MALFORMED, RESPONSE_HAS_EDNS, NO_QUERY, QUERY_MALFORMED, QUERY_NO_EDNS.");

static PyObject *
wirescan_configure_judge(PyObject *Py_UNUSED(module), PyObject *v)
{
    if (!PyTuple_CheckExact(v) || PyTuple_GET_SIZE(v) != N_VERDICTS) {
        PyErr_SetString(PyExc_TypeError, "verdicts must be a tuple of 7 Verdict members");
        return NULL;
    }
    return set_ref(&verdicts, v);
}

/* ------------------------------------------------------------------------------------------------ */
/* dnsqr.qname_to_text                                                                              */
/*
 * Why: classify_failure renders the question name of every failure, and the Python version (a
 * str.translate per label) was most of its cost. Same walk: a label's length octet is taken as is (even
 * >= 64), a label cut short by the end of the data is rendered as far as it goes, "." for nothing.
 */

static PyObject *qname_fallback; /* nmsgdns.dnsqr.qname_to_text_py */

PyDoc_STRVAR(qname_to_text_doc,
"qname_to_text(wire) -> str\n--\n\n"
"nmsgdns.dnsqr.qname_to_text in C (same text for every input).");

static PyObject *
wirescan_qname_to_text(PyObject *Py_UNUSED(module), PyObject *wire)
{
    const unsigned char *w;
    Py_ssize_t n;
    PyObject *out;
    unsigned char stack_buf[1280];
    unsigned char *dst;
    if (!PyBytes_Check(wire)) {
        if (qname_fallback == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "nmsgdns._wirescan is not configured (import nmsgdns.dnsqr)");
            return NULL;
        }
        return PyObject_CallOneArg(qname_fallback, wire);
    }
    w = (const unsigned char *)PyBytes_AS_STRING(wire);
    n = PyBytes_GET_SIZE(wire);
    if (QNAME_TEXT_MAX(n) <= (Py_ssize_t)sizeof stack_buf) {
        dst = stack_buf;
    } else if ((dst = PyMem_Malloc((size_t)QNAME_TEXT_MAX(n))) == NULL) {
        return PyErr_NoMemory();
    }
    out = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, dst, render_qname(w, n, dst));
    if (dst != stack_buf)
        PyMem_Free(dst);
    return out;
}

PyDoc_STRVAR(configure_dnsqr_doc,
"configure_dnsqr(fallback)\n--\n\n"
"Called by nmsgdns.dnsqr: the pure-Python qname_to_text for inputs that are not bytes.");

static PyObject *
wirescan_configure_dnsqr(PyObject *Py_UNUSED(module), PyObject *fb)
{
    if (!PyCallable_Check(fb)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return NULL;
    }
    return set_ref(&qname_fallback, fb);
}


PyDoc_STRVAR(configure_wire_doc,
"configure_wire(opt_type, error_type, fallback)\n--\n\n"
"Called by nmsgdns.wire: the Opt class to build, the exception to raise, and the pure-Python scan_opt\n"
"for inputs that are not bytes.");

static PyObject *
wirescan_configure_wire(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *ot, *et, *fb;
    if (!PyArg_ParseTuple(args, "O!O!O:configure_wire", &PyType_Type, &ot, &PyType_Type, &et, &fb))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)ot, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "opt_type must be a tuple subclass");
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)et, (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "error_type must be an Exception subclass");
        return NULL;
    }
    if (!PyCallable_Check(fb)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return NULL;
    }
    set_ref(&opt_type, ot);
    set_ref(&wire_error, et);
    return set_ref(&scan_fallback, fb);
}

PyDoc_STRVAR(configure_ip_doc,
"configure_ip(fallback)\n--\n\n"
"Called by nmsgdns.ippacket: the pure-Python udp_payload for packets that are not bytes.");

static PyObject *
wirescan_configure_ip(PyObject *Py_UNUSED(module), PyObject *fb)
{
    if (!PyCallable_Check(fb)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return NULL;
    }
    return set_ref(&udp_fallback, fb);
}

static PyMethodDef methods[] = {
    {"scan_opt", wirescan_scan_opt, METH_O, scan_opt_doc},
    {"scan", (PyCFunction)(void (*)(void))wirescan_scan, METH_FASTCALL, scan_doc},
    {"udp_payload", (PyCFunction)(void (*)(void))wirescan_udp_payload, METH_FASTCALL, udp_payload_doc},
    {"configure_wire", wirescan_configure_wire, METH_VARARGS, configure_wire_doc},
    {"configure_ip", wirescan_configure_ip, METH_O, configure_ip_doc},
    {"judge", (PyCFunction)(void (*)(void))wirescan_judge, METH_FASTCALL, judge_doc},
    {"configure_judge", wirescan_configure_judge, METH_O, configure_judge_doc},
    {"qname_to_text", wirescan_qname_to_text, METH_O, qname_to_text_doc},
    {"configure_dnsqr", wirescan_configure_dnsqr, METH_O, configure_dnsqr_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "nmsgdns._wirescan",
    "C versions of nmsgdns.wire.scan_opt, nmsgdns.ippacket.udp_payload, the common case of nmsgdns.edns.judge,\n"
    "and nmsgdns.dnsqr.qname_to_text (same results, faster).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__wirescan(void)
{
    init_specs();
    return PyModule_Create(&module);
}
