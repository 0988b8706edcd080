"""Warm-up before a move (Kafka Streams' KIP-441): an ns-stats partition leaves a live owner only for a member
that already holds its state as a standby.

Why: Faust's assignor balances by count. When a worker joins, it takes partitions from the others at once,
and the newcomer then reads their changelogs (hundreds of thousands of records for a busy partition) while
their counts stand still and their records wait. Kafka Streams instead keeps a partition on its caught-up
owner and makes the intended new owner a *warm-up* replica; once that has caught up, a *probing rebalance*
moves the partition, and the hand-over takes only the changelog's last records.

The same here, in two halves:

- **The leader** (:class:`WarmupAssignor`, the group's assignor, a ``faust.assignor.PartitionAssignor``).
  After Faust computed its balanced, sticky assignment, :func:`hold_back` revisits every partition of the
  ns-stats co-partitioned group that Faust moved from a member still in the group to one that was not its
  standby in the previous generation (so holds no current state of it). The old owner keeps it, and the
  member it was meant for becomes its standby: its warm-up. If that member is warm for another partition of
  the same old owner, it gets that one instead (Faust picks which partitions leave an owner arbitrarily; the
  swap keeps the counts Faust chose). A partition whose owner left the group is not held back (there is no
  one to keep it): Faust already prefers a standby for it. Nor is one whose changelog holds no more than
  ``--acceptable-recovery-lag`` records (Kafka Streams' ``acceptable.recovery.lag``, 10,000 by default):
  reading that little is as quick as a warm-up's hand-over, and a warm-up costs a second rebalance. With
  ``--standby-replicas 0`` the leader also drops the standbys Faust computes for its own minimum of one
  replica, so workers tail warm-ups only.
- **The member** (:func:`should_probe`, asked by the aggregator every :data:`PROBE_SECONDS`). Once every
  standby it tails is within the acceptable lag of its changelog's end and a member holds more ns-stats
  partitions than ``ceil(partitions / members)``, among them one this member is standby of, it asks the
  group to rebalance (aiokafka's ``request_rejoin``). In that rebalance it is warm, so the leader lets the
  partition move to it. It asks at most once per assignment, so a leader that moves nothing (another
  member is warm for it, or Faust's capacity keeps it) sees no storm of rebalances.

Which topics form the ns-stats group: Faust co-partitions the subscribed topics with the same number of
partitions (every worker subscribes the same topics), so the raw topic moves with ns-stats when it has as
many partitions, and freely (it is stateless) when not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from faust.assignor import PartitionAssignor
from faust.assignor.client_assignment import ClientAssignment
from faust.types import AppT

log = logging.getLogger(__name__)

#: how often a worker checks whether its warm-ups have caught up
PROBE_SECONDS = 0.5


@dataclass
class Slots:
    """One member's partitions of the ns-stats group: those it owns and those it is standby of."""

    actives: set[int] = field(default_factory=set)
    standbys: set[int] = field(default_factory=set)


def moving(previous: Mapping[str, Slots], proposed: Mapping[str, Slots]) -> set[int]:
    """The partitions ``proposed`` moves from a member still in the group to another one."""
    owner = {p: m for m in sorted(previous) if m in proposed for p in previous[m].actives}
    return {p for m, s in proposed.items() for p in s.actives if owner.get(p, m) != m}


def hold_back(
    previous: Mapping[str, Slots],
    proposed: Mapping[str, Slots],
    free: Set[int] = frozenset(),
    replicas: int = 0,
) -> dict[str, Slots]:
    """The assignment ``proposed`` (member -> slots, every member of the group) with no partition moved from
    a member still in the group to one that was not its standby in ``previous`` (member -> slots of the
    last generation, as each member reports it; a new member has none), except those in ``free`` (their
    changelogs are short): see the module doc. An owner that gives a partition away instead of the one
    Faust chose becomes its standby when there are standby ``replicas``. Members and partitions are
    visited in sorted order, so every leader decides alike."""
    new = {m: Slots(set(s.actives), set(s.standbys)) for m, s in proposed.items()}
    owner = {p: m for m in sorted(previous) if m in new for p in previous[m].actives}
    for member in sorted(new):
        slots, before = new[member], previous.get(member, Slots())
        for p in sorted(slots.actives - before.actives):
            old = owner.get(p)
            if old is None or old == member or p in before.standbys or p in free:
                continue  # its owner left, or it stays, or this member is warm for it, or it is short
            keeper = new[old]
            swap = next((q for q in sorted(before.standbys & keeper.actives) if owner.get(q) == old), None)
            slots.actives.discard(p)
            keeper.actives.add(p)
            keeper.standbys.discard(p)
            if swap is None:
                slots.standbys.add(p)
            else:
                keeper.actives.discard(swap)
                if replicas:
                    keeper.standbys.add(swap)
                slots.actives.add(swap)
                slots.standbys.discard(swap)
    return new


