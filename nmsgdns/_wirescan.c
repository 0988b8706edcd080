/*
 * nmsgdns._wirescan: the per-record hot path of the EDNS0 rule in C.
 *
 * Why this exists: the standalone filter and the Faust worker run the libwdns-exact DNS message walk
 * (nmsgdns/wire.py) and the IP/UDP header walk (nmsgdns/ippacket.py) once or twice for every record of
 * the stream; in pure Python they were about half of the filter's time. This file is a line-by-line
 * transcription of those two Python functions, not a new parser: same checks in the same order, same
 * name-length cache, same error messages with the same offsets, so the Python versions stay the
 * specification and the tests assert that both agree on arbitrary bytes.
 *
 * Every read is bounds-checked against the length of the bytes object: where the Python code would
 * raise IndexError or struct.error (which wire.scan_opt turns into "name or record runs past the end"),
 * this code reports that same failure and never touches memory past the buffer.
 *
 * Inputs that are not `bytes` go to the pure-Python fallback registered by wire.py / ippacket.py, so that
 * e.g. a bytearray keeps returning what the Python code returns for it.
 *
 * Three later additions serve the Faust worker's per-record cost (issue #5): judge() decides the common
 * case of nmsgdns.edns.judge from the serialized payload without protobuf objects and returns None for
 * anything else; qname_to_text() is nmsgdns.dnsqr.qname_to_text; avro_record() writes the failures
 * topic's flat Avro record; failure_record() is the worker's whole per-failure path (record, kind,
 * failure dict, Avro) for a selected payload. Each is held to its Python counterpart by tests
 * (tests/nmsgdns/test_judge_fast.py, tests/processors/test_filter_container.py,
 * tests/processors/test_failure_fast.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h> /* inet_ntop, as socket.inet_ntop */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h> /* AF_INET, AF_INET6 */

/* ------------------------------------------------------------------------------------------------ */
/* Configuration handed over by the Python modules (they own the types and the fallbacks).          */

static PyObject *opt_type;       /* nmsgdns.wire.Opt (a NamedTuple: a tuple subclass) */
static PyObject *wire_error;     /* nmsgdns.errors.DnsWireError */
static PyObject *scan_fallback;  /* nmsgdns.wire.scan_opt_py */
static PyObject *udp_fallback;   /* nmsgdns.ippacket.udp_payload_py */

/* ------------------------------------------------------------------------------------------------ */
/* The libwdns 1.3.1 RDATA descriptor table, as nmsgdns.wire._FIELDS.                              */

/* Field kinds: positive values are fixed sizes in bytes. */
#define F_NAME (-1)
#define F_STRING (-2)
#define F_STRINGS (-3)
#define F_BYTES (-4)
#define F_IPV6PREFIX (-5)
#define F_BITMAP (-6)
#define F_SVCPARAMS (-7)

/* Check kinds, as wire._K_*: decided once per type at import. */
#define K_OPAQUE 0  /* not listed: any RDATA */
#define K_LENGTHS 1 /* only fixed-size fields: RDLENGTH must be a field boundary */
#define K_PREFIX 2  /* fixed-size fields then bytes */
#define K_FIELDS 3  /* field walk */
#define K_NAME 4    /* exactly one name */

#define MAX_FIELDS 10
#define N_TYPES 258 /* highest listed type is CAA (257) */

typedef struct {
    uint8_t kind;
    uint8_t in_only;    /* the check applies to class IN only */
    uint8_t nfields;
    uint8_t prefix;     /* K_PREFIX: total size of the fixed fields */
    uint32_t lengths;   /* K_LENGTHS / K_PREFIX: bit i set when RDLENGTH i ends on a field boundary */
    int8_t fields[MAX_FIELDS];
} rrspec;

static rrspec specs[N_TYPES];

static void
spec_set(int type, int in_only, int nfields, const int8_t *fields)
{
    rrspec *s = &specs[type];
    int nfixed = nfields, all_fixed = 1, i, sum = 0;
    memset(s, 0, sizeof *s);
    s->in_only = (uint8_t)in_only;
    s->nfields = (uint8_t)nfields;
    memcpy(s->fields, fields, (size_t)nfields);
    if (fields[nfields - 1] == F_BYTES)
        nfixed = nfields - 1;
    for (i = 0; i < nfixed; i++)
        if (fields[i] <= 0)
            all_fixed = 0;
    if (all_fixed) {
        s->lengths = 1u;
        for (i = 0; i < nfixed; i++) {
            sum += fields[i];
            s->lengths |= 1u << sum; /* every listed type's fixed part is < 32 bytes */
        }
        s->kind = nfixed == nfields ? K_LENGTHS : K_PREFIX;
        s->prefix = (uint8_t)sum;
    } else if (nfields == 1 && fields[0] == F_NAME) {
        s->kind = K_NAME;
    } else {
        s->kind = K_FIELDS;
    }
}

#define SPEC(type, in_only, ...)                                                              \
    do {                                                                                      \
        static const int8_t f_[] = {__VA_ARGS__};                                             \
        spec_set((type), (in_only), (int)(sizeof f_ / sizeof f_[0]), f_);                     \
    } while (0)

