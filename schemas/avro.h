/*
 * schemas/avro.h (dnsqr_schemas): Avro's binary encoding of flat records, the primitives every C writer
 * and reader of a topic value here shares: the kind codes of a record's primitive fields and the writers
 * of an Avro "long"/"int" and "string"/"bytes", byte for byte as fastavro writes them.
 *
 * The kind codes are those of dnsqr_schemas.edns_failure.flat_fields ((name, kind) pairs), which the
 * Python side hands to dnsqr_schemas._avro (avro_record, flat_field) and compares with the layout of any
 * C writer of a whole record (its FAILURE_FIELDS), such as the worker's failure record writer.
 *
 * Varints and zigzag are nmsgdns/varint.h's (the one C copy). Static functions: each including extension
 * has its own copy. Include it after <Python.h>.
 */
#ifndef DNSQR_SCHEMAS_AVRO_H
#define DNSQR_SCHEMAS_AVRO_H

#ifndef Py_PYTHON_H
#error "include <Python.h> before schemas/avro.h"
#endif

#include <stdint.h>
#include <string.h>

#include "../nmsgdns/varint.h"

#define AVRO_LONG 0    /* "long" and "int": zigzag varint (fastavro writes both so, without a range check) */
#define AVRO_STRING 1
#define AVRO_BYTES 2
#define AVRO_BOOLEAN 3

/* Avro "long"/"int" (zigzag varint, at most VARINT_MAX_BYTES bytes) and "string"/"bytes" (length, data). */
static inline unsigned char *
avro_put_long(unsigned char *o, int64_t v)
{
    return varint_put(o, zigzag_encode(v));
}

static inline unsigned char *
avro_put_bytes(unsigned char *o, const void *data, Py_ssize_t len)
{
    o = avro_put_long(o, (int64_t)len);
    memcpy(o, data, (size_t)len);
    return o + len;
}

#endif /* DNSQR_SCHEMAS_AVRO_H */
