"""The worker's dead-letter reasons: every error its filter raises on bad input has a word of the contract's
stable set (``schemas/dead_letter.md``), the same in the dead letter's ``dlq.error.type`` and in the
``reason`` label of ``dnsqr_worker_dead_letters_total``, and no class name (least of all a private one such
as ``nmsgdns.input._Bad``) is ever one."""

from __future__ import annotations

import asyncio
import builtins
import importlib
import pkgutil

import pytest
from faust.types import TP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nmsgdns
from dnsqr_schemas.dead_letter import WORKER_REASONS, DeadLetterHeaders
from nmsgdns import input as nmsg_input
from nmsgdns.container import FLAG_FRAGMENT, encode_container, encode_header
from nmsgdns.edns import Verdict, triage
from nmsgdns.errors import ContainerError, NmsgDnsError, PayloadError, TruncatedError
from processors.filter_agent import (
    OTHER_REASON,
    REASON_OF_ERROR,
    NotBytes,
    WindowClock,
    dead_letter_headers,
    dead_letter_reason,
    filter_container,
)
from processors.metrics import tallied_reason
from tests import corpus
from tests.mutations import mutated
from tests.processors.helpers import raw_containers
from tests.processors.test_agents import make_app, wait_for


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    return {cls, *(c for sub in cls.__subclasses__() for c in _subclasses(sub))}


def domain_errors() -> set[type[BaseException]]:
    """Every NmsgDnsError class, private ones included: all of nmsgdns imported first, so that a subclass
    defined in any of its modules is registered."""
    for module in pkgutil.iter_modules(nmsgdns.__path__, "nmsgdns."):
        importlib.import_module(module.name)
    return _subclasses(NmsgDnsError)


def judged_payload() -> bytes:
    """A corpus payload the rule counts (so the worker reads its time for the window)."""
    for payload in corpus.read_payloads(corpus.path("edge_cases.nmsg")):
        t = triage(payload)
        if t[0] is Verdict.SELECTED or t[4]:
            return payload
    raise AssertionError("edge_cases has no counted record")


def without_time_nsec(payload: bytes) -> bytes:
    """``payload`` in libnmsg's layout (``08 v 10 m 18 <5-byte time_sec> 25 <4> 2a ...``) minus field 4."""
    assert payload[10] == 0x25, "libnmsg's layout"
    return payload[:10] + payload[15:]


def assert_reason(exc: BaseException, reason: str) -> None:
    """``exc`` gets ``reason``, in the letter's header and in the metric that counts the letter."""
    assert dead_letter_reason(exc) == reason
    headers = dead_letter_headers(exc, TP("dnsqr.raw", 2), 7)
    assert DeadLetterHeaders.decode(headers).error_type == reason
    assert tallied_reason(headers) == reason


def test_the_worker_gives_exactly_the_contract_reasons() -> None:
    assert sorted({reason for _, reason in REASON_OF_ERROR} | {OTHER_REASON}) == sorted(WORKER_REASONS)


def test_no_reason_is_a_class_name() -> None:
    names = {cls.__name__ for cls in domain_errors()} | {
        name for name, value in vars(builtins).items() if isinstance(value, type)
    }
    assert "_Bad" in names, "nmsgdns.input's private error is among the domain errors"
    assert not names & set(WORKER_REASONS)
    assert all(reason.isidentifier() and reason.islower() for reason in WORKER_REASONS)


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        pytest.param(b"", TruncatedError, "truncated", id="empty"),
        pytest.param(b"NMSG\x00\x02garbage", TruncatedError, "truncated", id="body-cut-short"),
        pytest.param(encode_container([b"\x08\x01"], crcs=False)[:-1], TruncatedError, "truncated", id="cut"),
        pytest.param(b"garbage", ContainerError, "container", id="bad-magic"),
        pytest.param(b"NMSG\x00\x02\x00\x00\x00\x05hello", ContainerError, "container", id="bad-body"),
        pytest.param(
            encode_header(FLAG_FRAGMENT, 2) + b"\x08\x01", ContainerError, "container", id="fragment"
        ),
        pytest.param(
            encode_container([b"\x08\x01"], crcs=False) + b"\x00",
            ContainerError,
            "container",
            id="bytes-after",
        ),
        pytest.param(
            encode_container([without_time_nsec(judged_payload())], crcs=False),
            PayloadError,
            "payload",
            id="envelope-without-time",
        ),
    ],
)
def test_each_error_the_filter_raises_has_its_reason(
    data: bytes, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error) as raised:
        filter_container(data, WindowClock(60))
    assert_reason(raised.value, reason)


def test_every_domain_error_has_a_reason_of_the_set_private_ones_their_ancestors() -> None:
    for cls in domain_errors():
        exc = cls.__new__(cls)
        assert dead_letter_reason(exc) in WORKER_REASONS, cls
    assert_reason(nmsg_input._Bad("bad_zlib", "zlib stream does not inflate"), "container")
    assert_reason(NotBytes("raw topic value is NoneType"), "not_bytes")
    assert_reason(KeyError("a bug"), "other")


def _mutated_container() -> st.SearchStrategy[bytes]:
    containers = raw_containers("edge_cases", 20)[:5] + raw_containers("edge_cases", 20, compress=True)[:5]
    payloads = corpus.read_payloads(corpus.path("edge_cases.nmsg"))[:50]
    whole = st.sampled_from(containers).flatmap(mutated)
    # a damaged payload in a sound container: the container walk passes, the payload's own walks are tried
    inner = st.sampled_from(payloads).flatmap(mutated).map(lambda p: encode_container([p], crcs=False))
    return st.one_of(whole, inner)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_mutated_container())
def test_whatever_damaged_input_raises_has_a_reason_of_its_own(data: bytes) -> None:
    """The set covers what the filter can raise on bad input: ``other`` is left for bugs."""
    try:
        filter_container(data, WindowClock(60))
    except Exception as exc:
        assert dead_letter_reason(exc) != OTHER_REASON, repr(exc)


def test_a_null_raw_record_is_dead_lettered_as_not_bytes() -> None:
    async def scenario() -> list[str]:
        parts, out = make_app()
        async with parts.app.agents["dnsqr-edns-filter"].test_context() as agent:
            await agent.put(None, key=b"k")
            await wait_for(lambda: parts.counters.dead_letters == 1)
        dead_letters = out.sent[parts.settings.dlq_topic]
        return [DeadLetterHeaders.decode(h or []).error_type for _, h, _ in dead_letters]

    assert asyncio.run(scenario()) == ["not_bytes"]