static void
init_specs(void)
{
    static const int single_names[] = {2, 3, 4, 5, 7, 8, 9, 12, 39};
    size_t i;
    memset(specs, 0, sizeof specs);
    for (i = 0; i < sizeof single_names / sizeof single_names[0]; i++)
        SPEC(single_names[i], 0, F_NAME);                              /* NS MD MF CNAME MB MG MR PTR DNAME */
    SPEC(6, 0, F_NAME, F_NAME, 4, 4, 4, 4, 4);                       /* SOA */
    SPEC(13, 0, F_STRING, F_STRING);                                   /* HINFO */
    SPEC(20, 0, F_STRING, F_STRING);                                   /* ISDN */
    SPEC(14, 0, F_NAME, F_NAME);                                       /* MINFO */
    SPEC(17, 0, F_NAME, F_NAME);                                       /* RP */
    SPEC(15, 0, 2, F_NAME);                                            /* MX */
    SPEC(18, 0, 2, F_NAME);                                            /* AFSDB */
    SPEC(21, 0, 2, F_NAME);                                            /* RT */
    SPEC(16, 0, F_STRINGS);                                            /* TXT */
    SPEC(99, 0, F_STRINGS);                                            /* SPF */
    SPEC(19, 0, F_STRING);                                             /* X25 */
    SPEC(30, 0, F_NAME, F_BYTES);                                      /* NXT */
    SPEC(24, 0, 2, 1, 1, 4, 4, 4, 2, F_NAME, F_BYTES);                 /* SIG */
    SPEC(46, 0, 2, 1, 1, 4, 4, 4, 2, F_NAME, F_BYTES);                 /* RRSIG */
    SPEC(1, 1, 4);                                                     /* A */
    SPEC(11, 1, 4, 1, F_BYTES);                                        /* WKS */
    SPEC(28, 1, 16);                                                   /* AAAA */
    SPEC(38, 1, F_IPV6PREFIX, F_NAME);                                 /* A6 */
    SPEC(36, 1, 2, F_NAME);                                            /* KX */
    SPEC(26, 1, 2, F_NAME, F_NAME);                                    /* PX */
    SPEC(35, 1, 2, 2, F_STRING, F_STRING, F_STRING, F_NAME);           /* NAPTR */
    SPEC(33, 1, 2, 2, 2, F_NAME);                                      /* SRV */
    SPEC(48, 0, 2, 1, 1, F_BYTES);                                     /* DNSKEY */
    SPEC(60, 0, 2, 1, 1, F_BYTES);                                     /* CDNSKEY */
    SPEC(43, 0, 2, 1, 1, F_BYTES);                                     /* DS */
    SPEC(59, 0, 2, 1, 1, F_BYTES);                                     /* CDS */
    SPEC(47, 0, F_NAME, F_BITMAP);                                     /* NSEC */
    SPEC(50, 0, 1, 1, 2, F_STRING, F_STRING, F_BITMAP);                /* NSEC3 */
    SPEC(51, 0, 1, 1, 2, F_STRING);                                    /* NSEC3PARAM */
    SPEC(52, 0, 1, 1, 1, F_BYTES);                                     /* TLSA */
    SPEC(62, 0, 4, 2, F_BITMAP);                                       /* CSYNC */
    SPEC(108, 0, 6);                                                   /* EUI48 */
    SPEC(109, 0, 8);                                                   /* EUI64 */
    SPEC(256, 0, 2, 2, F_BYTES);                                       /* URI */
    SPEC(64, 1, 2, F_NAME, F_SVCPARAMS);                               /* SVCB */
    SPEC(65, 1, 2, F_NAME, F_SVCPARAMS);                               /* HTTPS */
    SPEC(257, 1, 1, F_STRING, F_BYTES);                                /* CAA */
}

/* ------------------------------------------------------------------------------------------------ */
/* The walk.                                                                                        */

/* Failure reasons; the texts are wire.py's, in the same order. */
enum {
    E_NONE = 0,
    E_SHORT,             /* shorter than the 12-byte header */
    E_PAST_END,          /* name or record runs past the end (IndexError / struct.error in Python) */
    E_NAME_TOO_LONG,
    E_POINTER_FORWARD,
    E_BAD_LABEL,
    E_FIELD_CUT,
    E_NAME_PAST_RDATA,
    E_STRING_PAST_RDATA,
    E_A6_PREFIX,
    E_A6_CUT,
    E_BITMAP_WINDOW,
    E_BITMAP_PAST,
    E_SVC_HEADER,
    E_SVC_VALUE,
    E_SVC_KEY,           /* arg: key */
    E_LEFT_OVER,
    E_QUESTION_CUT,
    E_RDATA_PAST_END,
    E_RDLEN_INVALID,     /* args: rdlen, type */
    E_FIELD_CUT_TYPE,    /* arg: type */
    E_NAME_NOT_RDATA_END,
    E_NOMEM,             /* not a parse failure: MemoryError */
};

/* Name-length cache (wire.py's ``known`` dict). Only pointer targets are ever looked up, and they are
 * 14-bit offsets inside the message, so offsets below min(len, 16384) are all that is kept. Lengths are
 * below 255, so 255 marks "unknown". */
#define KNOWN_MAX 16384
#define UNKNOWN 255
#define MARKS_STACK 64

typedef struct {
    Py_ssize_t target;
    int before;
} mark;

typedef struct {
    const unsigned char *w;
    Py_ssize_t n;
    uint8_t *known;
    Py_ssize_t kn;        /* entries in known */
    int err;
    Py_ssize_t at;        /* offset named in the message */
    long arg1, arg2;
    mark *marks;          /* heap, only for pathological pointer chains */
    Py_ssize_t marks_cap;
} scan_t;

static inline int
known_get(const scan_t *s, Py_ssize_t off)
{
    return off < s->kn ? s->known[off] : UNKNOWN;
}

static inline void
known_set(scan_t *s, Py_ssize_t off, Py_ssize_t len)
{
    if (off < s->kn)
        s->known[off] = (uint8_t)len;
}

static inline Py_ssize_t
fail(scan_t *s, int err, Py_ssize_t at)
{
    s->err = err;
    s->at = at;
    return -1;
}

