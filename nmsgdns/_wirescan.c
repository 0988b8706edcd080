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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* Run scan() over a bytes object with the cache on the stack when it fits. Returns 0 or -1 (s->err). */
static int
scan_bytes(PyObject *wire, scan_t *s, optpos *opt)
{
    uint8_t stack_known[4096];
    int rc;
    s->w = (const unsigned char *)PyBytes_AS_STRING(wire);
    s->n = PyBytes_GET_SIZE(wire);
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
make_opt(PyObject *wire, const optpos *opt)
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
        items[4] = PyBytes_FromStringAndSize(PyBytes_AS_STRING(wire) + opt->rd_start,
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
    return make_opt(wire, &opt);
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
    return make_opt(wire, &opt);
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "nmsgdns._wirescan",
    "C versions of nmsgdns.wire.scan_opt and nmsgdns.ippacket.udp_payload (same results, faster).",
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