def should_probe(owned: Mapping[str, Sequence[int]], me: str, standbys: set[int], caught_up: bool) -> bool:
    """Whether this member (``me``) should ask for a rebalance: ``owned`` is every member's ns-stats
    partitions (member -> partitions, this member included), ``standbys`` the partitions it is standby of,
    ``caught_up`` whether all of them caught up with their changelogs. True when some other member holds
    more than its share, ``ceil(partitions / members)``, one of them a partition this member holds warm."""
    if not standbys or not caught_up or me not in owned:
        return False
    share = math.ceil(sum(len(ps) for ps in owned.values()) / len(owned))
    return any(len(ps) > share and standbys & set(ps) for m, ps in owned.items() if m != me)


def group_topics(partitions_by_topic: Mapping[str, int], stats_topic: str) -> set[str]:
    """The topics co-partitioned with ``stats_topic``: those with as many partitions (see the module doc)."""
    count = partitions_by_topic.get(stats_topic)
    return {t for t, n in partitions_by_topic.items() if n == count} if count else set()


class WarmupAssignor(PartitionAssignor):
    """Faust's assignor, then :func:`hold_back` on the ns-stats group (module doc). ``stats_topic`` names
    it; ``standby_replicas`` is the workers' ``--standby-replicas`` (0: only warm-ups are standbys);
    ``warm_up`` False (``--no-warm-up``) leaves Faust's assignment as it is. ``changelog_records`` gives
    the records in changelog partitions (blocking; it runs in the consumer's thread, during the group's
    sync); those with at most ``acceptable_lag`` move at once."""

    def __init__(
        self,
        app: AppT,
        replicas: int = 0,
        *,
        stats_topic: str,
        standby_replicas: int,
        warm_up: bool,
        acceptable_lag: int,
        changelog_records: Callable[[Iterable[int]], Mapping[int, int]],
    ) -> None:
        super().__init__(app, replicas=replicas)
        self.stats_topic = stats_topic
        self.standby_replicas = standby_replicas
        self.warm_up = warm_up
        self.acceptable_lag = acceptable_lag
        self.changelog_records = changelog_records
        self._previous: dict[str, Slots] = {}

    def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:
        """Faust's, after noting each member's slots of the last generation (its metadata's assignment)."""
        self._previous = {}
        for member, metadata in member_metadata.items():
            assignment = self._get_client_metadata(metadata).assignment
            self._previous[member] = Slots(
                set(assignment.actives.get(self.stats_topic, ())),
                set(assignment.standbys.get(self.stats_topic, ())),
            )
        return super()._perform_assignment(cluster, member_metadata)

    def _global_table_standby_assignments(
        self, assignments: Mapping[str, ClientAssignment], partitions_by_topic: Mapping[str, int]
    ) -> Any:
        """Faust's hook after the co-partitioned groups are assigned: :func:`hold_back` on the ns-stats
        group, written back to every topic of the group."""
        topics = group_topics(partitions_by_topic, self.stats_topic)
        if topics:
            proposed = {
                m: Slots(
                    set(a.actives.get(self.stats_topic, ())),
                    set() if not self.standby_replicas else set(a.standbys.get(self.stats_topic, ())),
                )
                for m, a in assignments.items()
            }
            held = self._held_back(proposed) if self.warm_up else proposed
            for member, slots in held.items():
                moved = proposed[member].actives - slots.actives
                if moved:
                    log.info(
                        "warm-up: ns-stats partitions %s stay with their owners, standby here first: %s",
                        sorted(moved),
                        member,
                    )
                for topic in topics:
                    assignments[member].actives[topic] = sorted(slots.actives)
                    assignments[member].standbys[topic] = sorted(slots.standbys)
        return super()._global_table_standby_assignments(assignments, partitions_by_topic)

    def _held_back(self, proposed: Mapping[str, Slots]) -> dict[str, Slots]:
        """:func:`hold_back` of ``proposed``, the partitions with short changelogs free to move. When their
        lengths cannot be asked, every move waits for a warm-up (a slower move, never a wrong one)."""
        moves = moving(self._previous, proposed)
        free: set[int] = set()
        if moves:
            try:
                records = self.changelog_records(moves)
            except Exception as exc:
                log.warning("warm-up: changelog lengths of %s unknown, all wait for warm-ups: %s", moves, exc)
            else:
                free = {p for p, n in records.items() if n <= self.acceptable_lag}
        return hold_back(self._previous, proposed, free, self.standby_replicas)