#define PAST_END(s) fail((s), E_PAST_END, (s)->n)

/* wire._name_walk: labels and pointers in any order; returns the offset after the name or -1. */
static Py_ssize_t
name_walk(scan_t *s, Py_ssize_t pos)
{
    const unsigned char *w = s->w;
    Py_ssize_t n = s->n, src = pos, end = -1, nmarks = 0, i;
    int total = 0;
    mark stack_marks[MARKS_STACK];
    mark *marks = stack_marks;
    Py_ssize_t cap = MARKS_STACK;
    /* A successful walk visits no offset twice (the walk from an offset is deterministic, so a repeat
     * would loop until the name is too long), so it jumps to at most KNOWN_MAX distinct targets. More
     * marks than that mean the walk will fail; they need not be kept. */
    int overflow = 0;

    for (;;) {
        unsigned c;
        if (src >= n)
            return PAST_END(s);
        c = w[src];
        if (c < 64) {
            if (c == 0)
                break;
            total += (int)c + 1;
            if (total >= 255)
                return fail(s, E_NAME_TOO_LONG, src);
            src += (Py_ssize_t)c + 1;
        } else if (c >= 192) {
            Py_ssize_t target;
            int sub;
            if (src + 1 >= n)
                return PAST_END(s);
            target = ((Py_ssize_t)(c & 63) << 8) | w[src + 1];
            if (target >= src)
                return fail(s, E_POINTER_FORWARD, src);
            if (end < 0)
                end = src + 2;
            sub = known_get(s, target);
            if (sub != UNKNOWN) {
                total += sub;
                if (total >= 255)
                    return fail(s, E_NAME_TOO_LONG, src);
                break;
            }
            if (!overflow) {
                if (nmarks == cap) {
                    if (cap >= KNOWN_MAX + 1) {
                        overflow = 1;
                    } else {
                        if (s->marks == NULL) {
                            s->marks = PyMem_Malloc(sizeof(mark) * (KNOWN_MAX + 1));
                            if (s->marks == NULL)
                                return fail(s, E_NOMEM, 0);
                            s->marks_cap = KNOWN_MAX + 1;
                        }
                        memcpy(s->marks, marks, sizeof(mark) * (size_t)nmarks);
                        marks = s->marks;
                        cap = s->marks_cap;
                    }
                }
                if (!overflow) {
                    marks[nmarks].target = target;
                    marks[nmarks].before = total;
                    nmarks++;
                }
            }
            src = target;
        } else {
            return fail(s, E_BAD_LABEL, src);
        }
    }
    known_set(s, pos, total);
    for (i = 0; i < nmarks; i++)
        known_set(s, marks[i].target, total - marks[i].before);
    return end >= 0 ? end : src + 1;
}

/* wire._name: the fast path (labels ending in the root or in a pointer to a known name). */
static Py_ssize_t
name(scan_t *s, Py_ssize_t pos)
{
    const unsigned char *w = s->w;
    Py_ssize_t n = s->n, src = pos;
    unsigned c;
    if (src >= n)
        return PAST_END(s);
    c = w[src];
    while (c > 0 && c < 64) {
        src += (Py_ssize_t)c + 1;
        if (src >= n)
            return PAST_END(s);
        c = w[src];
    }
    if (c == 0) {
        if (src - pos < 255) {
            known_set(s, pos, src - pos);
            return src + 1;
        }
    } else if (c >= 192) {
        int sub;
        if (src + 1 >= n)
            return PAST_END(s);
        sub = known_get(s, ((Py_ssize_t)(c & 63) << 8) | w[src + 1]);
        if (sub != UNKNOWN && src - pos + sub < 255) {
            known_set(s, pos, src - pos + sub);
            return src + 2;
        }
    }
    return name_walk(s, pos);
}

/* wire._svcparam_ok; the value lies inside the RDATA, which lies inside the data. */
static int
svcparam_ok(const unsigned char *w, unsigned key, Py_ssize_t p, Py_ssize_t vlen)
{
    switch (key) {
    case 0:
        return vlen % 2 == 0;
    case 1: {
        Py_ssize_t q = p, stop = p + vlen;
        if (vlen == 0)
            return 0;
        while (q < stop)
            q += (Py_ssize_t)w[q] + 1;
        return q == stop;
    }
    case 2:
        return vlen == 0;
    case 3:
        return vlen == 2;
    case 4:
        return vlen % 4 == 0;
    case 6:
        return vlen % 16 == 0;
    default:
        return key != 65535;
    }
}

/* wire._fields over the compiled steps: a run of fixed-size fields is one step that may end at an
 * inner field boundary. Returns 0 or -1. */
