"""The channel-alias file and endpoint syntax, as nmsgtool -C / -l read them."""

from __future__ import annotations

import pytest

from nmsgdns.chalias import chalias_path, channel_endpoints, load_chalias, parse_endpoint
from nmsgdns.errors import ChannelError


def test_endpoint_single_port_and_range() -> None:
    assert parse_endpoint("127.0.0.1/9430") == [("127.0.0.1", 9430)]
    assert parse_endpoint("::1/8430..8432") == [("::1", 8430), ("::1", 8431), ("::1", 8432)]


@pytest.mark.parametrize(
    "bad", ["127.0.0.1", "127.0.0.1/", "host/53", "127.0.0.1/70000", "127.0.0.1/9..1", "127.0.0.1/x"]
)
def test_endpoint_errors_name_the_input(bad: str) -> None:
    with pytest.raises(ChannelError, match=r"expected|not|range"):
        parse_endpoint(bad)


def test_alias_lines_accumulate_per_name(tmp_path) -> None:
    f = tmp_path / "nmsg.chalias"
    f.write_text("# SIE\nch202 10.0.0.255/8430..8431\nch202 ::1/9000  # second line adds\nch204 1.2.3.4/1\n")
    aliases = load_chalias(f)
    assert aliases["ch202"] == [("10.0.0.255", 8430), ("10.0.0.255", 8431), ("::1", 9000)]
    assert channel_endpoints("ch204", f) == [("1.2.3.4", 1)]


def test_unknown_channel_lists_known_ones(tmp_path) -> None:
    f = tmp_path / "a"
    f.write_text("ch202 127.0.0.1/1\n")
    with pytest.raises(ChannelError, match=r"'ch999' is not in .*known: ch202"):
        channel_endpoints("ch999", f)


def test_malformed_line_names_file_and_line(tmp_path) -> None:
    f = tmp_path / "a"
    f.write_text("ch202 127.0.0.1/1\nch203\n")
    with pytest.raises(ChannelError, match=r":2: alias 'ch203' lists no ADDR/PORT"):
        load_chalias(f)


def test_path_from_environment(tmp_path) -> None:
    assert chalias_path(None, {"NMSG_CHALIAS_FILE": str(tmp_path / "x")}) == tmp_path / "x"
    assert chalias_path(tmp_path / "y", {"NMSG_CHALIAS_FILE": "ignored"}) == tmp_path / "y"
