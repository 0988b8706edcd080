/*
 * Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), unsigned: the one C copy, included by
 * every extension of processors that partitions keys as Kafka's default partitioner does. Its
 * specification is dnsqr_kafka/key_partition.py's murmur2 (tests/dnsqr_kafka/test_key_partition.py holds
 * both to aiokafka's).
 */
#ifndef DNSQR_MURMUR2_H
#define DNSQR_MURMUR2_H

#include <stddef.h>
#include <stdint.h>

static inline uint32_t
murmur2(const unsigned char *data, size_t length)
{
    const uint32_t m = 0x5BD1E995;
    uint32_t h = 0x9747B28Cu ^ (uint32_t)length;
    size_t words = length / 4, i;
    const unsigned char *tail = data + 4 * words;

    for (i = 0; i < words; i++) {
        const unsigned char *w = data + 4 * i;
        uint32_t k = (uint32_t)w[0] | (uint32_t)w[1] << 8 | (uint32_t)w[2] << 16 | (uint32_t)w[3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (length & 3) {
    case 3:
        h ^= (uint32_t)tail[2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)tail[1] << 8;
        /* fall through */
    case 1:
        h ^= tail[0];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

#endif