static int
fields_walk(scan_t *s, Py_ssize_t p, Py_ssize_t end, const rrspec *spec)
{
    const unsigned char *w = s->w;
    int i = 0, nf = spec->nfields;
    while (i < nf) {
        int f = spec->fields[i];
        if (p == end)
            return 0; /* missing trailing fields are accepted */
        if (f > 0) {
            /* the run of fixed-size fields starting here */
            Py_ssize_t size = 0, avail = end - p;
            int j, inner = 0;
            for (j = i; j < nf && spec->fields[j] > 0; j++) {
                if (j > i && size == avail)
                    inner = 1;
                size += spec->fields[j];
            }
            i = j;
            if (avail >= size)
                p += size;
            else if (inner)
                return 0; /* the RDATA ends between two fields of the run */
            else
                return (int)fail(s, E_FIELD_CUT, end);
            continue;
        }
        i++;
        switch (f) {
        case F_NAME:
            p = name(s, p);
            if (p < 0)
                return -1;
            if (p > end)
                return (int)fail(s, E_NAME_PAST_RDATA, end);
            break;
        case F_STRING:
            p += (Py_ssize_t)w[p] + 1;
            if (p > end)
                return (int)fail(s, E_STRING_PAST_RDATA, end);
            break;
        case F_BYTES:
            p = end;
            break;
        case F_STRINGS:
            while (p < end)
                p += (Py_ssize_t)w[p] + 1;
            if (p > end)
                return (int)fail(s, E_STRING_PAST_RDATA, end);
            break;
        case F_IPV6PREFIX: {
            unsigned plen = w[p];
            if (plen > 128)
                return (int)fail(s, E_A6_PREFIX, p);
            p += 1 + (Py_ssize_t)(135 - plen) / 8;
            if (p > end)
                return (int)fail(s, E_A6_CUT, end);
            break;
        }
        case F_BITMAP:
            while (end - p >= 2) {
                unsigned blen = w[p + 1];
                if (blen < 1 || blen > 32)
                    return (int)fail(s, E_BITMAP_WINDOW, p);
                if ((Py_ssize_t)blen > end - p - 2)
                    return (int)fail(s, E_BITMAP_PAST, p);
                p += 2 + (Py_ssize_t)blen;
            }
            break;
        default: /* F_SVCPARAMS */
            while (p < end) {
                unsigned key;
                Py_ssize_t vlen;
                if (end - p < 4)
                    return (int)fail(s, E_SVC_HEADER, p);
                key = ((unsigned)w[p] << 8) | w[p + 1];
                vlen = ((Py_ssize_t)w[p + 2] << 8) | w[p + 3];
                if (vlen + 4 > end - p)
                    return (int)fail(s, E_SVC_VALUE, p);
                if (!svcparam_ok(w, key, p + 4, vlen)) {
                    s->arg1 = (long)key;
                    return (int)fail(s, E_SVC_KEY, p);
                }
                p += 4 + vlen;
            }
            break;
        }
    }
    if (p != end)
        return (int)fail(s, E_LEFT_OVER, p);
    return 0;
}

static inline unsigned
u16(const unsigned char *w, Py_ssize_t at)
{
    return ((unsigned)w[at] << 8) | w[at + 1];
}

/* What scan() found: nothing (no OPT), a question of type 41, or an OPT record. */
typedef struct {
    int found;             /* 0 none, 1 question, 2 record */
    unsigned udp_size;
    uint32_t ttl;
    Py_ssize_t rd_start, rd_end;
} optpos;

/* wire.scan_opt without Python objects: returns 0 (parsed; *opt says what was found) or -1. */
static int
scan(scan_t *s, optpos *opt)
{
    const unsigned char *w = s->w;
    Py_ssize_t n = s->n, pos = 12;
    long qdcount, rrcount, k;

    opt->found = 0;
    if (n < 12)
        return (int)fail(s, E_SHORT, 0);
    qdcount = u16(w, 4);
    rrcount = (long)u16(w, 6) + u16(w, 8) + u16(w, 10);
    memset(s->known, UNKNOWN, (size_t)s->kn);

    for (k = 0; k < qdcount; k++) {
        Py_ssize_t src;
        unsigned c;
        if (pos == n)
            return 0;
        /* inline walk of an uncompressed name; anything else takes name() */
        src = pos;
        c = w[src];
        while (c > 0 && c < 64) {
            src += (Py_ssize_t)c + 1;
            if (src >= n)
                return (int)PAST_END(s);
            c = w[src];
        }
        if (c == 0 && src - pos < 255) {
            while (pos < src) { /* every suffix: later names point at them */
                known_set(s, pos, src - pos);
                pos += (Py_ssize_t)w[pos] + 1;
            }
            pos = src + 1;
        } else {
            pos = name(s, pos);
            if (pos < 0)
                return -1;
        }
        if (pos + 4 > n)
            return (int)fail(s, E_QUESTION_CUT, pos);
        if (opt->found == 0 && w[pos] == 0 && w[pos + 1] == 41) {
            opt->found = 1;
            opt->udp_size = u16(w, pos + 2);
        }
        pos += 4;
    }

    for (k = 0; k < rrcount; k++) {
        unsigned c, rtype, rclass;
        Py_ssize_t rdlen, end;
        const rrspec *spec;
        if (pos == n)
            return 0;
        c = w[pos];
        if (c >= 192) {
            if (pos + 1 >= n)
                return (int)PAST_END(s);
            if (known_get(s, ((Py_ssize_t)(c & 63) << 8) | w[pos + 1]) != UNKNOWN)
                pos += 2;
            else if ((pos = name(s, pos)) < 0)
                return -1;
        } else if (c == 0) {
            pos += 1;
        } else if ((pos = name(s, pos)) < 0) {
            return -1;
        }
        if (pos + 10 > n)
            return (int)PAST_END(s);
        rtype = u16(w, pos);
        rclass = u16(w, pos + 2);
        rdlen = (Py_ssize_t)u16(w, pos + 8);
        pos += 10;
        end = pos + rdlen;
        if (end > n)
            return (int)fail(s, E_RDATA_PAST_END, pos);
        spec = rtype < N_TYPES ? &specs[rtype] : NULL;
        if (spec != NULL && (spec->kind == K_OPAQUE || (spec->in_only && rclass != 1)))
            spec = NULL;
        if (spec == NULL) {
            if (rtype == 41 && opt->found == 0) {
                opt->found = 2;
                opt->udp_size = rclass;
                opt->ttl = ((uint32_t)w[pos - 6] << 24) | ((uint32_t)w[pos - 5] << 16) |
                           ((uint32_t)w[pos - 4] << 8) | w[pos - 3];
                opt->rd_start = pos;
                opt->rd_end = end;
            }
        } else if (spec->kind == K_LENGTHS) {
            if (rdlen >= 32 || !(spec->lengths >> rdlen & 1)) {
                s->arg1 = (long)rdlen;
                s->arg2 = (long)rtype;
                return (int)fail(s, E_RDLEN_INVALID, pos);
            }
        } else if (spec->kind == K_PREFIX) {
            if (rdlen < spec->prefix && !(spec->lengths >> rdlen & 1)) {
                s->arg1 = (long)rtype;
                return (int)fail(s, E_FIELD_CUT_TYPE, pos);
            }
        } else if (rdlen == 0) {
            /* RDATA may end before its first field */
        } else if (spec->kind == K_NAME) {
            Py_ssize_t after = name(s, pos);
            if (after < 0)
                return -1;
            if (after != end)
                return (int)fail(s, E_NAME_NOT_RDATA_END, pos);
        } else if (fields_walk(s, pos, end, spec) < 0) {
            return -1;
        }
        pos = end;
    }
    return 0;
}

