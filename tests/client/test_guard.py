"""The one loopback guard, and every client passing its URL through it before sending anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from recsys.client.freshness import measure_freshness, wait_until_served
from recsys.client.guard import check_loopback, is_loopback_host
from recsys.client.http import JsonClient, wait_for_health
from recsys.client.load import run_loadtest
from recsys.client.loadtest import endpoint_urls
from simulators.http_traffic import HttpUsers
from simulators.model import SimulatorConfig, SlateSimulator

REFUSED = [
    "http://example.com/recommend", "http://10.0.0.1:8000", "https://8.8.8.8/",
    "http://[::2]:80/", "http://localhost.example.com/", "http://127.0.0.1.nip.io/",
    "http://0.0.0.0:8000", "ftp://127.0.0.1/", "http:///x", "127.0.0.1:8000", "",
    "http://127.0.0.1:99999/",
]
ACCEPTED = ["http://localhost:1/", "http://127.4.5.6:80/x", "http://[::1]:8000",
            "https://LOCALHOST/", "http://127.0.0.2:80"]


@pytest.mark.parametrize("url", REFUSED)
def test_non_loopback_urls_are_refused_with_the_convention_message(url: str) -> None:
    with pytest.raises(ValueError, match=r"^url: expected "):
        check_loopback(url)


@pytest.mark.parametrize("url", ACCEPTED)
def test_loopback_urls_pass_unchanged(url: str) -> None:
    assert check_loopback(url) == url


def test_a_remote_host_is_named_and_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"'example\.com'.*refusing.*serving machine"):
        check_loopback("http://example.com:8000/recommend")


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LocalHost", True), ("127.0.0.1", True), ("127.255.0.9", True),
    ("::1", True), ("0.0.0.0", False), ("::", False), ("example.com", False),
    ("localhost.", False), ("128.0.0.1", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


SIM = SlateSimulator(SimulatorConfig(n_users=5, n_items=6, slate_size=2, seed=0))
CLIENTS: dict[str, Callable[[str], Any]] = {
    "run_loadtest": lambda url: run_loadtest(url, 1.0, 1.0, lambda i: {}),
    "endpoint_urls": endpoint_urls,
    "wait_for_health": lambda url: wait_for_health(url, timeout_s=0.1),
    "JsonClient": JsonClient,
    "HttpUsers": lambda url: HttpUsers(url, SIM),
    "measure_freshness": lambda url: measure_freshness(url, [0], [0.0], policy="p"),
    "wait_until_served": lambda url: wait_until_served(url, 0, [0.0], policy="p", timeout_s=0.1),
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_client_refuses_a_remote_host_before_sending(client: str) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): nothing answers there, so a client that skipped the
    # guard would fail with a transport error or a timeout, not this ValueError
    with pytest.raises(ValueError, match=r"^url: expected a loopback host"):
        CLIENTS[client]("http://192.0.2.1:8000/recommend")

