/*
 * The counts vocabulary in C: the slots of a name server's counts list and the events counted into it.
 *
 * processors/counts.py is the specification and names each of these once; this header gives the C
 * extensions beside it (_deltas.c, _state.c) the same numbers under the same names.
 */
#ifndef PROCESSORS_COUNTS_H
#define PROCESSORS_COUNTS_H

/* the slots of a counts list [edns_answered, failures, timeouts, by_kind, observations] */
#define SLOT_ANSWERED 0
#define SLOT_FAILURES 1
#define SLOT_TIMEOUTS 2
#define SLOT_BY_KIND 3
#define SLOT_OBSERVATIONS 4
/* the length of a counts list */
#define SLOTS 5

/* a counted record's event: an EDNS query answered, one the rule selected, one never answered */
#define EVENT_ANSWERED 0
#define EVENT_FAILURE 1
#define EVENT_TIMEOUT 2

#endif