/* Run scan() over a buffer with the cache on the stack when it fits. Returns 0 or -1 (s->err). */
static int
scan_buf(const unsigned char *w, Py_ssize_t n, scan_t *s, optpos *opt)
{
    uint8_t stack_known[4096];
    int rc;
    s->w = w;
    s->n = n;
    s->kn = s->n < KNOWN_MAX ? s->n : KNOWN_MAX;
    s->err = E_NONE;
    s->marks = NULL;
    s->marks_cap = 0;
    if (s->kn <= (Py_ssize_t)sizeof stack_known) {
        s->known = stack_known;
    } else {
        s->known = PyMem_Malloc((size_t)s->kn);
        if (s->known == NULL) {
            s->err = E_NOMEM;
            return -1;
        }
    }
    rc = scan(s, opt);
    if (s->known != stack_known)
        PyMem_Free(s->known);
    s->known = NULL;
    if (s->marks != NULL)
        PyMem_Free(s->marks);
    s->marks = NULL;
    return rc;
}

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

/* ------------------------------------------------------------------------------------------------ */
/* ippacket.udp_payload                                                                             */

static inline int
ip6_ext(unsigned nxt)
{
    return nxt == 0 || nxt == 43 || nxt == 44 || nxt == 60 || nxt == 51 || nxt == 50;
}

