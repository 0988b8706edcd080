"""The warm-up rule (processors/warmup.py): who keeps an ns-stats partition, and when a member asks to move.

Pure functions over assignments; the rebalances themselves run in tests/processors/test_elastic.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException

from processors.app import create_app
from processors.settings import Settings
from processors.warmup import Slots, WarmupAssignor, group_topics, hold_back, moving, should_probe


def slots(actives: set[int], standbys: set[int] | None = None) -> Slots:
    return Slots(set(actives), set(standbys or ()))


def as_tuples(assignment: dict[str, Slots]) -> dict[str, tuple[set[int], set[int]]]:
    return {m: (s.actives, s.standbys) for m, s in assignment.items()}


def test_a_joiner_gets_standbys_of_what_faust_would_move_to_it_and_the_owner_keeps_them() -> None:
    previous = {"a": slots({0, 1, 2, 3})}
    proposed = {"a": slots({0, 1}, {2, 3}), "b": slots({2, 3}, {0, 1})}
    assert as_tuples(hold_back(previous, proposed)) == {
        "a": ({0, 1, 2, 3}, set()),
        "b": (set(), {0, 1, 2, 3}),
    }


def test_once_warm_the_member_takes_the_partitions_it_holds_warm() -> None:
    previous = {"a": slots({0, 1, 2, 3}), "b": slots(set(), {2, 3})}
    faust_picks_warm_ones = {"a": slots({0, 1}, {2, 3}), "b": slots({2, 3}, {0, 1})}
    assert as_tuples(hold_back(previous, faust_picks_warm_ones)) == as_tuples(faust_picks_warm_ones)
    # Faust took 1 and 3 from a: b is warm for 3 but not for 1, so it gets 2 (warm) instead of 1; a is
    # standby of the partition it gave away when there are standby replicas
    faust_picks_others = {"a": slots({0, 2}), "b": slots({1, 3})}
    assert as_tuples(hold_back(previous, faust_picks_others)) == {"a": ({0, 1}, set()), "b": ({2, 3}, set())}
    assert as_tuples(hold_back(previous, faust_picks_others, replicas=1)) == {
        "a": ({0, 1}, {2}),
        "b": ({2, 3}, set()),
    }


def test_a_partition_with_a_short_changelog_moves_at_once() -> None:
    previous = {"a": slots({0, 1, 2, 3})}
    proposed = {"a": slots({0, 1}), "b": slots({2, 3})}
    assert moving(previous, proposed) == {2, 3}
    assert as_tuples(hold_back(previous, proposed, free={3})) == {
        "a": ({0, 1, 2}, set()),
        "b": ({3}, {2}),
    }


def test_a_partition_whose_owner_left_moves_at_once() -> None:
    previous = {"a": slots({0, 1}, {2}), "b": slots({2, 3}, {0})}
    proposed = {"a": slots({0, 1, 2, 3})}
    assert moving(previous, proposed) == set(), "b's partitions have no owner left to move from"
    assert as_tuples(hold_back(previous, proposed)) == {"a": ({0, 1, 2, 3}, set())}
    # to a newcomer too: nobody holds the state, nobody can keep the partition
    proposed = {"a": slots({0, 1}), "c": slots({2, 3})}
    assert as_tuples(hold_back(previous, proposed)) == {"a": ({0, 1}, set()), "c": ({2, 3}, set())}


def test_a_stable_group_is_left_as_faust_assigns_it() -> None:
    previous = {"a": slots({0, 1}, {2, 3}), "b": slots({2, 3}, {0, 1})}
    assert as_tuples(hold_back(previous, previous)) == as_tuples(previous)


def test_a_member_asks_for_a_rebalance_once_warm_and_someone_holds_more_than_its_share() -> None:
    held_back = {"a": [0, 1, 2, 3], "b": []}
    assert should_probe(held_back, "b", {2, 3}, caught_up=True)
    assert not should_probe(held_back, "b", {2, 3}, caught_up=False), "not before its standbys caught up"
    assert not should_probe(held_back, "b", set(), caught_up=True), "nothing warm: nothing to move here"
    assert not should_probe(held_back, "a", {2}, caught_up=True), "the owner itself does not ask"
    assert not should_probe({"a": [0, 1], "b": [2, 3]}, "b", {0, 1}, caught_up=True), "balanced"
    # three members, four partitions: a share is 2, so nobody holds more than its share
    assert not should_probe({"a": [0, 1], "b": [2, 3], "c": []}, "c", {0}, caught_up=True)
    # warm only for partitions of a member within its share
    assert not should_probe({"a": [0, 1, 2], "b": [3], "c": []}, "c", {3}, caught_up=True)
    assert should_probe({"a": [0, 1, 2], "b": [3], "c": []}, "c", {2}, caught_up=True)
    assert not should_probe({"a": [0]}, "b", {0}, caught_up=True), "a member the metadata does not name"


def test_the_ns_stats_group_is_the_topics_with_as_many_partitions() -> None:
    assert group_topics({"raw": 4, "ns-stats": 4, "other": 8}, "ns-stats") == {"raw", "ns-stats"}
    assert group_topics({"raw": 8, "ns-stats": 4}, "ns-stats") == {"ns-stats"}
    assert group_topics({"raw": 8}, "ns-stats") == set()


def test_the_assignor_frees_short_changelogs_and_holds_all_back_when_it_cannot_ask() -> None:
    assignor = create_app(Settings()).assignor
    assert isinstance(assignor, WarmupAssignor)
    assignor._previous = {"a": slots({0, 1, 2, 3})}
    proposed = {"a": slots({0, 1}), "b": slots({2, 3})}
    asked: list[set[int]] = []

    def records(partitions: Iterable[int]) -> dict[int, int]:
        asked.append(set(partitions))
        return {2: 10_000, 3: 10_001}

    assignor.changelog_records = records
    assert as_tuples(assignor._held_back(proposed)) == {"a": ({0, 1, 3}, set()), "b": ({2}, {3})}
    assert asked == [{2, 3}], "only the partitions that move are asked about"

    def broker_down(partitions: Iterable[int]) -> dict[int, int]:
        raise KafkaException("all brokers down")

    assignor.changelog_records = broker_down
    assert as_tuples(assignor._held_back(proposed)) == {"a": ({0, 1, 2, 3}, set()), "b": (set(), {2, 3})}
