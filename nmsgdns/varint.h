/*
 * nmsgdns/varint.h: base-128 varints (low groups first, the high bit of each byte says "more"), and the
 * zigzag map that makes signed values small: the one C copy, included by every extension that reads or
 * writes them (protobuf fields in nmsgdns, and the signed longs of the topic values above it).
 *
 * Readers are bounds-checked against the size of the buffer and never move *pos on failure. Two readers,
 * for the two ways the callers must agree with their Python specification:
 *
 *  - varint_read: any form upb reads (a longer form of a shorter varint too, as 0x80 0x00 for 0), at most
 *    VARINT_MAX_BYTES bytes and no bit past the 64th;
 *  - varint_read_shortest (and zigzag_read, the signed form): only the shortest form, so that a caller
 *    whose specification is more lenient than C should guess at (e.g. past 64 bits) hands every other
 *    form back to that specification.
 *
 * Static inline functions: each including extension has its own copy. Include it after <Python.h>.
 */
#ifndef NMSGDNS_VARINT_H
#define NMSGDNS_VARINT_H

#ifndef Py_PYTHON_H
#error "include <Python.h> before nmsgdns/varint.h"
#endif

#include <stdint.h>

/* The longest varint of a 64-bit value: 9 bytes of 7 bits, then one byte holding bit 63. */
#define VARINT_MAX_BYTES 10

/* Zigzag: 0, -1, 1, -2... -> 0, 1, 2, 3...; the arithmetic shift of a negative int64 is what every
 * compiler CPython supports does. */
static inline uint64_t
zigzag_encode(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

/* n/2 for even n, -(n+1)/2 for odd n; computed in unsigned arithmetic (no overflow), and the conversion
 * to int64 is two's complement on every compiler CPython supports. */
static inline int64_t
zigzag_decode(uint64_t n)
{
    return (int64_t)((n >> 1) ^ (0 - (n & 1)));
}

/* The number of bytes varint_put writes for v (1 to VARINT_MAX_BYTES). */
static inline Py_ssize_t
varint_size(uint64_t v)
{
    Py_ssize_t n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Write v at dst (room for VARINT_MAX_BYTES, or varint_size(v)); returns the end of what was written. */
static inline unsigned char *
varint_put(unsigned char *dst, uint64_t v)
{
    while (v > 0x7F) {
        *dst++ = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *dst++ = (unsigned char)v;
    return dst;
}

/* The varint at buf[*pos] (end: the size of buf): 1 with *out and *pos moved past it; 0 (nothing moved)
 * when it is truncated, longer than VARINT_MAX_BYTES, holds bits past the 64th, or (shortest) is not the
 * shortest form of its value. */
static inline int
varint_read_form(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos, uint64_t *out, int shortest)
{
    uint64_t n = 0;
    Py_ssize_t p = *pos;

    for (int k = 0; k < VARINT_MAX_BYTES; k++) {
        unsigned char b;
        if (p >= end)
            return 0;
        b = buf[p++];
        n |= (uint64_t)(b & 0x7F) << (7 * k);
        if (b & 0x80)
            continue;
        /* Last byte. A zero one after the first adds nothing (a longer form of a shorter varint); in the
         * 10th byte only bit 0 fits (bit 63). */
        if ((shortest && b == 0 && k > 0) || (k == VARINT_MAX_BYTES - 1 && b > 1))
            return 0;
        *pos = p;
        *out = n;
        return 1;
    }
    return 0; /* an 11th byte */
}

static inline int
varint_read(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos, uint64_t *out)
{
    return varint_read_form(buf, end, pos, out, 0);
}

static inline int
varint_read_shortest(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos, uint64_t *out)
{
    return varint_read_form(buf, end, pos, out, 1);
}

/* The signed value of the shortest-form zigzag varint at buf[*pos]: as varint_read_shortest. */
static inline int
zigzag_read(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos, int64_t *out)
{
    uint64_t n;

    if (!varint_read_shortest(buf, end, pos, &n))
        return 0;
    *out = zigzag_decode(n);
    return 1;
}

#endif /* NMSGDNS_VARINT_H */
