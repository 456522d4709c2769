"""api/app.py: the Host/Origin guard that defeats DNS rebinding."""

from __future__ import annotations

import pytest

from covey.api.app import host_allowed


@pytest.mark.parametrize(("host", "bind", "extra", "ok"), [
    # loopback names are always served, with or without a port
    ("127.0.0.1", "127.0.0.1", (), True),
    ("127.0.0.1:7272", "127.0.0.1", (), True),
    ("127.0.0.2:7272", "127.0.0.1", (), True),
    ("localhost", "127.0.0.1", (), True),
    ("localhost:7272", "127.0.0.1", (), True),
    ("LocalHost:7272", "127.0.0.1", (), True),
    ("[::1]", "127.0.0.1", (), True),
    ("[::1]:7272", "127.0.0.1", (), True),
    ("localhost:7272", "192.0.2.5", ("covey.lan",), True),
    # another site's name is refused on a loopback bind (DNS rebinding) ...
    ("evil.example", "127.0.0.1", (), False),
    ("evil.example:7272", "127.0.0.1", (), False),
    ("localhost.evil.example", "127.0.0.1", (), False),
    ("127.0.0.1.evil.example:7272", "127.0.0.1", (), False),
    ("evil.example", "::1", (), False),
    # ... unless it is configured
    ("evil.example", "127.0.0.1", ("evil.example",), True),
    ("covey.lan:7272", "127.0.0.1", ("covey.lan",), True),
    ("COVEY.LAN:7272", "127.0.0.1", ("covey.lan",), True),
    ("other.lan", "127.0.0.1", ("covey.lan",), False),
    # the bind address itself
    ("192.0.2.5:7272", "192.0.2.5", (), True),
    ("192.0.2.6:7272", "192.0.2.5", (), False),
    ("[fe80::1]:7272", "[fe80::1]", (), True),
    # a wildcard bind serves any name (an API key is then mandatory)
    ("anything.example", "0.0.0.0", (), True),
    ("evil.example:7272", "::", (), True),
    # empty or garbage
    (None, "127.0.0.1", (), False),
    ("", "127.0.0.1", (), False),
    ("", "0.0.0.0", (), False),
    (":7272", "127.0.0.1", (), False),
    ("[garbage", "127.0.0.1", (), False),
    ("[::1", "127.0.0.1", (), False),
    ("::1", "127.0.0.1", (), False),  # an IPv6 Host must be bracketed
    ("a b", "127.0.0.1", (), False),
])
def test_host_allowed(host: str | None, bind: str, extra: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, bind, frozenset(extra)) is ok