/* The UDP payload's [start, stop) in the packet, or -1 where nmsg_ipdg_parse fails. */
static int
udp_span(const unsigned char *p, Py_ssize_t n, int ipv6, Py_ssize_t *start, Py_ssize_t *stop)
{
    Py_ssize_t off;
    unsigned nxt, ulen;
    if (ipv6) {
        long plen;
        if (n < 40 || (p[0] & 0xF0) != 0x60)
            return -1;
        nxt = p[6];
        off = 40;
        plen = (long)u16(p, 4);
        while (ip6_ext(nxt)) {
            long ext_len;
            if (off + 2 > n || nxt == 44)
                return -1;
            ext_len = (8 * (((long)p[off + 1] << 8) + 1)) & 0xFFFF;
            nxt = p[off];
            if (ext_len > plen)
                return -1;
            off += ext_len;
            plen -= ext_len;
        }
        if (off + plen > n || plen == 0)
            return -1;
    } else {
        if (n < 20)
            return -1;
        if (u16(p, 6) & 0x3FFF) /* MF or a fragment offset */
            return -1;
        nxt = p[9];
        off = (Py_ssize_t)(p[0] & 0x0F) * 4;
    }
    if (nxt != 17 || n - off < 8)
        return -1;
    ulen = u16(p, off + 4);
    if (ulen >= 8)
        ulen -= 8;
    *start = off + 8;
    *stop = *start + (Py_ssize_t)ulen;
    if (*stop > n)
        *stop = n; /* a slice clamps to what was captured */
    return 0;
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
 * Why: in the Faust worker the protobuf view, the two derive_* calls and the Judgement around them were
 * ~30% of the time per record. This walks the serialized payload once, without building a message,
 * and gives up (returns None: the caller runs the Python path, which stays the specification) on
 * anything it does not fully understand: a field it does not expect, a field with an unexpected wire
 * type, a repeated singular field, a packed repeated field, an enum value outside DnsQRType, a varint
 * longer than protobuf allows, more than one response packet (fragments: ippacket.reassemble), another
 * vid/msgtype. So whatever it accepts upb also parses into the same values, and whatever it cannot be
 * sure of is left to the code it must agree with.
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

/* A protobuf varint at *pos, bounded by n. Returns 0, or -1 when truncated or longer than 10 bytes or
 * with bits past the 64th (cases left to upb). */
static int
read_varint(const unsigned char *p, Py_ssize_t n, Py_ssize_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    Py_ssize_t i = *pos;
    int shift;
    for (shift = 0; shift < 70; shift += 7) {
        unsigned b;
        if (i >= n)
            return -1;
        b = p[i++];
        if (shift == 63 && b > 1)
            return -1;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *pos = i;
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Skip the value of a field of wire type wt (0, 1, 2 or 5); -1 when it does not fit. */
static int
skip_value(const unsigned char *p, Py_ssize_t n, Py_ssize_t *pos, unsigned wt)
{
    uint64_t len;
    switch (wt) {
    case 0:
        return read_varint(p, n, pos, &len);
    case 1:
        if (n - *pos < 8)
            return -1;
        *pos += 8;
        return 0;
    case 2:
        if (read_varint(p, n, pos, &len) < 0 || len > (uint64_t)(n - *pos))
            return -1;
        *pos += (Py_ssize_t)len;
        return 0;
    case 5:
        if (n - *pos < 4)
            return -1;
        *pos += 4;
        return 0;
    default:
        return -1;
    }
}

typedef struct {
    Py_ssize_t start, len; /* a bytes field's value in the payload; start < 0: absent */
} span;

typedef struct {
    uint64_t time_sec;
    uint32_t time_nsec;
    unsigned type;
    span query_ip, response_ip, query_packet, response_packet; /* the first packet of each list */
    Py_ssize_t n_query, n_response;
    /* Read for failure_record(); judge() has no use for them. */
    span qname;
    uint32_t proto, query_port, response_port, qtype, qclass;
    /* Bit f for DnsQR field f. ``repeated``: seen more than once (for a singular field upb keeps the
     * last). ``wide``: a uint32 field whose varint has bits past the 32nd (upb truncates it). Values
     * read from such fields are not what upb reads, so failure_record() leaves those records alone. */
    uint32_t repeated, wide;
} dnsqr_t;

#define FIELD_BIT(f) (1u << (f))

/* The fields of a vid 1 / msgtype 9 payload; 0, or -1 where the Python path must decide. */
static int
parse_dnsqr_payload(const unsigned char *p, Py_ssize_t n, dnsqr_t *r)
{
    Py_ssize_t pos = 0, inner = -1, end = 0;
    uint64_t tag, v, vid = 0, msgtype = 0;
    unsigned seen = 0;

    memset(r, 0, sizeof *r);
    r->query_ip.start = r->response_ip.start = r->qname.start = -1;
    while (pos < n) {
        unsigned field, wt;
        if (read_varint(p, n, &pos, &tag) < 0 || tag > 0xFFFFFFFFu)
            return -1;
        field = (unsigned)(tag >> 3);
        wt = (unsigned)(tag & 7);
        if (field < 1 || field > 5 || (seen >> field & 1))
            return -1; /* other envelope fields, or a repeated one (last wins / merges): upb's business */
        seen |= 1u << field;
        if (field == 4) {
            if (wt != 5 || n - pos < 4)
                return -1;
            r->time_nsec = (uint32_t)p[pos] | (uint32_t)p[pos + 1] << 8 | (uint32_t)p[pos + 2] << 16 |
                           (uint32_t)p[pos + 3] << 24;
            pos += 4;
        } else if (field == 5) {
            if (wt != 2 || read_varint(p, n, &pos, &v) < 0 || v > (uint64_t)(n - pos))
                return -1;
            inner = pos;
            pos += (Py_ssize_t)v;
            end = pos;
        } else {
            if (wt != 0 || read_varint(p, n, &pos, &v) < 0)
                return -1;
            if (field == 1)
                vid = v;
            else if (field == 2)
                msgtype = v;
            else
                r->time_sec = v;
        }
    }
    if (vid != 1 || msgtype != 9 || inner < 0)
        return -1;

    seen = 0;
    pos = inner;
    while (pos < end) {
        unsigned field, wt;
        if (read_varint(p, end, &pos, &tag) < 0 || tag > 0xFFFFFFFFu)
            return -1;
        field = (unsigned)(tag >> 3);
        wt = (unsigned)(tag & 7);
        if (field < 32) {
            if (seen & FIELD_BIT(field))
                r->repeated |= FIELD_BIT(field);
            seen |= FIELD_BIT(field);
        }
        switch (field) {
        case 1: /* type: required enum DnsQRType */
            if (wt != 0 || read_varint(p, end, &pos, &v) < 0 || v > 7)
                return -1;
            r->type = (unsigned)v;
            break;
        case 2:  /* query_ip */
        case 3:  /* response_ip */
        case 8:  /* qname */
        case 12: /* query_packet */
        case 15: /* response_packet */
        {
            span *sp;
            if (wt != 2 || read_varint(p, end, &pos, &v) < 0 || v > (uint64_t)(end - pos))
                return -1;
            if (field == 2)
                sp = &r->query_ip;
            else if (field == 3)
                sp = &r->response_ip;
            else if (field == 8)
                sp = &r->qname;
            else if (field == 12)
                sp = r->n_query++ ? NULL : &r->query_packet;
            else
                sp = r->n_response++ ? NULL : &r->response_packet;
            if (sp != NULL) {
                sp->start = pos;
                sp->len = (Py_ssize_t)v;
            }
            pos += (Py_ssize_t)v;
            break;
        }
        case 18: /* tcp */
        case 19: /* icmp */
            if (wt != 2 || skip_value(p, end, &pos, wt) < 0)
                return -1;
            break;
        case 4: case 5: case 6: case 7: case 9: case 10: case 11: /* uint32 */
            if (wt != 0 || read_varint(p, end, &pos, &v) < 0)
                return -1;
            if (v > 0xFFFFFFFFu)
                r->wide |= FIELD_BIT(field);
            switch (field) {
            case 4: r->proto = (uint32_t)v; break;
            case 5: r->query_port = (uint32_t)v; break;
            case 6: r->response_port = (uint32_t)v; break;
            case 9: r->qtype = (uint32_t)v; break;
            case 10: r->qclass = (uint32_t)v; break;
            default: break; /* id, rcode: not used */
            }
            break;
        case 13: case 16: /* repeated int64, unpacked */
        case 21: case 22: /* udp_checksum (any value parses), resolver_address_zeroed */
            if (wt != 0 || skip_value(p, end, &pos, wt) < 0)
                return -1;
            break;
        case 14: case 17: /* repeated sfixed32, unpacked */
            if (wt != 5 || skip_value(p, end, &pos, wt) < 0)
                return -1;
            break;
        case 20: /* timeout: double */
            if (wt != 1 || skip_value(p, end, &pos, wt) < 0)
                return -1;
            break;
        default:
            return -1;
        }
    }
    if (!(seen & FIELD_BIT(1)))
        return -1; /* no type: UNDECODABLE, decided in Python */
    if (r->repeated & (FIELD_BIT(1) | FIELD_BIT(2) | FIELD_BIT(3)))
        return -1; /* type or an address given twice: last wins in upb; left to it */
    return 0;
}

/* dnsqr.derive_query / derive_response for one packet: the DNS message's span, or 0 (no message). */
static int
derive_one(const unsigned char *p, const span *packet, Py_ssize_t ip_len, Py_ssize_t *start,
           Py_ssize_t *stop)
{
    if (ip_len != 4 && ip_len != 16)
        return 0;
    if (udp_span(p + packet->start, packet->len, ip_len == 16, start, stop) < 0)
        return 0;
    *start += packet->start;
    *stop += packet->start;
    return 1;
}

/* One side as scan_or sees it: 0 absent, 1 malformed, 2 parsed without OPT, 3 parsed with *opt. -1:
 * MemoryError. */
#define SIDE_ABSENT 0
#define SIDE_MALFORMED 1
#define SIDE_NO_OPT 2
#define SIDE_OPT 3

static int
scan_side(const unsigned char *w, Py_ssize_t n, optpos *opt)
{
    scan_t s;
    if (scan_buf(w, n, &s, opt) < 0)
        return s.err == E_NOMEM ? -1 : SIDE_MALFORMED;
    return opt->found ? SIDE_OPT : SIDE_NO_OPT;
}

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

/* Each byte becomes at most 4 characters ("\DDD") and each label adds at most one ".": the text of n
 * bytes fits in QNAME_TEXT_MAX(n) characters (at least 1, for ".") */
#define QNAME_TEXT_MAX(n) (5 * (n) + 1)

/* Write the text of the name w[0:n] to dst (QNAME_TEXT_MAX(n) bytes); returns its length. */
static Py_ssize_t
render_qname(const unsigned char *w, Py_ssize_t n, unsigned char *dst)
{
    Py_ssize_t i = 0, o = 0;
    while (i < n && w[i]) {
        Py_ssize_t end = i + 1 + w[i], j;
        if (end > n)
            end = n;
        for (j = i + 1; j < end; j++) {
            unsigned c = w[j];
            if (c == 0x2E || c == 0x5C) {
                dst[o++] = '\\';
                dst[o++] = (unsigned char)c;
            } else if (c >= 0x21 && c <= 0x7E) {
                dst[o++] = (unsigned char)c;
            } else {
                dst[o++] = '\\';
                dst[o++] = (unsigned char)('0' + c / 100);
                dst[o++] = (unsigned char)('0' + c / 10 % 10);
                dst[o++] = (unsigned char)('0' + c % 10);
            }
        }
        dst[o++] = '.';
        i = i + 1 + w[i];
    }
    if (o == 0)
        dst[o++] = '.'; /* the root, or nothing at all */
    return o;
}

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

/* ------------------------------------------------------------------------------------------------ */
/* Schemaless Avro of a flat record (processors.failure_record.encode_failure)                      */
/*
 * Why: fastavro's schemaless_writer was ~5 us per failure record, a sixth of the worker's time. A record
 * of primitive fields is only varints and length-prefixed bytes, so this writes it directly, and returns
 * None (the caller then uses fastavro, whose errors and conversions stay the reference) for anything
 * but the plain types: a missing field, an int that is not an int or does not fit 64 bits, a string that
 * is not a str or has no UTF-8 form, bytes that are not bytes, a boolean that is not True/False.
 */

#define AVRO_LONG 0    /* "long" and "int": zigzag varint (fastavro writes both so, without a range check) */
#define AVRO_STRING 1
#define AVRO_BYTES 2
#define AVRO_BOOLEAN 3

static Py_ssize_t
put_varint(unsigned char *dst, uint64_t v)
{
    Py_ssize_t k = 0;
    while (v >= 0x80) {
        dst[k++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    dst[k++] = (unsigned char)v;
    return k;
}

#define AVRO_MAX_FIELDS 64

PyDoc_STRVAR(avro_record_doc,
"avro_record(fields, value) -> bytes | None\n--\n\n"
"Schemaless Avro of dict ``value`` for a record of primitive ``fields`` ((name, kind) pairs, kind 0\n"
"long/int, 1 string, 2 bytes, 3 boolean), byte for byte as fastavro writes it; None where fastavro must\n"
"decide.");

static PyObject *
wirescan_avro_record(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
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
            num[i] = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
            size += 10;
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
            size += 10 + len[i];
            break;
        case AVRO_BYTES:
            if (!PyBytes_CheckExact(item))
                Py_RETURN_NONE;
            data[i] = PyBytes_AS_STRING(item);
            len[i] = PyBytes_GET_SIZE(item);
            size += 10 + len[i];
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
            o += put_varint(dst + o, num[i]);
            break;
        case AVRO_BOOLEAN:
            dst[o++] = (unsigned char)num[i];
            break;
        default: /* string, bytes: zigzag length, then the bytes */
            o += put_varint(dst + o, (uint64_t)len[i] << 1);
            memcpy(dst + o, data[i], (size_t)len[i]);
            o += len[i];
        }
    }
    if (_PyBytes_Resize(&out, o) < 0)
        return NULL;
    return out;
}

/* ------------------------------------------------------------------------------------------------ */
/* One selected payload -> its failures-topic record (processors.filter_agent.filter_container)     */
/*
 * Why: for each record the rule selects (about a quarter of a stream) the worker decoded the record with
 * protobuf (edns.judgement_of), labelled it (classify.classify_failure), built the EdnsFailure dict
 * (failure_record.failure_dict) and wrote it (avro_record above): a quarter of the worker's CPU, for
 * fields that all sit in the payload bytes judge() walks anyway. failure_record() walks them again
 * (parse_dnsqr_payload and the two scans, ~1 us) and writes the Avro bytes directly.
 *
 * Same rule as everywhere in this file: the Python path stays the specification and this returns None
 * (the caller then runs that path) for whatever it is not sure of: a payload the rule does not select
 * or judge() leaves to Python, and a record whose fields upb would read differently from this walk (a
 * singular field given twice, a uint32 wider than 32 bits). tests/processors/test_failure_fast.py holds
 * the two to the same bytes.
 */

/* The EdnsFailure fields in the order failure_record() writes them, with avro_record's kind codes:
 * exported as FAILURE_FIELDS, which processors.failure_record compares with the schema's fields at import
 * (a schema change turns the fast path off instead of writing a stale layout). */
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
};
#define N_FAILURE_FIELDS ((int)(sizeof failure_fields / sizeof failure_fields[0]))

/* The DnsQR fields read for a failure record besides those judge() needs: with any of them repeated or
 * wide the values upb reads are not the ones read here. */
#define FAILURE_DNSQR_FIELDS                                                                          \
    (FIELD_BIT(4) | FIELD_BIT(5) | FIELD_BIT(6) | FIELD_BIT(8) | FIELD_BIT(9) | FIELD_BIT(10))

/* classify.KINDS, in that order; the str objects are made once, at import. */
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

/* The rule's SELECTED verdict, as judge() reaches it, for a parsed record: 1 with the response's span
 * in the payload and the query's OPT; 0 for any other verdict (or one judge() leaves to Python: several
 * response packets); -1 on MemoryError. */
static int
rule_selects(const unsigned char *p, const dnsqr_t *rec, Py_ssize_t *rs, Py_ssize_t *re, optpos *qo)
{
    Py_ssize_t qs, qe;
    optpos ro;
    int side;
    if (rec->n_response != 1 || rec->response_ip.len == 0 ||
        !derive_one(p, &rec->response_packet, rec->response_ip.len, rs, re))
        return 0; /* no response (or fragments) */
    side = scan_side(p + *rs, *re - *rs, &ro);
    if (side != SIDE_NO_OPT)
        return side < 0 ? -1 : 0; /* malformed, or answered with OPT */
    if (rec->n_query != 1 || rec->query_ip.start < 0 ||
        !derive_one(p, &rec->query_packet, rec->query_ip.len, &qs, &qe))
        return 0; /* no query */
    side = scan_side(p + qs, qe - qs, qo);
    if (side != SIDE_OPT)
        return side < 0 ? -1 : 0; /* malformed, or asked without EDNS */
    return 1;
}

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

/* Avro "long"/"int" (zigzag varint, at most AVRO_VARINT_MAX bytes) and "string"/"bytes" (length, data). */
#define AVRO_VARINT_MAX 10

static inline unsigned char *
avro_put_long(unsigned char *o, int64_t v)
{
    return o + put_varint(o, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

static inline unsigned char *
avro_put_bytes(unsigned char *o, const void *data, Py_ssize_t len)
{
    o = avro_put_long(o, (int64_t)len);
    memcpy(o, data, (size_t)len);
    return o + len;
}

PyDoc_STRVAR(failure_record_doc,
"failure_record(payload) -> (name_server, kind, avro) | None\n--\n\n"
"For a payload the EDNS0 rule selects: its name server (response_ip as text), its failure kind\n"
"(classify_failure) and its schemaless Avro EdnsFailure, the bytes encode_failure(failure_dict(...))\n"
"writes, in the field order of FAILURE_FIELDS. None for any other payload and wherever the Python path\n"
"must decide (see above).");

static PyObject *
wirescan_failure_record(PyObject *Py_UNUSED(module), PyObject *payload)
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

    /* 15 varints (10 numbers, 5 lengths), 1 boolean, the texts and the payload; all text is ASCII, so
     * its UTF-8 form is the bytes themselves. */
    avro = PyBytes_FromStringAndSize(
        NULL, 15 * AVRO_VARINT_MAX + 1 + ns_len + resolver_len + qname_len + kind_len + n);
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
    o = avro_put_bytes(o, p, n);                              /* payload, byte for byte */
    if (_PyBytes_Resize(&avro, o - start) < 0)                /* (frees it and sets NULL on failure) */
        goto done;
    out = Py_BuildValue("(s#OO)", ns, (Py_ssize_t)ns_len, kind_strs[kind], avro);
done:
    if (qname != qname_stack)
        PyMem_Free(qname);
    Py_XDECREF(avro);
    return out;
}

/* FAILURE_FIELDS and the kind strings, at import. */
static int
init_failure_record(PyObject *m)
{
    PyObject *fields;
    int i;
    for (i = 0; i < N_KINDS; i++)
        if (kind_strs[i] == NULL && (kind_strs[i] = PyUnicode_InternFromString(kind_names[i])) == NULL)
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
    {"avro_record", (PyCFunction)(void (*)(void))wirescan_avro_record, METH_FASTCALL, avro_record_doc},
    {"failure_record", wirescan_failure_record, METH_O, failure_record_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "nmsgdns._wirescan",
    "C versions of nmsgdns.wire.scan_opt, nmsgdns.ippacket.udp_payload, the common case of nmsgdns.edns.judge,\n"
    "nmsgdns.dnsqr.qname_to_text, a flat Avro record writer and a selected payload's failure record\n"
    "(same results, faster).",
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
    PyObject *m;
    init_specs();
    m = PyModule_Create(&module);
    if (m != NULL && init_failure_record(m) < 0)
        Py_CLEAR(m);
    return m;
}
