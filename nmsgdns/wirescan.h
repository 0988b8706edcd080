/*
 * nmsgdns/wirescan.h: the C internals of the EDNS0 rule over a serialized base:dnsqr payload, without
 * Python objects: the libwdns-exact DNS message walk (nmsgdns/wire.py), the IP/UDP header walk
 * (nmsgdns/ippacket.py), the walk of the payload's protobuf fields, the derived query and response and
 * their scans (nmsgdns/edns.py), the rule's SELECTED verdict, and the text of a question name
 * (nmsgdns/dnsqr.py). Each is a step-by-step transcription of its Python specification.
 *
 * nmsgdns/_wirescan.c includes it and binds these walks to Python (scan_opt, udp_payload, judge,
 * qname_to_text); a C extension of a higher layer that works on the same payloads includes it too rather
 * than copying it. The functions are static: each including extension has its own copy, and calls
 * init_specs() once at module init before any scan. Include it after <Python.h> (Py_ssize_t, PyMem_*).
 *
 * Every read is bounds-checked against the length of the buffer: where the Python code would raise
 * IndexError or struct.error (which wire.scan_opt turns into "name or record runs past the end"), the walk
 * reports that same failure and never touches memory past the buffer.
 */
#ifndef NMSGDNS_WIRESCAN_H
#define NMSGDNS_WIRESCAN_H

#ifndef Py_PYTHON_H
#error "include <Python.h> before nmsgdns/wirescan.h"
#endif

#include <stdint.h>
#include <string.h>

#include "varint.h"

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

/* ------------------------------------------------------------------------------------------------ */
/* edns.judge's common case: NmsgPayload -> DnsQR by hand, derived query/response, both scans.     */
/*
 * Why: in the Faust worker the protobuf view, the two derive_* calls and the Judgement around them were
 * ~30% of the time per record. parse_dnsqr_payload walks the serialized payload once, without building a
 * message, and gives up (-1: the caller hands the payload to the Python path, which stays the
 * specification) on anything it does not fully understand: a field it does not expect, a field with an
 * unexpected wire type, a repeated singular field, a packed repeated field, an enum value outside
 * DnsQRType, a varint longer than protobuf allows, another vid/msgtype (and its callers leave more than
 * one response packet to Python: fragments, ippacket.reassemble). So whatever it accepts upb also parses
 * into the same values, and whatever it cannot be sure of is left to the code it must agree with.
 */

/* Skip the value of a field of wire type wt (0, 1, 2 or 5); -1 when it does not fit. */
static int
skip_value(const unsigned char *p, Py_ssize_t n, Py_ssize_t *pos, unsigned wt)
{
    uint64_t len;
    switch (wt) {
    case 0:
        return varint_read(p, n, pos, &len) ? 0 : -1;
    case 1:
        if (n - *pos < 8)
            return -1;
        *pos += 8;
        return 0;
    case 2:
        if (!varint_read(p, n, pos, &len) || len > (uint64_t)(n - *pos))
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
    /* The rest of the record; judge() has no use for them. */
    span qname;
    uint32_t proto, query_port, response_port, qtype, qclass;
    /* Bit f for DnsQR field f. ``repeated``: seen more than once (for a singular field upb keeps the
     * last). ``wide``: a uint32 field whose varint has bits past the 32nd (upb truncates it). Values
     * read from such fields are not what upb reads: a caller that uses them leaves such records alone. */
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
        if (!varint_read(p, n, &pos, &tag) || tag > 0xFFFFFFFFu)
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
            if (wt != 2 || !varint_read(p, n, &pos, &v) || v > (uint64_t)(n - pos))
                return -1;
            inner = pos;
            pos += (Py_ssize_t)v;
            end = pos;
        } else {
            if (wt != 0 || !varint_read(p, n, &pos, &v))
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
        if (!varint_read(p, end, &pos, &tag) || tag > 0xFFFFFFFFu)
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
            if (wt != 0 || !varint_read(p, end, &pos, &v) || v > 7)
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
            if (wt != 2 || !varint_read(p, end, &pos, &v) || v > (uint64_t)(end - pos))
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
            if (wt != 0 || !varint_read(p, end, &pos, &v))
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

/* The rule's SELECTED verdict, as judge() reaches it, for a parsed record: 1 with the response's span
 * in the payload and the query's OPT; 0 for any other verdict (or one judge() leaves to Python: several
 * response packets); -1 on MemoryError. */
static inline int
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

/* ------------------------------------------------------------------------------------------------ */
/* dnsqr.qname_to_text                                                                              */
/*
 * Same walk: a label's length octet is taken as is (even >= 64), a label cut short by the end of the data
 * is rendered as far as it goes, "." for nothing.
 */

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

#endif /* NMSGDNS_WIRESCAN_H */
