"""The loopback guard: load and simulated traffic may only target this machine.

A load generator pointed at the wrong host floods someone else's server; simulated clicks sent to
a real service pollute its logs. So every client URL passes ``check_loopback`` first, and only the
literal name ``localhost`` and loopback IP literals (127.0.0.0/8, ::1) pass: any other name could
resolve to a remote machine.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from recsys.validation import message

LOOPBACK = "localhost, 127.0.0.0/8 or ::1"
EXAMPLE_URL = "http://127.0.0.1:8000"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` (any case) and loopback IP literals; False for every other name."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback(url: str) -> str:
    """Return ``url`` unchanged if it is an http(s) URL on a loopback host, else ``ValueError``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(message("url", f"an http:// or https:// URL such as {EXAMPLE_URL}",
                                 repr(url)))
    host = parts.hostname
    if not host:
        raise ValueError(message("url", f"a URL with a host such as {EXAMPLE_URL}", repr(url)))
    if not is_loopback_host(host):
        raise ValueError(message(
            "url", f"a loopback host ({LOOPBACK})", f"{host!r} in {url!r}",
            "refusing: load and simulated traffic must never reach someone else's server or "
            "logs; run the client on the serving machine"))
    try:
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(message("url", "a port number in 0..65535", repr(url), str(exc))) from None
    return url
